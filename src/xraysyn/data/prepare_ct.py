"""Batch preparation of CT shards from a directory tree (what ``xraysyn prepare ct`` runs).

Discovery (:func:`scan_ct_tree`, :func:`find_ct_inputs`): every folder holding DICOM files is one
DICOM series input; every ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha``/``.mhd`` file is one
volume input, except label maps, recognised by name: ``mask``, ``labels``, ``label``, ``seg``,
``segmentation`` or a ``<ct name>_mask`` / ``_labels`` / ``_seg`` suffix. A label map is paired
with the CT of the same stem (``ct_mask.nii.gz`` with ``ct.nii.gz``), or with the only CT of its
folder. Every other file looked at is reported as not used, with the reason (hidden, annotation or
text, not DICOM, label map without a CT, ...).

Bone mask of each input (:func:`bone_for`): a paired label map with a ``structures.csv`` in the same
folder -> :func:`~xraysyn.data.bone_mask.bone_mask_from_labels`; a paired label map holding only
0 and 1 -> used as the bone mask; otherwise the HU threshold method.

Output names: each input becomes ``OUT_DIR/<relative path with '/' replaced by '__'>.npz`` (for a
file, without its format suffix), a name that depends on the input alone, so it is the same in
every run and in every ``--shard`` job. Two inputs that would get the same name (compared without
case: ``p/ct/`` and ``p/ct.nii.gz``; ``a/b/ct.nii.gz`` and ``a__b/ct.nii.gz``) stop the run before
any work, naming both. Shards are written atomically (:mod:`xraysyn.data.shards`); the
preprocessing settings (:data:`SETTINGS_KEY` in the shard's ``meta``) are stored in each.

Resume, one rule: before any work every existing shard of the run is read back.

* It reads, has this xraysyn's format version and stores the run's settings and input: kept
  ("resumed").
* It cannot be read (0 bytes, truncated, not a shard): it holds nothing worth keeping and is
  prepared again ("redone").
* It was made with other settings, another format version or from another input, or a shard in
  ``OUT_DIR`` belongs to no input of the tree: the run stops before any work (the folder would mix
  two runs), saying to choose a new folder or to pass ``overwrite=True`` (``--overwrite``), which
  prepares those inputs again and removes the shards of no input.

Refused before any work as well: ``OUT_DIR`` equal to or inside the input tree, and a tree with no
CT input at all (:class:`NoUsableInputError`, naming what was found instead).

Large collections: ``workers`` processes prepare CTs in parallel (the results and the summary are
identical whatever the number: every CT is prepared on its own, the summary lists are sorted);
``shard=(i, n)`` prepares only every n-th input of the sorted list, starting at the i-th (1-based),
so n array jobs on one tree split it without overlap; each writes its own summary
(:func:`summary_name`).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
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
from xraysyn.data.shards import SHARD_FORMAT_VERSION, SHARD_SUFFIX, read_shard, write_shard
from xraysyn.outputs import OutputExistsError

__all__ = [
    "PREPROCESS_VERSION",
    "SETTINGS_KEY",
    "STRUCTURES_TABLE_NAME",
    "SUMMARY_NAME",
    "CTInput",
    "NoUsableInputError",
    "PrepareReport",
    "TreeScan",
    "bone_for",
    "default_workers",
    "find_ct_inputs",
    "output_names",
    "parse_shard",
    "prepare_ct_tree",
    "scan_ct_tree",
    "summary_name",
]

SUMMARY_NAME = "prepare_summary.json"
STRUCTURES_TABLE_NAME = "structures.csv"
#: Key of the preprocessing settings inside a shard's ``meta``.
SETTINGS_KEY = "prepare_settings"
#: Version of the preprocessing method; raised whenever the same settings give other voxels
#: (2: body mask on a ~2 mm grid, issue 25). Stored in the settings, so resume tells them apart.
PREPROCESS_VERSION = 2
_LABEL_STEMS = ("mask", "labels", "label", "seg", "segmentation")
_LABEL_SUFFIXES = tuple(f"_{stem}" for stem in _LABEL_STEMS)
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_DICOM_SUFFIX = ".dcm"
_NAME_SEPARATOR = "__"
#: Examples named in a refusal message (the rest are counted).
_EXAMPLES_SHOWN = 3

# reasons for files looked at and not used
UNUSED_HIDDEN = "hidden file"
UNUSED_TEXT = "annotation or text file"
UNUSED_DICOMDIR = "DICOMDIR index"
UNUSED_BAD_DICOM = "'.dcm' file that is not readable as DICOM"
UNUSED_NOT_CT = "not a CT file (neither DICOM nor a volume format)"
UNUSED_LABELS = "label map with no CT to pair with"


class NoUsableInputError(ValueError):
    """The input tree holds no CT input (the message says what was found instead)."""


@dataclass(frozen=True)
class CTInput:
    """One CT to prepare: ``path`` (series folder or volume file), optional paired ``labels`` file."""

    path: Path
    labels: Path | None = None


@dataclass
class TreeScan:
    """What :func:`scan_ct_tree` found: ``inputs`` (sorted), every file not used with its reason
    (``unused``: ``{"path", "reason"}`` dicts, paths relative to the root), ``files_seen``."""

    inputs: list[CTInput]
    unused: list[dict[str, str]]
    files_seen: int


@dataclass
class PrepareReport:
    """What a batch did: lists of ``{"input", "output"}`` / ``{"input", "reason"}`` dicts.

    ``skipped`` holds inputs not prepared because of the slice-spacing rule and inputs whose shard
    already exists and was verified ("resumed"); ``processed`` entries of redone shards carry a
    ``"redone"`` reason. ``unused_files`` lists every file looked at and not used, ``unused_counts``
    counts them by reason; ``shard`` is ``"i/n"``; ``inputs_total`` counts the inputs of the whole
    tree, ``inputs_in_shard`` those of this shard. Lists are sorted by input.
    """

    processed: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    unused_files: list[dict[str, str]] = field(default_factory=list)
    unused_counts: dict[str, int] = field(default_factory=dict)
    files_seen: int = 0
    shard: str = "1/1"
    inputs_total: int = 0
    inputs_in_shard: int = 0
    removed: list[str] = field(default_factory=list)

    @property
    def resumed(self) -> list[dict[str, str]]:
        """The skipped entries whose shard existed and was kept."""
        return [row for row in self.skipped if row.get("resumed")]

    @property
    def usable(self) -> int:
        """Inputs of this run that have a shard now (prepared or resumed)."""
        return len(self.processed) + len(self.resumed)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_label_name(path: Path) -> bool:
    stem = _stem(path).lower()
    return stem in _LABEL_STEMS or stem.endswith(_LABEL_SUFFIXES)


def _unused_reason(folder: Path, name: str) -> str | None:
    """Why a file is never part of any input whatever its folder holds, or ``None``."""
    if name.startswith("."):
        return UNUSED_HIDDEN
    if name.upper() == "DICOMDIR":
        return UNUSED_DICOMDIR
    if name.lower().endswith(IGNORED_SUFFIXES):
        return UNUSED_TEXT
    return None


def scan_ct_tree(root: str | os.PathLike) -> TreeScan:
    """Every CT input under ``root`` and every file looked at and not used (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"input folder {str(root)!r} does not exist or is not a folder")
    inputs: list[CTInput] = []
    unused: list[dict[str, str]] = []
    files_seen = 0
    for folder_name, subfolders, files in os.walk(root):
        subfolders.sort()
        folder = Path(folder_name)
        files = sorted(files)
        files_seen += len(files)
        other: list[str] = []
        for name in files:
            reason = _unused_reason(folder, name)
            if reason is not None:
                if not (name == STRUCTURES_TABLE_NAME and any(_is_label_name(Path(f)) for f in files)):
                    unused.append({"path": str((folder / name).relative_to(root)), "reason": reason})
            elif not volume_format(name):
                other.append(name)
        # a folder is a DICOM series when one of its files is DICOM; all its other files belong to it
        dicom = False
        for name in other:
            if is_dicom_file(folder / name):
                dicom = True
                break
        if dicom:
            inputs.append(CTInput(folder))
        else:
            for name in other:
                reason = UNUSED_BAD_DICOM if name.lower().endswith(_DICOM_SUFFIX) else UNUSED_NOT_CT
                unused.append({"path": str((folder / name).relative_to(root)), "reason": reason})
        volumes = [folder / f for f in files if volume_format(f) and not f.startswith(".")]
        cts = [p for p in volumes if not _is_label_name(p)]
        label_maps = [p for p in volumes if _is_label_name(p)]
        paired_maps: set[Path] = set()
        for ct in cts:
            paired = [p for p in label_maps if _stem(p).lower().startswith(_stem(ct).lower() + "_")]
            if not paired and len(cts) == 1:
                paired = [p for p in label_maps if _stem(p).lower() in _LABEL_STEMS]
            inputs.append(CTInput(ct, paired[0] if paired else None))
            paired_maps.update(paired[:1])
        for label_map in label_maps:
            if label_map not in paired_maps:
                unused.append({"path": str(label_map.relative_to(root)), "reason": UNUSED_LABELS})
    return TreeScan(sorted(inputs, key=lambda item: str(item.path)), sorted(unused, key=lambda r: r["path"]), files_seen)


