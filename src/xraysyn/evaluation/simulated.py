"""``xraysyn evaluate simulated``: the simulated part of the paper's Table 1 and its Table 4 on held-out CT cases,
for the 3DPN and the ablation baselines (3DPN-DRR, X2CT-CNN, the 2D Refiner), with a Fig. 3-like grid.

Protocol (the 3DPN's validation, :meth:`xraysyn.train.prior.PriorTask.predict_case`, applied to every model):

1. the true CT of a case is simulated with CT2Xray (eq. 3-6) at the input view T (azimuth 0°, elevation 0°)
   and at ``views`` views T' evenly in ±``max_azimuth_deg`` azimuth (paper: 20 views in ±9°), in the model's
   own geometry and grid (its export's training config);
2. the input is the simulated radiograph at T brought into the input domain without perturbation
   (:func:`~xraysyn.train.stage1.simulated_network_input`);
3. each model predicts −log I at T and T' (:func:`predict_views`): the 3DPN (and 3DPN-DRR) backprojects the
   input, predicts CT + bone mask and re-simulates them in its training simulation mode; X2CT predicts them from
   the radiograph itself; the 2D Refiner maps ``concat(FP(BP(I, T), T'), I)`` to −log I. Models with a CT2Xray
   simulation also give the thickness maps t_bone, t_tissue (g/cm²);
4. PSNR / SSIM per view of −log I (and of each t_m) against the truth, each true view's range as data range.

The truth is always CT2Xray's polychromatic −log I, also for a model trained on DRRs: the paper evaluates
3DPN-DRR "on more realistically simulated radiographs", its views being DRRs of its predicted CT (no
material decomposition, hence no thickness metrics), which is what makes its PSNR drop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
import numpy as np
import torch

from xraysyn.physics.materials import BONE, TISSUE

__all__ = [
    "EvaluationError",
    "EvaluatedModel",
    "ViewPrediction",
    "SimulatedEvaluation",
    "MODEL_KINDS",
    "PHANTOM_CASE_OFFSET",
    "PHANTOM_BASE_SEED",
    "evaluate_simulated",
    "evaluation_azimuths",
    "load_evaluated_model",
    "model_kind",
    "predict_views",
    "refiner_input",
    "view_scores",
]

#: Model kinds ``evaluate simulated`` knows, detected from the export (:func:`model_kind`).
MODEL_KINDS = ("3dpn", "3dpn_drr", "x2ct", "refiner2d")
#: Kinds whose network is a 3D PriorNet (``load_prior``).
PRIOR_KINDS = ("3dpn", "3dpn_drr")
#: Held-out phantoms: case ids from here on. Training draws phantom ids 0 … ``data.phantom_cases`` − 1
#: (:class:`~xraysyn.data.datasets.PhantomDataset`), so no training run sees these.
PHANTOM_CASE_OFFSET = 1_000_000
#: The base seed of the held-out phantoms (the training default ``loop.seed``; with ids ≥ the offset they
#: differ from every training phantom of any seed). Fixed, so that every model sees the same anatomies.
PHANTOM_BASE_SEED = 0
#: The data source name of procedural phantoms (as for training).
PHANTOM_SOURCE = "phantom"
#: Thickness maps evaluated: short key → CT2Xray's material channel name (its default materials).
MATERIALS = {"bone": BONE, "tissue": TISSUE}
#: The radiograph's key, and every quantity scored per view.
RADIOGRAPH = "I"
QUANTITIES = (RADIOGRAPH, *MATERIALS)
#: Figure columns: these fractions of ±max_azimuth_deg (Fig. 3 of the paper shows −9°, 0°, 9°; we add ±4.5°).
FIGURE_AZIMUTH_FRACTIONS = (-1.0, -0.5, 0.0, 0.5, 1.0)
#: Model names go into file columns and figure labels: letters, digits, ``_ . + -``.
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
#: The format tag of ``evaluation.json``.
EVALUATION_FORMAT = "xraysyn-evaluation-simulated-1"
#: Devices accepted (``auto``: CUDA when available).
DEVICES = ("auto", "cpu", "cuda")
#: Output file names.
OUTPUT_FILES = ("table1.md", "table1.csv", "table4.md", "table4.csv", "per_case.csv", "fig3.png", "evaluation.json")
#: Written besides when two or more models are evaluated: each against the first (:mod:`xraysyn.evaluation.paired`).
PAIRED_FILES = ("paired.md", "paired.csv")


class EvaluationError(ValueError):
    """Bad input to the evaluation: a model file, data source or setting it cannot use."""


# ---------------------------------------------------------------------------------------------- models
@dataclass
class EvaluatedModel:
    """A trained model ready for :func:`predict_views`, with the settings it was trained with.

    Attributes:
        name: the user's name for it (table rows).
        path: the export file.
        kind: one of :data:`MODEL_KINDS`.
        network: in eval mode on the evaluation device.
        hu_scale: HU ↔ [-1, 1] of its CT channel (``None`` for the 2D Refiner).
        volume_size: voxels per axis of its grid.
        simulation: its training :class:`~xraysyn.train.prior_config.SimulationConfig` (C-arm, projector, mode).
        metadata: what ``evaluation.json`` records (stage, steps, preset, SHA-256 of file and weights).
    """

    name: str
    path: Path
    kind: str
    network: torch.nn.Module
    hu_scale: object | None
    volume_size: int
    simulation: object
    metadata: dict = field(default_factory=dict)

    @property
    def geometry(self):
        return self.simulation.geometry()

    @property
    def projector_kwargs(self) -> dict:
        return self.simulation.projector_kwargs()

    @property
    def has_thickness(self) -> bool:
        """Whether its views come with t_m maps: a 3-D model simulated with CT2Xray."""
        return self.kind != "refiner2d" and self.simulation.mode == "ct2xray"

    @property
    def truth_key(self) -> tuple:
        """Models with equal keys share the simulated truth of a case (the grid and the CT2Xray settings)."""
        return self.volume_size, dataclasses.replace(self.simulation, mode="ct2xray")


def model_kind(export: dict, path: str | os.PathLike) -> str:
    """The kind (:data:`MODEL_KINDS`) of a loaded export (:func:`xraysyn.train.export.load_export`).

    Raises:
        EvaluationError: a stage-2 (2DRN) export, or any other stage.
    """
    from xraysyn.train.prior_config import config_from_mapping

    stage = export.get("stage")
    if stage == "prior" and export.get("model_class") == "PriorNet3D":
        mode = config_from_mapping(export.get("config") or {}).simulation.mode
        return "3dpn_drr" if mode == "drr" else "3dpn"
    if stage in ("x2ct", "refiner2d"):
        return stage
    if stage == "refine":
        raise EvaluationError(f"{str(path)!r} is a stage-2 (2DRN) export, which refines real radiographs; "
                              "evaluate it with `xraysyn evaluate real`")
    raise EvaluationError(f"{str(path)!r} is an export of stage {stage!r}; `evaluate simulated` takes exports of "
                          "a 3DPN (`train prior`, also in DRR mode) and of the refiner2d and x2ct baselines")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_evaluated_model(name: str, path: str | os.PathLike, device: str | torch.device = "cpu") -> EvaluatedModel:
    """Load an ``xraysyn export`` file for evaluation; its kind and settings come from the export.

    Raises:
        EvaluationError: a bad name, or a file that is not an export of a kind :func:`model_kind` knows (the
            message starts with the model's name).
    """
    from xraysyn.train.baselines import baseline_config_from_mapping, load_baseline_export
    from xraysyn.train.export import load_export
    from xraysyn.train.prior_config import config_from_mapping
    from xraysyn.train.prior_model import load_prior

    if not isinstance(name, str) or not MODEL_NAME_PATTERN.match(name):
        raise EvaluationError(f"model name {name!r}: use letters, digits and _ . + - (starting with a letter or "
                              "digit)")
    path = Path(path)
    try:
        export = load_export(path)
        kind = model_kind(export, path)
        if kind in PRIOR_KINDS:
            prior = load_prior(path, device)
            network, hu_scale = prior.network, prior.hu_scale
            config = config_from_mapping(export["config"])
            preset = config.preset
        else:
            from xraysyn.models.normalization import HUScale

            network, _ = load_baseline_export(path, device)
            network.requires_grad_(False)
            config = baseline_config_from_mapping(export["config"])
            hu_scale = HUScale(**export["hu_scale"]) if "hu_scale" in export else None
            preset = config.network
    except ValueError as error:  # ExportError, EvaluationError, ConfigError: the file is the problem
        raise EvaluationError(f"model {name!r}: {error}") from None
    metadata = {"file": str(path), "file_sha256": _file_sha256(path), "weights_sha256": export["sha256"],
                "kind": kind, "stage": export["stage"], "model_class": export["model_class"], "preset": preset,
                "steps": export.get("steps"), "volume_size": config.data.volume_size,
                "training_phantom_cases": config.data.phantom_cases,
                "training_sources": [s.path for s in config.data.sources],
                "simulation": dataclasses.asdict(config.simulation)}
    return EvaluatedModel(name, path, kind, network, hu_scale, config.data.volume_size, config.simulation, metadata)


# ---------------------------------------------------------------------------------------------- prediction
@dataclass
class ViewPrediction:
    """A model's views of one case: ``line_integral (V, 1, rows, cols)`` −log I, ``thickness (V, M, rows, cols)``
    g/cm² in the channel order of ``materials``, or ``None`` when the model has no thickness output."""

    line_integral: torch.Tensor
    thickness: torch.Tensor | None
    materials: tuple[str, ...] = ()


@torch.no_grad()
def refiner_input(normalised: torch.Tensor, world_from_voxel: torch.Tensor, input_pose: torch.Tensor,
                  poses: torch.Tensor, geometry, volume_shape, projector_kwargs: dict) -> torch.Tensor:
    """The 2D Refiner's documented input (its export's ``output`` field) for one case:
    ``concat(FP(BP(I, T), T'), I)`` ``(V, 2, rows, cols)`` for a normalised radiograph ``(1, 1, rows, cols)`` at
    ``input_pose (1, 4, 4)`` and ``V`` target ``poses (V, 4, 4)``; BP (eq. 7, per mm of chord) into the case's
    grid ``volume_shape (D, H, W)`` with ``world_from_voxel (1, 4, 4)`` mm."""
    from xraysyn.projector import backproject, forward_project

    smeared = backproject(normalised, world_from_voxel, input_pose, geometry, volume_shape,
                          backend=projector_kwargs.get("backend", "auto"))
    reprojected = forward_project(smeared, world_from_voxel, poses, geometry, **projector_kwargs)
    return torch.cat([reprojected.to(normalised.dtype), normalised.expand(poses.shape[0], -1, -1, -1)], dim=1)


def predicted_volumes(model: EvaluatedModel, normalised: torch.Tensor, case: dict, poses: torch.Tensor):
    """A 3-D model's ``(ct_hu, bone_probability)``, each ``(1, 1, D, H, W)``, from the normalised input
    ``(1, 1, rows, cols)`` at ``poses[:1]`` (the 3DPN: through BP into the case's grid; X2CT: the image itself)."""
    from xraysyn.train.stage1 import network_input_from_radiograph, predict_volumes

    if model.kind == "x2ct":
        network_input = normalised
    else:
        network_input = network_input_from_radiograph(normalised, case["world_from_voxel"], poses[:1], model.geometry,
                                                      tuple(case["ct_hu"].shape[2:]),
                                                      backend=model.projector_kwargs["backend"])
    _, hu, mask = predict_volumes(model.network, network_input, model.hu_scale)
    return hu, mask


@torch.no_grad()
def predict_views(model: EvaluatedModel, normalised: torch.Tensor, case: dict, poses: torch.Tensor) -> ViewPrediction:
    """A model's −log I (and t_m where it has them) at ``poses (V, 4, 4)`` from the normalised input at
    ``poses[:1]``; ``case`` holds ``ct_hu`` / ``world_from_voxel`` of the grid (``(1, 1, D, H, W)``, ``(1, 4, 4)``)."""
    from xraysyn.train.stage1 import simulate_views

    if model.kind == "refiner2d":
        image = refiner_input(normalised, case["world_from_voxel"], poses[:1], poses, model.geometry,
                              tuple(case["ct_hu"].shape[2:]), model.projector_kwargs)
        return ViewPrediction(model.network(image).float(), None)
    hu, mask = predicted_volumes(model, normalised, case, poses)
    views = simulate_views(hu, mask, case["world_from_voxel"], poses, model.geometry, mode=model.simulation.mode,
                           **model.projector_kwargs)
    if not model.has_thickness:
        return ViewPrediction(views.line_integral, None)
    return ViewPrediction(views.line_integral, views.thickness, tuple(views.materials))


def view_scores(predicted: torch.Tensor, true: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """PSNR (dB, capped at :data:`~xraysyn.train.baselines.PSNR_CAP_DB`) and SSIM per view of ``(V, 1, rows,
    cols)`` images, each true view's range (max − min) as the data range: two float64 ``(V,)`` arrays."""
    from xraysyn.metrics import psnr, ssim
    from xraysyn.train.baselines import PSNR_CAP_DB

    pred, true = predicted.double(), true.double()
    flat = true.reshape(true.shape[0], -1)
    data_range = (flat.max(dim=1).values - flat.min(dim=1).values).clamp(min=1e-12)
    return (psnr(pred, true, data_range).clamp(max=PSNR_CAP_DB).cpu().numpy(),
            ssim(pred, true, data_range).cpu().numpy())


def evaluation_azimuths(views: int, max_azimuth_deg: float) -> torch.Tensor:
    """``(1 + views,)`` float64 azimuths (degrees): T = 0°, then ``linspace(−max, max, views)`` (the T' views)."""
    return torch.cat([torch.zeros(1, dtype=torch.float64),
                      torch.linspace(-max_azimuth_deg, max_azimuth_deg, views, dtype=torch.float64)])


# ---------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class CaseRef:
    """One held-out case: its ``source`` (``phantom`` or a shard folder), dataset ``index`` and stable ``id``."""

    source: str
    index: int
    id: str


def _case_refs(data: list[str], cases: int) -> list[CaseRef]:
    """The cases of each source: ``cases`` held-out phantoms, or the first ``cases`` shards of a folder."""
    from xraysyn.data.datasets import CTShardDataset

    if not data:
        raise EvaluationError("--data: give at least one source (`phantom` or a folder of `prepare ct` shards)")
    if len(set(data)) != len(data):
        raise EvaluationError(f"--data names a source twice: {data}")
    refs = []
    for source in data:
        if source == PHANTOM_SOURCE:
            refs.extend(CaseRef(source, PHANTOM_CASE_OFFSET + k, f"phantom/{PHANTOM_CASE_OFFSET + k:07d}")
                        for k in range(cases))
            continue
        try:
            dataset = CTShardDataset(source)
        except (OSError, ValueError) as error:
            raise EvaluationError(f"--data {source!r}: {error} (give `phantom` or a folder of `prepare ct` "
                                  "shards)") from None
        refs.extend(CaseRef(source, i, f"{Path(source).name}/{p.relative_to(dataset.root).as_posix()}")
                    for i, p in enumerate(dataset.paths[:cases]))
    return refs


class _CaseLoader:
    """Cases on the device at a model's grid size (phantoms generated at that size, shards resampled to it)."""

    def __init__(self, cases: int, device: torch.device):
        self.cases = cases
        self.device = device
        self._datasets: dict[tuple[str, int], object] = {}

    def _dataset(self, source: str, size: int):
        from xraysyn.data.datasets import CTShardDataset, PhantomDataset

        key = (source, size)
        if key not in self._datasets:
            self._datasets[key] = (PhantomDataset(PHANTOM_CASE_OFFSET + self.cases, size=size, seed=PHANTOM_BASE_SEED)
                                   if source == PHANTOM_SOURCE else CTShardDataset(source, size=size))
        return self._datasets[key]

    def load(self, ref: CaseRef, size: int) -> dict:
        hu, bone, affine = self._dataset(ref.source, size).load_case(ref.index)
        return {"ct_hu": hu[None].float().to(self.device), "bone": bone[None].float().to(self.device),
                "world_from_voxel": affine[None].float().to(self.device), "id": ref.id}


# ---------------------------------------------------------------------------------------------- evaluation
@dataclass
class SimulatedEvaluation:
    """What :func:`evaluate_simulated` computed and wrote.

    Attributes:
        out_dir: the folder of results.
        models: per model name, its ``evaluation.json`` record (kind, file, SHA-256, settings).
        case_ids: the evaluated cases.
        azimuth_deg: ``(1 + views,)`` view azimuths: T (0°), then the T' views.
        scores: ``scores[model][quantity][metric]`` a float64 ``(cases, 1 + views)`` array (quantity ``I``,
            ``bone``, ``tissue``; metric ``psnr`` dB or ``ssim``), ``None`` for a quantity the model lacks.
        first_case: per model, the arrays of the first case: ``predicted`` / ``truth`` dicts of ``line_integral
            (1 + views, rows, cols)`` and ``thickness (1 + views, M, rows, cols)`` (``None`` when absent).
        table1_markdown: the Table 1 text written to ``table1.md``.
        seconds: wall time of the evaluation.
        warnings: e.g. a shard folder that a model was trained on.
    """

    out_dir: Path
    models: dict[str, dict]
    case_ids: list[str]
    azimuth_deg: list[float]
    scores: dict[str, dict[str, dict[str, np.ndarray] | None]]
    first_case: dict[str, dict]
    table1_markdown: str = ""
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def _resolve_device(device) -> torch.device:
    text = str(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(text)
    except (RuntimeError, ValueError):
        raise EvaluationError(f"--device must be one of {', '.join(DEVICES)} (or cuda:N), got {text!r}") from None
    if resolved.type not in ("cpu", "cuda"):
        raise EvaluationError(f"--device must be one of {', '.join(DEVICES)} (or cuda:N), got {text!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise EvaluationError(f"--device {text}: no CUDA device is available; use --device cpu")
    return resolved


def _check_settings(models, data, cases, views, max_azimuth_deg) -> None:
    if not isinstance(models, dict) or not models:
        raise EvaluationError("--model: give at least one model as NAME=FILE")
    if isinstance(data, str) or not isinstance(data, (list, tuple)):
        raise EvaluationError(f"data must be a list of sources, got {type(data).__name__}")
    for name, value, minimum in (("--cases", cases, 1), ("--views", views, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise EvaluationError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if (isinstance(max_azimuth_deg, bool) or not isinstance(max_azimuth_deg, (int, float))
            or not math.isfinite(max_azimuth_deg) or not 0 < max_azimuth_deg < 90):
        raise EvaluationError(f"--max-azimuth must be in (0, 90) degrees, got {max_azimuth_deg!r}")


def _held_out_warnings(models: list[EvaluatedModel], data: list[str]) -> list[str]:
    """Refuse phantoms a model may have trained on; warn about shard folders a model trained on."""
    found = []
    for model in models:
        if PHANTOM_SOURCE in data and model.metadata["training_phantom_cases"] > PHANTOM_CASE_OFFSET:
            raise EvaluationError(f"model {model.name!r} trained on {model.metadata['training_phantom_cases']} "
                                  f"phantoms, beyond the held-out ids from {PHANTOM_CASE_OFFSET}")
        trained = {os.path.realpath(p) for p in model.metadata["training_sources"] if p != PHANTOM_SOURCE}
        for source in data:
            if source != PHANTOM_SOURCE and os.path.realpath(source) in trained:
                found.append(f"model {model.name!r} was trained on {source!r} (its validation split held out only "
                             "part of it); give held-out shards")
    return found


def _score_case(model: EvaluatedModel, prediction: ViewPrediction, truth) -> dict:
    scores = {}
    psnr_values, ssim_values = view_scores(prediction.line_integral, truth.line_integral)
    scores[RADIOGRAPH] = {"psnr": psnr_values, "ssim": ssim_values}
    for material, channel in MATERIALS.items():
        if prediction.thickness is None:
            scores[material] = None
            continue
        m_pred, m_true = prediction.materials.index(channel), truth.materials.index(channel)
        psnr_values, ssim_values = view_scores(prediction.thickness[:, m_pred:m_pred + 1],
                                               truth.thickness[:, m_true:m_true + 1])
        scores[material] = {"psnr": psnr_values, "ssim": ssim_values}
    return scores


def _arrays(line_integral: torch.Tensor, thickness: torch.Tensor | None) -> dict:
    return {"line_integral": line_integral[:, 0].float().cpu().numpy(),
            "thickness": None if thickness is None else thickness.float().cpu().numpy()}


def evaluate_simulated(models: dict[str, str | os.PathLike], data: list[str], *, cases: int, views: int = 20,
                       max_azimuth_deg: float = 9.0, device: str | torch.device = "cpu",
                       out_dir: str | os.PathLike, overwrite: bool = False, progress: bool = True
                       ) -> SimulatedEvaluation:
    """Evaluate trained models on held-out simulated cases (the paper's Table 1 simulated part, Table 4, Fig. 3).

    Args:
        models: name → ``xraysyn export`` file of a 3DPN (also in DRR mode), refiner2d or x2ct.
        data: sources: ``phantom`` (``cases`` procedural phantoms of ids from :data:`PHANTOM_CASE_OFFSET`, seed
            :data:`PHANTOM_BASE_SEED`) and/or folders of ``prepare ct`` shards (their first ``cases`` shards in
            sorted order; they must be held out of every model's training).
        cases: cases per source (≥ 1).
        views: T' views (≥ 2), azimuths ``linspace(−max_azimuth_deg, max_azimuth_deg, views)``, elevation 0.
        max_azimuth_deg: in (0, 90) degrees.
        device: ``cpu``, ``cuda`` (``cuda:N``) or ``auto``.
        out_dir: the results folder (``table1.md``/``.csv``, ``table4.md``/``.csv``, ``per_case.csv``, ``fig3.png``,
            ``evaluation.json``; with two or more models also ``paired.md``/``.csv``), written as a whole
            (:func:`xraysyn.outputs.staged_output_folder`).
        overwrite: replace an existing non-empty ``out_dir``.
        progress: a tqdm bar over cases × models.

    Each model runs on its own grid and C-arm (its training config), so models of different presets can be
    compared; models with the same settings share the simulated truth.

    Raises:
        EvaluationError: bad settings, model files or data sources (checked before anything is written); the
            output folder's own errors (:func:`xraysyn.outputs.check_output_folder`).
    """
    from tqdm import tqdm

    from xraysyn.outputs import check_output_folder, staged_output_folder
    from xraysyn.train.stage1 import simulate_views, simulated_network_input, view_poses

    started = time.perf_counter()
    _check_settings(models, data, cases, views, max_azimuth_deg)
    resolved_device = _resolve_device(device)
    check_output_folder(out_dir, overwrite=overwrite)
    loaded = [load_evaluated_model(name, path, resolved_device) for name, path in models.items()]
    refs = _case_refs(list(data), cases)
    warnings = _held_out_warnings(loaded, list(data))
    azimuth = evaluation_azimuths(views, float(max_azimuth_deg))
    loader = _CaseLoader(cases, resolved_device)
    angles = azimuth[None].to(resolved_device)
    poses_of = {m.name: view_poses(angles, torch.zeros_like(angles), m.geometry) for m in loaded}
    per_case: dict[str, list[dict]] = {m.name: [] for m in loaded}
    first_case: dict[str, dict] = {}
    bar = tqdm(total=len(refs) * len(loaded), desc="evaluate simulated", unit="case·model", disable=not progress,
               dynamic_ncols=True)
    try:
        for c, ref in enumerate(refs):
            grids: dict[int, dict] = {}
            truths: dict[tuple, tuple] = {}
            for model in loaded:
                bar.set_postfix_str(f"{ref.id} {model.name}")
                if model.volume_size not in grids:
                    grids[model.volume_size] = loader.load(ref, model.volume_size)
                case = grids[model.volume_size]
                poses = poses_of[model.name]
                if model.truth_key not in truths:
                    with torch.no_grad():
                        truth = simulate_views(case["ct_hu"], case["bone"], case["world_from_voxel"], poses,
                                               model.geometry, mode="ct2xray", **model.projector_kwargs)
                        truths[model.truth_key] = (truth, simulated_network_input(truth.thickness[:1],
                                                                                  truth.i_atten[:1]))
                truth, normalised = truths[model.truth_key]
                prediction = predict_views(model, normalised, case, poses)
                per_case[model.name].append(_score_case(model, prediction, truth))
                if c == 0:
                    first_case[model.name] = {"predicted": _arrays(prediction.line_integral, prediction.thickness),
                                              "truth": _arrays(truth.line_integral, truth.thickness),
                                              "materials": tuple(truth.materials)}
                bar.update(1)
    finally:
        bar.close()
    scores = {name: _stack_scores(records) for name, records in per_case.items()}
    result = SimulatedEvaluation(Path(out_dir), {m.name: m.metadata for m in loaded}, [r.id for r in refs],
                                 azimuth.tolist(), scores, first_case, warnings=warnings)
    settings = {"cases_per_source": cases, "views": views, "max_azimuth_deg": float(max_azimuth_deg),
                "device": str(resolved_device), "data": list(data),
                "phantoms": {"base_seed": PHANTOM_BASE_SEED, "first_case_id": PHANTOM_CASE_OFFSET},
                "input": "CT2Xray of the true CT at T (azimuth 0, elevation 0), normalised, no perturbation",
                "truth": "CT2Xray (polychromatic) -log I and t_m of the true CT, in each model's geometry",
                "compute_seconds": time.perf_counter() - started}
    with staged_output_folder(out_dir, overwrite=overwrite) as staging:
        result.table1_markdown = _write_outputs(staging, result, loaded, settings)
    result.seconds = time.perf_counter() - started
    return result


def _stack_scores(records: list[dict]) -> dict[str, dict[str, np.ndarray] | None]:
    """Per-case score dicts → per quantity ``{"psnr": (cases, V), "ssim": (cases, V)}`` or ``None``."""
    stacked = {}
    for quantity in QUANTITIES:
        if records[0][quantity] is None:
            stacked[quantity] = None
            continue
        stacked[quantity] = {metric: np.stack([r[quantity][metric] for r in records]) for metric in ("psnr", "ssim")}
    return stacked


def evaluation_json(result: SimulatedEvaluation, settings: dict, tables: dict) -> str:
    """The ``evaluation.json`` text: format, version, settings, models with SHA-256, cases, tables, per-case
    scores (NaN as ``null``)."""
    import xraysyn

    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, np.ndarray):
            return clean(value.tolist())
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    document = {"format": EVALUATION_FORMAT, "xraysyn_version": xraysyn.__version__, "settings": settings,
                "models": result.models, "cases": result.case_ids, "azimuth_deg": result.azimuth_deg,
                "warnings": result.warnings, **tables,
                "per_case": {name: {q: s for q, s in quantities.items()} for name, quantities in result.scores.items()}}
    return json.dumps(clean(document), indent=1, ensure_ascii=False) + "\n"

# ---------------------------------------------------------------------------------------------- outputs
#: The metrics of every view, and their Markdown number formats (the paper's digits: 29.49/0.961).
METRICS = ("psnr", "ssim")
METRIC_FORMATS = {"psnr": ".2f", "ssim": ".3f"}
METRIC_TITLES = {"psnr": "PSNR (dB)", "ssim": "SSIM"}
#: Table 1's columns: (quantity, where) → header; ``T`` the input view, ``Tp`` the mean over the T' views.
TABLE1_HEADERS = {(RADIOGRAPH, "T"): "I^T", ("bone", "T"): "t_bone^T", ("tissue", "T"): "t_tissue^T",
                  (RADIOGRAPH, "Tp"): "I^T'", ("bone", "Tp"): "t_bone^T'", ("tissue", "Tp"): "t_tissue^T'"}


def _table1_rows(result: SimulatedEvaluation, loaded: list[EvaluatedModel]) -> list[dict]:
    from xraysyn.evaluation.tables import MeanStd

    rows = []
    for model in loaded:
        row = {"model": model.name, "kind": model.kind, "cases": len(result.case_ids)}
        for (quantity, where) in TABLE1_HEADERS:
            scores = result.scores[model.name][quantity]
            for metric in METRICS:
                if scores is None:
                    row[f"{metric}_{quantity}_{where}"] = None
                    continue
                per_case = scores[metric][:, 0] if where == "T" else scores[metric][:, 1:].mean(axis=1)
                row[f"{metric}_{quantity}_{where}"] = MeanStd.of(per_case)
        rows.append(row)
    return rows


def _paired(result: SimulatedEvaluation, loaded: list[EvaluatedModel]) -> dict:
    """Every model against the first, per Table 1 column (``{metric}_{quantity}_{where}``), over the cases."""
    from xraysyn.evaluation.paired import paired_columns

    scores = {}
    for model in loaded:
        columns = {}
        for (quantity, where) in TABLE1_HEADERS:
            values = result.scores[model.name][quantity]
            for metric in METRICS:
                columns[f"{metric}_{quantity}_{where}"] = (
                    None if values is None else
                    values[metric][:, 0] if where == "T" else values[metric][:, 1:].mean(axis=1))
        scores[model.name] = columns
    return paired_columns(scores, loaded[0].name)


def _write_paired(folder: Path, paired: dict, reference: str, cases: int) -> None:
    from xraysyn.evaluation.paired import write_paired_csv
    from xraysyn.evaluation.tables import Column, write_markdown

    sections = []
    for metric in METRICS:
        rows = [{"model": name, **{key: value.text(METRIC_FORMATS[metric])
                                   for key, value in columns.items() if value is not None and key.startswith(metric)}}
                for name, columns in paired.items()]
        sections.append((METRIC_TITLES[metric], rows, [Column("model")] + [
            Column(f"{metric}_{q}_{w}", header) for (q, w), header in TABLE1_HEADERS.items()]))
    write_markdown(folder / "paired.md", sections, title=f"Paired differences against {reference}", notes=[
        f"Per held-out case, model − {reference} (T': the mean over the T' views of each case), over {cases} cases: "
        "mean ± standard error, (cases where the model scores higher / cases, two-sided exact sign-test p). "
        "The same cases for every model, so these differences are far less noisy than Table 1's spreads."])
    write_paired_csv(folder / "paired.csv", paired, reference)


def _table4_rows(result: SimulatedEvaluation, loaded: list[EvaluatedModel]) -> tuple[list[dict], list[dict]]:
    """Wide rows (one per model, a column per T' view) and long rows (one per model and T' view)."""
    from xraysyn.evaluation.tables import MeanStd

    wide, long = [], []
    for model in loaded:
        scores = result.scores[model.name][RADIOGRAPH]
        row = {"model": model.name}
        for view in range(1, len(result.azimuth_deg)):
            values = {metric: MeanStd.of(scores[metric][:, view]) for metric in METRICS}
            row.update({f"{metric}_{view:02d}": values[metric] for metric in METRICS})
            long.append({"model": model.name, "kind": model.kind, "view_index": view,
                         "azimuth_deg": result.azimuth_deg[view], **values})
        wide.append(row)
    return wide, long


def _per_case_rows(result: SimulatedEvaluation, loaded: list[EvaluatedModel]) -> list[dict]:
    rows = []
    for model in loaded:
        for c, case_id in enumerate(result.case_ids):
            for view, azimuth in enumerate(result.azimuth_deg):
                row = {"model": model.name, "kind": model.kind, "case": case_id, "view": "T" if view == 0 else "T'",
                       "view_index": view, "azimuth_deg": azimuth}
                for quantity in QUANTITIES:
                    scores = result.scores[model.name][quantity]
                    for metric in METRICS:
                        row[f"{metric}_{quantity}"] = None if scores is None else float(scores[metric][c, view])
                rows.append(row)
    return rows


def _figure_views(azimuth_deg: list[float], max_azimuth_deg: float) -> list[int]:
    """Indices of the views nearest to :data:`FIGURE_AZIMUTH_FRACTIONS` of ±max (0° is T, view 0)."""
    targets = np.asarray(azimuth_deg[1:])
    chosen = []
    for fraction in FIGURE_AZIMUTH_FRACTIONS:
        goal = fraction * max_azimuth_deg
        index = 0 if goal == 0 else int(np.argmin(np.abs(targets - goal))) + 1
        if index not in chosen:
            chosen.append(index)
    return chosen


def _write_figure(path: Path, result: SimulatedEvaluation, loaded: list[EvaluatedModel], max_azimuth_deg: float):
    from xraysyn.train.figures import save_sample_grid

    views = _figure_views(result.azimuth_deg, max_azimuth_deg)
    angle = [f"{result.azimuth_deg[v]:+.1f}°" for v in views]
    rows = []
    for model in loaded:
        arrays, scores = result.first_case[model.name], result.scores[model.name]
        predicted = arrays["predicted"]
        rows.append((f"{model.name} −log I", [
            (f"{angle[i]} {scores[RADIOGRAPH]['psnr'][0, v]:.1f}/{scores[RADIOGRAPH]['ssim'][0, v]:.3f}",
             predicted["line_integral"][v]) for i, v in enumerate(views)]))
        if predicted["thickness"] is not None:
            bone = arrays["materials"].index(MATERIALS["bone"])
            rows.append((f"{model.name} t_bone", [
                (f"{angle[i]} {scores['bone']['psnr'][0, v]:.1f}/{scores['bone']['ssim'][0, v]:.3f}",
                 predicted["thickness"][v, bone]) for i, v in enumerate(views)]))
    groups: dict[tuple, EvaluatedModel] = {}
    for model in loaded:
        groups.setdefault(model.truth_key, model)
    for model in groups.values():
        truth = result.first_case[model.name]["truth"]
        suffix = "" if len(groups) == 1 else f" ({model.volume_size}³ grid, {model.simulation.detector_pixels}² px)"
        bone = result.first_case[model.name]["materials"].index(MATERIALS["bone"])
        rows.append((f"truth −log I{suffix}", [(angle[i], truth["line_integral"][v]) for i, v in enumerate(views)]))
        rows.append((f"truth t_bone{suffix}", [(angle[i], truth["thickness"][v, bone]) for i, v in enumerate(views)]))
    save_sample_grid(path, rows, title=f"held-out case {result.case_ids[0]}: PSNR dB / SSIM per view")


def _json_rows(rows: list[dict]) -> list[dict]:
    from xraysyn.evaluation.tables import MeanStd

    return [{k: v.to_json() if isinstance(v, MeanStd) else v for k, v in row.items()} for row in rows]


def _write_outputs(folder: Path, result: SimulatedEvaluation, loaded: list[EvaluatedModel], settings: dict) -> str:
    """Every output file into ``folder``; returns the Table 1 Markdown."""
    from xraysyn.atomic import atomic_write
    from xraysyn.evaluation.tables import Column, markdown_document, write_csv, write_markdown

    views, max_azimuth = settings["views"], settings["max_azimuth_deg"]
    model_column = Column("model")
    table1 = _table1_rows(result, loaded)
    sections = [(METRIC_TITLES[metric], table1,
                 [model_column] + [Column(f"{metric}_{q}_{w}", header, METRIC_FORMATS[metric])
                                   for (q, w), header in TABLE1_HEADERS.items()]) for metric in METRICS]
    notes = [f"Mean ± sample standard deviation over {len(result.case_ids)} held-out cases "
             f"({', '.join(settings['data'])}). T: the input view (azimuth 0°); T': the mean over {views} views, "
             f"azimuth linspace(−{max_azimuth:g}°, {max_azimuth:g}°, {views}), elevation 0. PSNR (dB, capped at "
             "100) and SSIM of −log I and of the thickness maps t_m (g/cm²) against CT2Xray of the true CT, each "
             "true view's range as the data range. Empty cells: the model has no such output (the 2D Refiner, and a "
             "DRR-mode model, have no material decomposition)."]
    table1_text = markdown_document(sections, title="Table 1 (simulated): held-out cases", notes=notes)
    atomic_write(folder / "table1.md", lambda tmp: tmp.write_text(table1_text, encoding="utf-8"))
    write_csv(folder / "table1.csv", table1,
              [model_column, Column("kind"), Column("cases")]
              + [Column(f"{metric}_{q}_{w}") for (q, w) in TABLE1_HEADERS for metric in METRICS])

    wide, long = _table4_rows(result, loaded)
    angles = result.azimuth_deg
    write_markdown(folder / "table4.md", [
        (METRIC_TITLES[metric], wide,
         [model_column] + [Column(f"{metric}_{v:02d}", f"{angles[v]:+.1f}°", METRIC_FORMATS[metric])
                           for v in range(1, len(angles))]) for metric in METRICS],
        title="Table 4 (simulated): −log I per view T'",
        notes=[f"Mean ± sample standard deviation over {len(result.case_ids)} held-out cases; input at T = 0°."])
    write_csv(folder / "table4.csv", long, [model_column, Column("kind"), Column("view_index"), Column("azimuth_deg"),
                                            Column("psnr"), Column("ssim")])

    per_case_columns = [model_column, Column("kind"), Column("case"), Column("view"), Column("view_index"),
                        Column("azimuth_deg")] + [Column(f"{m}_{q}") for q in QUANTITIES for m in METRICS]
    write_csv(folder / "per_case.csv", _per_case_rows(result, loaded), per_case_columns)
    _write_figure(folder / "fig3.png", result, loaded, max_azimuth)
    tables = {"table1": _json_rows(table1), "table4": _json_rows(long)}
    if len(loaded) > 1:
        from xraysyn.evaluation.paired import paired_json

        paired = _paired(result, loaded)
        _write_paired(folder, paired, loaded[0].name, len(result.case_ids))
        tables["paired"] = paired_json(paired, loaded[0].name)
    text = evaluation_json(result, settings, tables)
    atomic_write(folder / "evaluation.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return table1_text
