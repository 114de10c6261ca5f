"""CT preprocessing as in XraySyn (Peng et al. 2021, "Dataset": LIDC-IDRI volumes with a
between-slices resolution above 2.5 mm are discarded, the rest tightly cropped to remove empty
space and reshaped to 128 x 128 x 128).

Steps, each a public function:

1. :func:`check_slice_spacing` — keep a CT only when its coarsest voxel spacing and its DICOM
   ``SliceThickness`` (when known) are at most :data:`MAX_SLICE_SPACING_MM`; otherwise return the reason.
2. :func:`body_mask` / :func:`crop_to_body` — the body is the largest connected component of
   ``hu > BODY_THRESHOLD_HU`` after an opening that cuts thin bridges to the table; lungs and airways are
   filled in slice by slice. Voxels outside the body (air, table, cushions) are set to :data:`AIR_HU`
   and the array is cropped to the body's bounding box.
3. :func:`resample_to_cube` — resample to ``size``³ voxels. ``mode="stretch"`` (the paper's
   reshaping) keeps exactly the physical box of the input, with possibly anisotropic voxels;
   ``mode="isotropic"`` uses cubic voxels and a cube that contains the input box, centred on it,
   padded with air. Downsampling is anti-aliased with a Gaussian of
   ``sigma = (factor - 1) / 2`` input voxels (the rule of ``skimage.transform.resize``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from xraysyn.data.ct_io import CTVolume

__all__ = [
    "AIR_HU",
    "BODY_OPENING_RADIUS_MM",
    "BODY_THRESHOLD_HU",
    "DEFAULT_CUBE_SIZE",
    "MAX_SLICE_SPACING_MM",
    "SpacingCheck",
    "body_mask",
    "check_slice_spacing",
    "crop_to_body",
    "cube_grid",
    "preprocess_ct",
    "resample_to_cube",
    "resample_to_grid",
]

#: HU of air (by definition of the Hounsfield scale).
AIR_HU = -1000.0
#: Voxels above this HU are candidate body (fat is about -100 HU, lung about -850 HU, air -1000 HU).
BODY_THRESHOLD_HU = -500.0
#: Opening radius (mm) that separates the body from the table and from thin cushions or cables.
BODY_OPENING_RADIUS_MM = 3.0
#: The paper discards LIDC-IDRI volumes with a between-slices resolution above 2.5 mm.
MAX_SLICE_SPACING_MM = 2.5
#: The paper's cube size (voxels per side).
DEFAULT_CUBE_SIZE = 128
#: Slack (mm) on the spacing limit so that a nominal 2.5 mm series stored as 2.5000001 is kept.
_SPACING_SLACK_MM = 1e-3

ResampleMode = Literal["stretch", "isotropic"]


@dataclass(frozen=True)
class SpacingCheck:
    """Result of :func:`check_slice_spacing`: ``ok`` and, when not ok, the ``reason``."""

    ok: bool
    reason: str = ""


def check_slice_spacing(ct: CTVolume, max_spacing_mm: float = MAX_SLICE_SPACING_MM) -> SpacingCheck:
    """Whether a CT is fine enough for training (the paper's 2.5 mm rule).

    Checks the largest voxel spacing of the affine (all formats) and the DICOM ``SliceThickness``
    stored in ``ct.meta["slice_thickness_mm"]`` when present.
    """
    spacing = max(ct.spacing_mm)
    if spacing > max_spacing_mm + _SPACING_SLACK_MM:
        return SpacingCheck(False, f"slice spacing {spacing:.3g} mm > {max_spacing_mm:g} mm")
    thickness = ct.meta.get("slice_thickness_mm")
    if thickness is not None and thickness > max_spacing_mm + _SPACING_SLACK_MM:
        return SpacingCheck(False, f"slice thickness {thickness:.3g} mm > {max_spacing_mm:g} mm")
    return SpacingCheck(True)


def _ball(radius_mm: float, spacing_mm: Sequence[float]) -> np.ndarray:
    half = [max(0, int(np.floor(radius_mm / s))) for s in spacing_mm]
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing_mm)], indexing="ij")
    return sum(g**2 for g in grids) <= radius_mm**2 + 1e-9


def _superior_axis(world_from_voxel: np.ndarray) -> int:
    """The voxel axis most aligned with the world superior (z) direction."""
    directions = world_from_voxel[:3, :3] / np.linalg.norm(world_from_voxel[:3, :3], axis=0)
    return int(np.argmax(np.abs(directions[2])))


def body_mask(
    hu: np.ndarray,
    world_from_voxel: np.ndarray,
    *,
    threshold_hu: float = BODY_THRESHOLD_HU,
    opening_radius_mm: float = BODY_OPENING_RADIUS_MM,
) -> np.ndarray:
    """The patient's body: ``(I, J, K)`` bool mask (see the module docstring).

    Args:
        hu: ``(I, J, K)`` CT in HU.
        world_from_voxel: ``(4, 4)`` affine (gives the voxel spacing and the axial slice axis).
        threshold_hu: body voxels are above this HU.
        opening_radius_mm: opening ball radius in mm (0 disables it).
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"hu must be a 3-D array (I, J, K), got shape {hu.shape}")
    spacing = np.linalg.norm(np.asarray(world_from_voxel, dtype=np.float64)[:3, :3], axis=0)
    candidate = hu > threshold_hu
    if opening_radius_mm > 0:
        ball = _ball(opening_radius_mm, spacing)
        if ball.size > 1:
            # replicate the borders: a body cut by the scan range must not be rounded off there
            pad = [(h, h) for h in np.array(ball.shape) // 2]
            opened = ndimage.binary_opening(np.pad(candidate, pad, mode="edge"), structure=ball)
            candidate = opened[tuple(slice(a, a + n) for (a, _), n in zip(pad, candidate.shape))]
    components, count = ndimage.label(candidate)
    if count == 0:
        raise ValueError(f"no voxel above {threshold_hu} HU after the opening: the CT contains no body")
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    body = components == int(np.argmax(sizes))
    axial = _superior_axis(np.asarray(world_from_voxel, dtype=np.float64))
    filled = np.moveaxis(body, axial, 0).copy()
    for index in range(filled.shape[0]):
        filled[index] = ndimage.binary_fill_holes(filled[index])
    return np.moveaxis(filled, 0, axial)


def _translate_affine(world_from_voxel: np.ndarray, offset_voxels: Sequence[float]) -> np.ndarray:
    shift = np.eye(4)
    shift[:3, 3] = offset_voxels
    return world_from_voxel @ shift


def _bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last index of ``mask`` along each axis (one pass per axis, no coordinate list)."""
    first, last = [], []
    for axis in range(mask.ndim):
        profile = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if profile.size == 0:
            raise ValueError("the body mask is empty")
        first.append(profile[0])
        last.append(profile[-1])
    return np.array(first), np.array(last)


def crop_to_body(
    ct: CTVolume, extra: Sequence[np.ndarray] = (), *, margin_mm: float = 0.0, mask: np.ndarray | None = None
) -> tuple[CTVolume, list[np.ndarray]]:
    """Set everything outside the body to air and crop to the body's bounding box.

    Args:
        ct: the CT.
        extra: ``(I, J, K)`` arrays (bone mask, label map) cropped the same way, not altered otherwise.
        margin_mm: extra margin around the bounding box (clamped to the array).
        mask: a precomputed body mask; default :func:`body_mask`.

    Returns:
        ``(cropped CT, cropped extras)``; the cropped affine places every kept voxel where it was.
    """
    for index, array in enumerate(extra):
        if np.shape(array) != ct.shape:
            raise ValueError(f"extra[{index}] has shape {np.shape(array)}, expected the CT shape {ct.shape}")
    if mask is None:
        mask = body_mask(ct.hu, ct.world_from_voxel)
    first, last = _bounding_box(mask)
    spacing = np.array(ct.spacing_mm)
    margin = np.ceil(margin_mm / spacing).astype(int)
    lower = np.maximum(first - margin, 0)
    upper = np.minimum(last + 1 + margin, np.array(ct.shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lower, upper))
    hu = np.where(mask, ct.hu, np.float32(AIR_HU)).astype(np.float32)[box]
    meta = dict(ct.meta, crop_lower_voxel=[int(v) for v in lower], crop_upper_voxel=[int(v) for v in upper])
    cropped = CTVolume(hu=np.ascontiguousarray(hu), world_from_voxel=_translate_affine(ct.world_from_voxel, lower), meta=meta)
    return cropped, [np.ascontiguousarray(np.asarray(a)[box]) for a in extra]


def resample_to_grid(
    array: np.ndarray,
    world_from_voxel: np.ndarray,
    out_shape: Sequence[int],
    out_world_from_voxel: np.ndarray,
    *,
    fill_value: float = AIR_HU,
    order: int = 1,
    anti_alias: bool = True,
    chunk_voxels: int = 1 << 21,
) -> np.ndarray:
    """Resample ``array`` onto another voxel grid in the same world.

    Args:
        array: ``(I, J, K)`` values on the grid ``world_from_voxel``.
        world_from_voxel: ``(4, 4)`` affine of ``array``.
        out_shape: ``(I', J', K')`` of the result.
        out_world_from_voxel: ``(4, 4)`` affine of the result.
        fill_value: value of output voxels whose centre lies outside the input's physical box
            (the box spans half a voxel beyond the outer voxel centres; within it, edge values are repeated).
        order: spline order, 1 = trilinear, 0 = nearest (for label maps).
        anti_alias: Gaussian prefilter when the output is coarser than the input.
        chunk_voxels: output voxels interpolated at a time (bounds memory).

    Returns:
        ``(I', J', K')`` float32 array (float64 when the input is float64).
    """
    array = np.asarray(array)
    out_shape = tuple(int(n) for n in out_shape)
    input_from_output = np.linalg.inv(np.asarray(world_from_voxel, dtype=np.float64)) @ np.asarray(
        out_world_from_voxel, dtype=np.float64
    )
    dtype = np.float64 if array.dtype == np.float64 else np.float32
    source = array.astype(dtype, copy=False)
    if anti_alias and order > 0:
        # input voxels per output voxel along each input axis
        factors = np.linalg.norm(input_from_output[:3, :3], axis=1)
        sigmas = np.maximum((factors - 1.0) / 2.0, 0.0)
        if np.any(sigmas > 0):
            source = ndimage.gaussian_filter(source, sigma=sigmas, mode="nearest")
    upper = np.array(array.shape, dtype=np.float64) - 1.0
    result = np.empty(int(np.prod(out_shape)), dtype=dtype)
    flat_total = result.size
    for start in range(0, flat_total, chunk_voxels):
        stop = min(start + chunk_voxels, flat_total)
        out_index = np.stack(np.unravel_index(np.arange(start, stop), out_shape)).astype(np.float64)
        coords = input_from_output[:3, :3] @ out_index + input_from_output[:3, 3:4]
        inside = np.all((coords >= -0.5 - 1e-6) & (coords <= upper[:, None] + 0.5 + 1e-6), axis=0)
        coords = np.clip(coords, 0.0, upper[:, None])
        values = ndimage.map_coordinates(source, coords, order=order, mode="nearest", prefilter=False)
        result[start:stop] = np.where(inside, values, fill_value)
    return result.reshape(out_shape)


def cube_grid(
    shape: Sequence[int], world_from_voxel: np.ndarray, size: int = DEFAULT_CUBE_SIZE, mode: ResampleMode = "stretch"
) -> np.ndarray:
    """The ``(4, 4)`` affine of a ``size``³ grid covering the physical box of a ``shape`` grid.

    ``stretch``: the output box equals the input box (outer voxel faces coincide).
    ``isotropic``: cubic voxels of side ``max extent / size``; the output cube is centred on the
    input box and contains it.
    """
    if not isinstance(size, (int, np.integer)) or size < 2:
        raise ValueError(f"size must be an integer >= 2 voxels, got {size!r}")
    if mode not in ("stretch", "isotropic"):
        raise ValueError(f"mode must be 'stretch' or 'isotropic', got {mode!r}")
    shape_arr = np.asarray(shape, dtype=np.float64)
    world_from_voxel = np.asarray(world_from_voxel, dtype=np.float64)
    if mode == "stretch":
        scale = shape_arr / size  # input voxels per output voxel
    else:
        spacing = np.linalg.norm(world_from_voxel[:3, :3], axis=0)
        side_mm = float(np.max(shape_arr * spacing))
        scale = (side_mm / size) / spacing
    # output index -1/2 sits on the input box centre minus half the output extent
    centre = (shape_arr - 1.0) / 2.0
    offset = centre - scale * (size - 1) / 2.0
    input_from_output = np.eye(4)
    input_from_output[:3, :3] = np.diag(scale)
    input_from_output[:3, 3] = offset
    return world_from_voxel @ input_from_output


def resample_to_cube(
    ct: CTVolume,
    size: int = DEFAULT_CUBE_SIZE,
    mode: ResampleMode = "stretch",
    masks: Sequence[np.ndarray] = (),
) -> tuple[CTVolume, list[np.ndarray]]:
    """Resample a CT (trilinear, anti-aliased) and masks (trilinear of the 0/1 mask, then > 0.5) to ``size``³.

    Returns:
        ``(CT of shape (size, size, size), [bool masks of the same shape])``; the affine comes from
        :func:`cube_grid`, so the physical extent of the input is kept.
    """
    out_affine = cube_grid(ct.shape, ct.world_from_voxel, size, mode)
    out_shape = (size, size, size)
    hu = resample_to_grid(ct.hu, ct.world_from_voxel, out_shape, out_affine, fill_value=AIR_HU)
    resampled_masks = []
    for index, mask in enumerate(masks):
        if np.shape(mask) != ct.shape:
            raise ValueError(f"masks[{index}] has shape {np.shape(mask)}, expected the CT shape {ct.shape}")
        fraction = resample_to_grid(np.asarray(mask, dtype=np.float32), ct.world_from_voxel, out_shape, out_affine, fill_value=0.0)
        resampled_masks.append(fraction > 0.5)
    meta = dict(ct.meta, resample_mode=mode, cube_size=int(size))
    return CTVolume(hu=hu.astype(np.float32), world_from_voxel=out_affine, meta=meta), resampled_masks


def preprocess_ct(
    ct: CTVolume,
    bone: np.ndarray | None = None,
    *,
    size: int = DEFAULT_CUBE_SIZE,
    mode: ResampleMode = "stretch",
) -> tuple[CTVolume, np.ndarray]:
    """Crop to the body and resample to ``size``³ (the slice-spacing check is the caller's choice).

    Args:
        ct: CT in HU.
        bone: ``(I, J, K)`` bone mask on the CT grid; default: :func:`xraysyn.data.bone_mask.bone_mask_from_hu`.
        size: output voxels per side.
        mode: ``"stretch"`` (paper) or ``"isotropic"``.

    Returns:
        ``(CT (size, size, size) in HU, bool bone mask (size, size, size))``.
    """
    if bone is None:
        from xraysyn.data.bone_mask import bone_mask_from_hu

        bone = bone_mask_from_hu(ct.hu, ct.spacing_mm)
    if np.shape(bone) != ct.shape:
        raise ValueError(f"bone has shape {np.shape(bone)}, expected the CT shape {ct.shape}")
    body = body_mask(ct.hu, ct.world_from_voxel)
    cropped, (bone_cropped, body_cropped) = crop_to_body(ct, [np.asarray(bone, dtype=bool), body], mask=body)
    # bone outside the body (e.g. a dense table) is not the patient's bone
    cube, (bone_cube,) = resample_to_cube(cropped, size, mode, [bone_cropped & body_cropped])
    return cube, bone_cube