def find_ct_inputs(root: str | os.PathLike) -> list[CTInput]:
    """All CT inputs under ``root`` (sorted), with their paired label maps (see the module docstring)."""
    return scan_ct_tree(root).inputs


def _paired_bone(ct: CTVolume, item: CTInput) -> tuple[np.ndarray | None, str]:
    """The bone mask given by the paired label map, or ``(None, "threshold")``."""
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
    return None, "threshold"


def bone_for(ct: CTVolume, item: CTInput) -> tuple[np.ndarray, str]:
    """The ``(I, J, K)`` bool bone mask of ``ct`` and the method used (``labels``, ``mask file``, ``threshold``)."""
    bone, method = _paired_bone(ct, item)
    if bone is None:
        bone = bone_mask_from_hu(ct.hu, ct.spacing_mm)
    return bone, method


def _relative_name(root: Path, item: CTInput) -> str:
    return str(item.path.relative_to(root)) if item.path != root else "."


def _output_name(root: Path, item: CTInput) -> str:
    relative = item.path.relative_to(root)
    parts = list(relative.parts[:-1]) + [_stem(relative)] if relative.parts else [root.name]
    return _NAME_SEPARATOR.join(parts) + SHARD_SUFFIX


def output_names(root: str | os.PathLike, inputs: Sequence[CTInput]) -> list[str]:
    """The shard file name of each input (see the module docstring).

    Raises:
        ValueError: two inputs would get the same name (compared without case), naming both.
    """
    root = Path(root)
    names = [_output_name(root, item) for item in inputs]
    first_by_key: dict[str, int] = {}
    for index, name in enumerate(names):
        key = name.casefold()
        if key in first_by_key:
            other = inputs[first_by_key[key]]
            raise ValueError(
                f"inputs {_relative_name(root, other)!r} and {_relative_name(root, inputs[index])!r} would both be "
                f"written to {names[first_by_key[key]]!r}; rename or move one of them, or prepare them into "
                "separate output folders"
            )
        first_by_key[key] = index
    return names


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``1 <= i <= n`` (the i-th of n array jobs, 1-based)."""
    try:
        index_text, count_text = str(text).split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ValueError(f"--shard must be i/n (e.g. 3/10), got {text!r}") from None
    if count < 1 or not 1 <= index <= count:
        raise ValueError(f"--shard i/n needs 1 <= i <= n, got {text!r}")
    return index, count


def summary_name(shard: tuple[int, int] = (1, 1)) -> str:
    """``prepare_summary.json``, or ``prepare_summary.shard-003-of-010.json`` for job 3 of 10."""
    index, count = shard
    if count == 1:
        return SUMMARY_NAME
    width = len(str(count))
    return f"prepare_summary.shard-{index:0{width}d}-of-{count:0{width}d}.json"


def default_workers() -> int:
    """The CPU cores this process may use (``os.sched_getaffinity`` where available)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8"))


