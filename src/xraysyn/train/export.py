"""Weights-only model files: what the inference side loads, without the training code's state.

An export is a dict of tensors and plain values (``torch.load(weights_only=True)``): the state dict, the
model config, the input normalisation and simulated C-arm the network was trained with, the HU scale, a
summary of the training data, the steps, the validation metrics, and the SHA-256 of the weights
(:func:`state_dict_sha256`) that :func:`load_export` checks.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

import xraysyn
from xraysyn.atomic import atomic_write
from xraysyn.train.checkpoint import BEST_NAME, CHECKPOINT_DIR, CheckpointError, load_checkpoint, step_checkpoints

__all__ = ["EXPORT_FORMAT", "ExportError", "embed_prior", "export_run", "file_sha256", "load_export",
           "state_dict_sha256"]

EXPORT_FORMAT = "xraysyn-model-1"
#: Export formats this version reads.
READABLE_FORMATS = (EXPORT_FORMAT,)


class ExportError(ValueError):
    """A model file that is not an xraysyn export, is damaged, or was made by an incompatible version."""


def state_dict_sha256(state_dict: dict) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict's tensors, in key order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def embed_prior(refine_export: dict, prior_path: str | Path, expected_file_sha256: str | None = None) -> dict:
    """A stage-2 export with the 3DPN export it refines embedded (``prior_export``), so that one file is the
    whole XraySyn model (:meth:`xraysyn.synthesis.XraySyn.from_pretrained`). ``prior_path`` is a 3DPN export, or a
    stage-2 export whose embedded 3DPN the run was trained behind (``--prior`` accepts both).

    Raises:
        ExportError: the 3DPN file is missing, not a 3DPN export, or not the file (SHA-256) the run was trained
            behind.
    """
    prior_path = Path(prior_path)
    if not prior_path.is_file():
        raise ExportError(f"the 3DPN export {str(prior_path)!r} this stage-2 run refines is missing")
    if expected_file_sha256 is not None and file_sha256(prior_path) != expected_file_sha256:
        raise ExportError(f"the 3DPN export {str(prior_path)!r} has changed since the stage-2 run was trained "
                          "behind it (SHA-256 differs)")
    prior = load_export(prior_path)
    if prior.get("stage") == "refine" and isinstance(prior.get("prior_export"), dict):
        prior = prior["prior_export"]  # a stage-2 export given as --prior: the 3DPN inside it (checked on load)
    if prior.get("stage") != "prior":
        raise ExportError(f"{str(prior_path)!r} is an export of stage {prior.get('stage')!r}, not a 3DPN")
    return {**refine_export, "prior_export": prior}


def _checkpoint_path(run_dir: Path, which: str) -> Path:
    if which == "best":
        path = run_dir / CHECKPOINT_DIR / BEST_NAME
        if not path.is_file():
            raise ExportError(f"{str(run_dir)!r} has no best checkpoint yet (no validation ran); use --checkpoint last")
        return path
    if which == "last":
        found = step_checkpoints(run_dir)
        if not found:
            raise ExportError(f"{str(run_dir)!r} has no checkpoints")
        return found[-1]
    raise ExportError(f"--checkpoint must be best or last, got {which!r}")


def export_run(run_dir: str | Path, out: str | Path, *, checkpoint: str = "best", half: bool = False,
               overwrite: bool = False) -> tuple[Path, str]:
    """Write the export of a run's ``best`` or ``last`` checkpoint to ``out`` (stage 1: the 3DPN; stage 2: the
    2DRN F + M; the ``refiner2d`` / ``x2ct`` baselines: their network, :func:`xraysyn.train.baselines.baseline_export`);
    returns (path, sha256)."""
    from xraysyn.train.prior_config import config_from_mapping

    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise ExportError(f"run folder {str(run_dir)!r} does not exist")
    if out.exists() and not overwrite:
        raise ExportError(f"{str(out)!r} exists; pass --overwrite to replace it")
    if out.is_dir():
        raise ExportError(f"--out {str(out)!r} is a folder; give a file name such as prior.pt")
    try:
        payload = load_checkpoint(_checkpoint_path(run_dir, checkpoint))
    except CheckpointError as error:
        raise ExportError(str(error)) from None
    if payload["stage"] == "refine":
        return _export_refine(run_dir, out, payload, half)
    from xraysyn.train.baselines import SIMULATED_BASELINES, baseline_export

    if payload["stage"] in SIMULATED_BASELINES:
        export = baseline_export(run_dir, payload, half)
        atomic_write(out, lambda tmp: torch.save(export, tmp))
        return out, export["sha256"]
    config = config_from_mapping(payload["config"])
    state = payload["modules"]["prior"]
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    sim = config.simulation
    from xraysyn.models.normalization import HUScale

    scale = HUScale()
    split_path = run_dir / "split.json"
    training_data = {"sources": [{"path": s.path, "weight": s.weight} for s in config.data.sources],
                     "volume_size": config.data.volume_size, "phantom_cases": config.data.phantom_cases}
    if split_path.is_file():
        import json

        split = json.loads(split_path.read_text(encoding="utf-8"))
        training_data["train_cases"] = sum(len(v) for v in split["train"].values())
        training_data["validation_cases"] = sum(len(v) for v in split["validation"].values())
    export = {
        "format": EXPORT_FORMAT,
        "xraysyn_version": xraysyn.__version__,
        "stage": payload["stage"],
        "model_class": "PriorNet3D",
        "model_config": {"widths": list(config.model.widths), "norm": config.model.norm,
                         "negative_slope": config.model.negative_slope},
        "state_dict": state,
        "sha256": state_dict_sha256(state),
        "input_normalisation": {"function": "xraysyn.data.input_domain.normalise_radiograph",
                                "method": "per-image mid-rank empirical distribution function",
                                "detector_pixels": sim.detector_pixels, "field_of_view_mm": sim.field_of_view_mm,
                                "sdd_mm": sim.sdd_mm, "sid_mm": sim.sid_mm,
                                "volume_size": config.data.volume_size,
                                "backprojection_scale": "volume mean edge (mm)"},
        "hu_scale": {"min_hu": float(scale.min_hu), "max_hu": float(scale.max_hu)},
        "training_data": training_data,
        "steps": int(payload["step"]),
        "validation": dict(payload["validation"]),
        "best": dict(payload["best"]),
        "config": payload["config"],
    }
    atomic_write(out, lambda tmp: torch.save(export, tmp))
    return out, export["sha256"]


def load_export(path: str | Path) -> dict:
    """Load and check a model file: readable with ``weights_only=True``, an xraysyn export of a known format,
    its weights matching their SHA-256."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"model file {str(path)!r} does not exist")
    try:
        export = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (a foreign or damaged file raises many kinds of errors)
        raise ExportError(f"{str(path)!r} is not a readable xraysyn model file ({type(error).__name__})") from None
    if not isinstance(export, dict) or not str(export.get("format", "")).startswith("xraysyn-model-"):
        raise ExportError(f"{str(path)!r} is not an xraysyn model file (made by `xraysyn export`)")
    if export["format"] not in READABLE_FORMATS:
        raise ExportError(f"{str(path)!r} has format {export['format']!r}, made by xraysyn "
                          f"{export.get('xraysyn_version', '?')}; this version {xraysyn.__version__} reads "
                          f"{', '.join(READABLE_FORMATS)}")
    for part in (export, export.get("prior_export")):
        if part is not None and state_dict_sha256(part["state_dict"]) != part.get("sha256"):
            raise ExportError(f"{str(path)!r}: the weights do not match their SHA-256 (the file is damaged)")
    return export


