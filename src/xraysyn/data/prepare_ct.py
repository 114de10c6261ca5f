"""Batch preparation of CT shards from a directory tree (what ``xraysyn prepare ct`` runs).

Discovery (:func:`find_ct_inputs`): every folder holding DICOM files is one DICOM series input;
every ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha``/``.mhd`` file is one volume input, except
label maps, recognised by name: ``mask``, ``labels``, ``label``, ``seg``, ``segmentation`` or a
``<ct name>_mask`` / ``_labels`` / ``_seg`` suffix. A label map is paired with the CT of the same
stem (``ct_mask.nii.gz`` with ``ct.nii.gz``), or with the only CT of its folder.

Bone mask of each input (:func:`bone_for`): a paired label map with a ``structures.csv`` in the same
folder -> :func:`~xraysyn.data.bone_mask.bone_mask_from_labels`; a paired label map holding only
0 and 1 -> used as the bone mask; otherwise the HU threshold method.

Each input becomes ``OUT_DIR/<relative path with '/' replaced by '__'>.npz``
(:mod:`xraysyn.data.shards`), written atomically; existing outputs are skipped (resumable).
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xraysyn.atomic import atomic_write
from xraysyn.data.bone_mask import bone_mask_from_hu, bone_mask_from_labels
from xraysyn.data.ct_io import (
    IGNORED_SUFFIXES,
    CTVolume,
    is_dicom_file,
    load_ct,
    volume_format,
)
from xraysyn.data.preprocess import (
    DEFAULT_CUBE_SIZE,
    MAX_SLICE_SPACING_MM,
    check_slice_spacing,
    preprocess_ct,
)
from xraysyn.data.shards import write_shard

__all__ = [
    "STRUCTURES_TABLE_NAME",
    "SUMMARY_NAME",
    "CTInput",
    "PrepareReport",
    "bone_for",
    "find_ct_inputs",
    "prepare_ct_tree",
]

SUMMARY_NAME = "prepare_summary.json"
STRUCTURES_TABLE_NAME = "structures.csv"
_LABEL_STEMS = ("mask", "labels", "label", "seg", "segmentation")
_LABEL_SUFFIXES = tuple(f"_{stem}" for stem in _LABEL_STEMS)


@dataclass(frozen=True)
class CTInput:
    """One CT to prepare: ``path`` (series folder or volume file), optional paired ``labels`` file."""

    path: Path
    labels: Path | None = None


@dataclass
class PrepareReport:
    """What a batch did: lists of ``{"input", "output"}`` / ``{"input", "reason"}`` dicts."""

    processed: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_label_name(path: Path) -> bool:
    stem = _stem(path).lower()
    return stem in _LABEL_STEMS or stem.endswith(_LABEL_SUFFIXES)


def _has_dicom(folder: Path, files: Iterable[str]) -> bool:
    for name in files:
        if name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES) or volume_format(name):
            continue
        if is_dicom_file(folder / name):
            return True
    return False


def find_ct_inputs(root: str | os.PathLike) -> list[CTInput]:
    """All CT inputs under ``root`` (sorted), with their paired label maps (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"input folder {str(root)!r} does not exist or is not a folder")
    inputs: list[CTInput] = []
    for folder_name, subfolders, files in os.walk(root):
        subfolders.sort()
        folder = Path(folder_name)
        files = sorted(files)
        if _has_dicom(folder, files):
            inputs.append(CTInput(folder))
        volumes = [folder / f for f in files if volume_format(f) and not f.startswith(".")]
        cts = [p for p in volumes if not _is_label_name(p)]
        label_maps = [p for p in volumes if _is_label_name(p)]
        for ct in cts:
            paired = [p for p in label_maps if _stem(p).lower().startswith(_stem(ct).lower() + "_")]
            if not paired and len(cts) == 1:
                paired = [p for p in label_maps if _stem(p).lower() in _LABEL_STEMS]
            inputs.append(CTInput(ct, paired[0] if paired else None))
    return sorted(inputs, key=lambda item: str(item.path))