# ------------------------------------------------------------------------------ per-input work
@dataclass(frozen=True)
class _Task:
    root: Path
    item: CTInput
    target: Path
    settings: dict[str, Any]


def _verify_shard(task: _Task) -> tuple[str, str]:
    """``("ok" | "unreadable" | "mismatch", reason)`` for an existing shard of ``task``."""
    name = _relative_name(task.root, task.item)
    try:
        with np.load(task.target, allow_pickle=False) as data:
            version = int(data["format_version"]) if "format_version" in data.files else None
    except Exception as exc:  # 0 bytes, truncated, not a zip: nothing worth keeping
        return "unreadable", f"{type(exc).__name__}: {exc}".strip()
    if version is None:
        return "unreadable", "not an xraysyn shard (no format_version)"
    if version != SHARD_FORMAT_VERSION:
        return "mismatch", f"shard format version {version}, this xraysyn writes {SHARD_FORMAT_VERSION}"
    try:
        meta = read_shard(task.target).meta
    except ValueError as exc:
        return "unreadable", str(exc)
    stored = meta.get(SETTINGS_KEY)
    if meta.get("source") != name:
        return "mismatch", f"made from input {meta.get('source')!r}, not {name!r}"
    if stored != task.settings:
        if not isinstance(stored, dict):
            return "mismatch", "made by an older xraysyn (no stored settings)"
        changed = ", ".join(f"{key} {stored.get(key)!r} -> {value!r}" for key, value in task.settings.items()
                            if stored.get(key) != value)
        return "mismatch", f"made with other settings ({changed})"
    return "ok", ""