def _export_refine(run_dir: Path, out: Path, payload: dict, half: bool) -> tuple[Path, str]:
    """The export of a stage-2 run: the 2DRN (F + M) weights, its preset, and the 3DPN export it refines."""
    import json

    from xraysyn.train.refine_config import refine_config_from_mapping

    config = refine_config_from_mapping(payload["config"])
    state = payload["modules"]["refine"]
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    prior = json.loads((run_dir / "prior.json").read_text(encoding="utf-8"))
    export = {
        "format": EXPORT_FORMAT,
        "xraysyn_version": xraysyn.__version__,
        "stage": "refine",
        "model_class": "RefineNet2D",
        "model_config": {"preset": config.network, "static_hyper": config.static_hyper},
        "state_dict": state,
        "sha256": state_dict_sha256(state),
        "prior": {"path": prior["path"], "file_sha256": prior["sha256"]},
        "display_window": {"function": "xraysyn.data.input_domain.window_to_unit", "of": "-log I"},
        "steps": int(payload["step"]),
        "validation": dict(payload["validation"]),
        "best": dict(payload["best"]),
        "config": payload["config"],
    }
    export = embed_prior(export, prior["path"], prior["sha256"])
    atomic_write(out, lambda tmp: torch.save(export, tmp))
    return out, export["sha256"]