def bone_for(ct: CTVolume, item: CTInput) -> tuple[np.ndarray, str]:
    """The ``(I, J, K)`` bool bone mask of ``ct`` and the method used (``labels``, ``mask file``, ``threshold``)."""
    if item.labels is not None:
        labels = load_ct(item.labels)
        if labels.shape != ct.shape or not np.allclose(labels.world_from_voxel, ct.world_from_voxel, atol=1e-3):
            raise ValueError(
                f"label map {str(item.labels)!r} (shape {labels.shape}) is not on the grid of the CT (shape {ct.shape})"
            )
        table = item.labels.parent / STRUCTURES_TABLE_NAME
        if table.is_file():
            return bone_mask_from_labels(labels.hu, table), "labels"
        values = np.unique(labels.hu)
        if np.all(np.isin(values, (0.0, 1.0))):
            return labels.hu > 0.5, "mask file"
    return bone_mask_from_hu(ct.hu, ct.spacing_mm), "threshold"


def _output_name(root: Path, item: CTInput) -> str:
    relative = item.path.relative_to(root)
    parts = list(relative.parts[:-1]) + [_stem(relative)] if relative.parts else [root.name]
    return "__".join(parts) + ".npz"


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8"))


def prepare_ct_tree(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    size: int = DEFAULT_CUBE_SIZE,
    mode: str = "stretch",
    max_spacing_mm: float = MAX_SLICE_SPACING_MM,
    progress: Callable[[Iterable[CTInput]], Iterable[CTInput]] | None = None,
) -> PrepareReport:
    """Prepare every CT under ``input_dir`` into shards in ``output_dir``; write ``prepare_summary.json``.

    Args:
        input_dir: folder tree with DICOM series folders and volume files.
        output_dir: where shards (``size``³ HU int16 + bone mask) and the summary go; created.
        size: voxels per side of the output cube.
        mode: ``"stretch"`` (paper) or ``"isotropic"``, see :func:`~xraysyn.data.preprocess.resample_to_cube`.
        max_spacing_mm: CTs with coarser slices are skipped (reported).
        progress: wraps the input iterable (e.g. ``tqdm``).

    Returns:
        :class:`PrepareReport`; one input failing never stops the batch.
    """
    root = Path(input_dir)
    out = Path(output_dir)
    if not isinstance(size, int) or size < 2:
        raise ValueError(f"size must be an integer >= 2, got {size!r}")
    if mode not in ("stretch", "isotropic"):
        raise ValueError(f"mode must be 'stretch' or 'isotropic', got {mode!r}")
    inputs = find_ct_inputs(root)
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        inputs = [item for item in inputs if out.resolve() not in item.path.resolve().parents]
    out.mkdir(parents=True, exist_ok=True)
    report = PrepareReport(settings={"size": size, "mode": mode, "max_spacing_mm": max_spacing_mm,
                                     "input_dir": str(root), "output_dir": str(out)})
    iterable = progress(inputs) if progress is not None else inputs
    for item in iterable:
        name = str(item.path.relative_to(root)) if item.path != root else "."
        target = out / _output_name(root, item)
        if target.exists():
            report.skipped.append({"input": name, "reason": f"output {target.name} exists (resumed)"})
            continue
        try:
            ct = load_ct(item.path)
            check = check_slice_spacing(ct, max_spacing_mm)
            if not check.ok:
                report.skipped.append({"input": name, "reason": check.reason})
                continue
            bone, method = bone_for(ct, item)
            cube, bone_cube = preprocess_ct(ct, bone, size=size, mode=mode)
            meta = {
                "source": name,
                "source_format": ct.meta.get("format"),
                "original_shape": list(ct.shape),
                "original_spacing_mm": list(ct.spacing_mm),
                "slice_thickness_mm": ct.meta.get("slice_thickness_mm"),
                "bone_mask_method": method,
                "labels": str(item.labels.relative_to(root)) if item.labels is not None else None,
                "resample_mode": mode,
                "cube_size": size,
            }
            write_shard(target, cube.hu, bone_cube, cube.world_from_voxel, meta)
            report.processed.append({"input": name, "output": target.name})
        except (ValueError, OSError) as exc:
            report.failed.append({"input": name, "reason": str(exc)})
        except Exception as exc:  # one broken input must not stop a long batch
            report.failed.append({"input": name, "reason": f"{type(exc).__name__}: {exc}",
                                  "traceback": traceback.format_exc(limit=3)})
    _write_json_atomic(out / SUMMARY_NAME, asdict(report))
    return report