def _prepare_one(task: _Task) -> dict[str, str]:
    """Prepare one input; never raises (the failure is the returned row)."""
    name = _relative_name(task.root, task.item)
    settings = task.settings
    try:
        ct = load_ct(task.item.path)
        check = check_slice_spacing(ct, settings["max_spacing_mm"])
        if not check.ok:
            return {"status": "skipped", "input": name, "reason": check.reason}
        bone, method = _paired_bone(ct, task.item)
        cube, bone_cube = preprocess_ct(ct, bone, size=settings["size"], mode=settings["mode"])
        meta = {
            "source": name,
            "source_format": ct.meta.get("format"),
            "original_shape": list(ct.shape),
            "original_spacing_mm": list(ct.spacing_mm),
            "slice_thickness_mm": ct.meta.get("slice_thickness_mm"),
            "bone_mask_method": method,
            "labels": str(task.item.labels.relative_to(task.root)) if task.item.labels is not None else None,
            "resample_mode": settings["mode"],
            "cube_size": settings["size"],
            SETTINGS_KEY: settings,
        }
        write_shard(task.target, cube.hu, bone_cube, cube.world_from_voxel, meta)
        return {"status": "processed", "input": name, "output": task.target.name}
    except (ValueError, OSError) as exc:
        return {"status": "failed", "input": name, "reason": str(exc)}
    except MemoryError:
        return {"status": "failed", "input": name, "reason": "out of memory; use fewer --workers"}
    except Exception as exc:  # one broken input must not stop a long batch
        return {"status": "failed", "input": name, "reason": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=3)}


class _Counted:
    """An iterator with a length (so that progress bars show a total)."""

    def __init__(self, iterator: Iterator, length: int):
        self._iterator, self._length = iterator, length

    def __iter__(self):
        return self._iterator

    def __len__(self) -> int:
        return self._length


def _process_context():
    """Worker processes start from a fresh server process that has imported this module once
    (``forkserver``; ``spawn`` where that does not exist): no fork of a process that may hold
    threads, and no import per worker."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")


def _run_all(function: Callable, tasks: list[_Task], workers: int, progress=None, *, threads: bool = False) -> list:
    """``function`` over ``tasks`` in ``workers`` processes (threads if ``threads``; this process
    when one worker or one task suffices); results in task order."""
    if not tasks:
        return []
    workers = min(workers, len(tasks))
    if workers == 1:
        results = (function(task) for task in tasks)
        if progress is not None:
            results = progress(_Counted(iter(results), len(tasks)))
        return list(results)
    pool = ThreadPoolExecutor(max_workers=workers) if threads else ProcessPoolExecutor(
        max_workers=workers, mp_context=_process_context())
    with pool:
        results = pool.map(function, tasks)
        if progress is not None:
            results = progress(_Counted(iter(results), len(tasks)))
        return list(results)


def _example_list(rows: list[tuple[str, str]]) -> str:
    shown = "; ".join(f"{name}: {reason}" for name, reason in rows[:_EXAMPLES_SHOWN])
    more = f"; and {len(rows) - _EXAMPLES_SHOWN} more" if len(rows) > _EXAMPLES_SHOWN else ""
    return shown + more


def _check_folders(root: Path, out: Path) -> None:
    root_resolved, out_resolved = root.resolve(), out.resolve()
    if out_resolved == root_resolved:
        raise ValueError(f"output folder {str(out)!r} is the input folder; choose an output folder outside "
                         f"{str(root)!r}")
    if root_resolved in out_resolved.parents:
        raise ValueError(f"output folder {str(out)!r} is inside the input folder {str(root)!r} (it would be read "
                         "as input); choose an output folder outside it")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output folder {str(out)!r} exists and is not a folder")


def _no_input_message(root: Path, scan: TreeScan) -> str:
    if scan.files_seen == 0:
        return f"no CT input under {str(root)!r}: the folder tree holds no files"
    counts = Counter(row["reason"] for row in scan.unused)
    detail = ", ".join(f"{count} {reason}" for reason, count in sorted(counts.items()))
    return (f"no CT input under {str(root)!r}: {scan.files_seen} file(s) looked at, none usable ({detail}); "
            "expected DICOM series folders or .nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd files")


def prepare_ct_tree(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    size: int = DEFAULT_CUBE_SIZE,
    mode: str = "stretch",
    max_spacing_mm: float = MAX_SLICE_SPACING_MM,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
    workers: int = 1,
    shard: tuple[int, int] = (1, 1),
    overwrite: bool = False,
) -> PrepareReport:
    """Prepare every CT under ``input_dir`` into shards in ``output_dir``; write the summary JSON.

    Args:
        input_dir: folder tree with DICOM series folders and volume files.
        output_dir: where shards (``size``³ HU int16 + bone mask) and the summary go; created.
            Must not be, or lie inside, ``input_dir``.
        size: voxels per side of the output cube.
        mode: ``"stretch"`` (paper) or ``"isotropic"``, see :func:`~xraysyn.data.preprocess.resample_to_cube`.
        max_spacing_mm: CTs with coarser slices (mm) are skipped (reported).
        progress: wraps the iterable of finished inputs (e.g. ``tqdm``; it has a ``len``).
        workers: processes preparing CTs at the same time (1: this process); results do not depend on it.
        shard: ``(i, n)``: prepare only the i-th of n disjoint parts of the sorted input list (1-based).
        overwrite: prepare again the inputs whose shards were made with other settings and remove
            the shards of no input, instead of refusing the run (see the module docstring).

    Returns:
        :class:`PrepareReport`; one input failing never stops the batch.

    Raises:
        ValueError: bad settings, output inside the input tree, two inputs with one output name,
            a folder that would mix runs (:class:`~xraysyn.outputs.OutputExistsError`), no CT
            input (:class:`NoUsableInputError`); raised before any shard or summary is written.
    """
    root = Path(input_dir)
    out = Path(output_dir)
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"size must be an integer >= 2, got {size!r}")
    if mode not in ("stretch", "isotropic"):
        raise ValueError(f"mode must be 'stretch' or 'isotropic', got {mode!r}")
    if not isinstance(max_spacing_mm, (int, float)) or not np.isfinite(max_spacing_mm) or max_spacing_mm <= 0:
        raise ValueError(f"max_spacing_mm must be a finite number of mm > 0, got {max_spacing_mm!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    shard_index, shard_count = parse_shard(f"{shard[0]}/{shard[1]}")
    scan = scan_ct_tree(root)
    _check_folders(root, out)
    if not scan.inputs:
        raise NoUsableInputError(_no_input_message(root, scan))
    names = output_names(root, scan.inputs)
    settings = {"size": size, "mode": mode, "max_spacing_mm": float(max_spacing_mm),
                "preprocess_version": PREPROCESS_VERSION}
    tasks = [_Task(root, item, out / name, settings)
             for position, (item, name) in enumerate(zip(scan.inputs, names))
             if position % shard_count == shard_index - 1]

    # resume: read back every existing shard of this part, and look for shards of no input
    existing = [task for task in tasks if task.target.exists()]
    verdicts = dict(zip((task.target for task in existing), _run_all(_verify_shard, existing, workers, threads=True)))
    mismatched = [(task, verdicts[task.target][1]) for task in existing if verdicts[task.target][0] == "mismatch"]
    expected = {name.casefold() for name in names}
    stale = sorted(p for p in out.rglob(f"*{SHARD_SUFFIX}")
                   if p.is_file() and not p.name.startswith(".") and
                   (p.parent != out or p.name.casefold() not in expected)) if out.is_dir() else []
    if (mismatched or stale) and not overwrite:
        problems = [(task.target.name, reason) for task, reason in mismatched]
        problems += [(str(p.relative_to(out)), "a shard of no input in this tree") for p in stale]
        raise OutputExistsError(
            f"output folder {str(out)!r} holds {len(problems)} shard(s) this run would mix with "
            f"({_example_list(problems)}); choose a new output folder, or pass --overwrite to prepare "
            "those inputs again with these settings and remove the shards of no input"
        )

    report = PrepareReport(
        settings={**settings, "input_dir": str(root), "output_dir": str(out)},
        unused_files=scan.unused, unused_counts=dict(sorted(Counter(r["reason"] for r in scan.unused).items())),
        files_seen=scan.files_seen, shard=f"{shard_index}/{shard_count}",
        inputs_total=len(scan.inputs), inputs_in_shard=len(tasks),
    )
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for path in stale:
            path.unlink(missing_ok=True)
            report.removed.append(str(path.relative_to(out)))
    todo, redone = [], {}
    for task in tasks:
        verdict, reason = verdicts.get(task.target, ("absent", ""))
        if verdict == "ok":
            report.skipped.append({"input": _relative_name(root, task.item), "resumed": "yes",
                                   "reason": f"output {task.target.name} exists (resumed: settings match)"})
            continue
        if verdict == "unreadable":
            redone[task.target.name] = f"redone: the earlier shard was unreadable ({reason})"
        elif verdict == "mismatch":
            redone[task.target.name] = f"redone: the earlier shard was {reason}"
        todo.append(task)
    for task, row in zip(todo, _run_all(_prepare_one, todo, workers, progress)):
        status = row.pop("status")
        if task.target.name in redone:
            if status == "processed":
                row["reason"] = redone[task.target.name]
            else:  # an earlier shard that is not this run's result must not stay beside it
                task.target.unlink(missing_ok=True)
                report.removed.append(task.target.name)
        getattr(report, status).append(row)
    report.removed.sort()
    for rows in (report.processed, report.skipped, report.failed):
        rows.sort(key=lambda row: row["input"])
    _write_json_atomic(out / summary_name((shard_index, shard_count)), asdict(report))
    return report
