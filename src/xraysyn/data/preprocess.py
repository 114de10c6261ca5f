"""CT preprocessing as in XraySyn (Peng et al. 2021, "Dataset": LIDC-IDRI volumes with a
between-slices resolution above 2.5 mm are discarded, the rest tightly cropped to remove empty
space and reshaped to 128 x 128 x 128).

Steps, each a public function:

1. :func:`check_slice_spacing` — keep a CT only when its coarsest voxel spacing and its DICOM
   ``SliceThickness`` (when known) are at most :data:`MAX_SLICE_SPACING_MM`; otherwise return the reason.
2. :func:`body_mask` / :func:`crop_to_body` — the body is the largest connected component of
   ``hu > BODY_THRESHOLD_HU`` after an opening that cuts thin bridges to the table; lungs and airways are
   filled in slice by slice. The morphology runs on a grid of about :data:`BODY_COARSE_SPACING_MM`
   (block majority of the threshold), and the body surface is then taken from the full-resolution
   threshold within one coarse voxel of the coarse surface: on a 512 x 512 x 133 chest CT this is
   ~20x faster than the opening at full resolution, with a Dice of >= 0.99 against it
   (``benchmarks/prepare_ct.py``). Voxels outside the body (air, table, cushions) are set to
   :data:`AIR_HU` and the array is cropped to the body's bounding box.
3. :func:`resample_to_cube` — resample to ``size``³ voxels. ``mode="stretch"`` (the paper's
   reshaping) keeps exactly the physical box of the input, with possibly anisotropic voxels;
   ``mode="isotropic"`` uses cubic voxels and a cube that contains the input box, centred on it,
   padded with air. Downsampling is anti-aliased with a Gaussian of
   ``sigma = (factor - 1) / 2`` input voxels (the rule of ``skimage.transform.resize``). When the
   output axes run along the input axes (always the case for the cube), filtering and linear
   interpolation are done one axis at a time, each on the already reduced array.
4. :func:`preprocess_ct` — steps 2 and 3; without a given bone mask, the threshold bone mask
   (:func:`~xraysyn.data.bone_mask.bone_mask_from_hu`) is computed on the cropped CT.
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
    "BODY_COARSE_SPACING_MM",
    "BODY_OPENING_RADIUS_MM",
    "BODY_THRESHOLD_HU",
    "DEFAULT_CUBE_SIZE",
    "MAX_SLICE_SPACING_MM",
    "SpacingCheck",
    "body_mask",
    "check_slice_spacing",
    "fill_holes_in_slices",
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
#: Voxel size (mm) of the grid on which the body mask's opening, labelling and filling run
#: (blocks of whole input voxels, at least one per axis); 0 runs them at full resolution.
BODY_COARSE_SPACING_MM = 2.0
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


def fill_holes_in_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    """Fill the holes of every 2-D slice of a ``(I, J, K)`` bool mask taken along ``axis``.

    Equal to ``scipy.ndimage.binary_fill_holes`` on each slice (background 4-connected within the
    slice, holes = background not connected to the slice's border), computed with one labelling
    of the background instead of one iterative dilation per slice.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3 or axis not in (0, 1, 2):
        raise ValueError(f"expected a 3-D mask and an axis in 0..2, got shape {mask.shape} and axis {axis!r}")
    structure = ndimage.generate_binary_structure(3, 1)
    structure[tuple(1 if a != axis else 0 for a in range(3))] = False
    structure[tuple(1 if a != axis else 2 for a in range(3))] = False
    background, count = ndimage.label(~mask, structure=structure)
    if count == 0:
        return mask.copy()
    open_to_border = np.zeros(count + 1, dtype=bool)
    open_to_border[0] = True  # label 0 is the mask itself
    for a in range(3):
        if a != axis:
            open_to_border[np.take(background, 0, axis=a)] = True
            open_to_border[np.take(background, -1, axis=a)] = True
    return mask | ~open_to_border[background]


def _coarse_factors(spacing_mm: Sequence[float], coarse_spacing_mm: float) -> tuple[int, int, int]:
    """Whole input voxels per coarse voxel along each axis (>= 1), closest to ``coarse_spacing_mm``."""
    if coarse_spacing_mm <= 0:
        return (1, 1, 1)
    return tuple(max(1, int(np.floor(coarse_spacing_mm / s + 0.5))) for s in spacing_mm)  # type: ignore[return-value]


def _block_majority(mask: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Coarse mask: a block of ``factors`` voxels is set when at least half of it is set (edges replicated)."""
    pad = [(0, (-n) % f) for n, f in zip(mask.shape, factors)]
    padded = np.pad(mask, pad, mode="edge") if any(p[1] for p in pad) else mask
    shape = []
    for n, f in zip(padded.shape, factors):
        shape += [n // f, f]
    counts = padded.reshape(shape).sum(axis=(1, 3, 5), dtype=np.int32)
    return 2 * counts >= int(np.prod(factors))


def _block_expand(mask: np.ndarray, factors: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Repeat every coarse voxel over its block, cut to ``shape``."""
    for axis, f in enumerate(factors):
        if f > 1:
            mask = np.repeat(mask, f, axis=axis)
    return mask[tuple(slice(0, n) for n in shape)]


def _largest_component_filled(candidate: np.ndarray, spacing: np.ndarray, opening_radius_mm: float,
                              threshold_hu: float, axial: int) -> np.ndarray:
    """Opening (edges replicated), largest connected component, holes filled slice by slice."""
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
    return fill_holes_in_slices(components == int(np.argmax(sizes)), axial)


def body_mask(
    hu: np.ndarray,
    world_from_voxel: np.ndarray,
    *,
    threshold_hu: float = BODY_THRESHOLD_HU,
    opening_radius_mm: float = BODY_OPENING_RADIUS_MM,
    coarse_spacing_mm: float = BODY_COARSE_SPACING_MM,
) -> np.ndarray:
    """The patient's body: ``(I, J, K)`` bool mask (see the module docstring).

    Args:
        hu: ``(I, J, K)`` CT in HU.
        world_from_voxel: ``(4, 4)`` affine (gives the voxel spacing in mm and the axial slice axis).
        threshold_hu: body voxels are above this HU.
        opening_radius_mm: opening ball radius in mm (0 disables it).
        coarse_spacing_mm: voxel size in mm of the grid the opening, labelling and hole filling run
            on (whole blocks of input voxels, block majority of the threshold); where a block spans
            more than one voxel, the body surface is refined from the full-resolution threshold
            within one coarse voxel of it. 0 (or a CT already coarser) runs everything at full
            resolution.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"hu must be a 3-D array (I, J, K), got shape {hu.shape}")
    if not np.isfinite(coarse_spacing_mm) or coarse_spacing_mm < 0:
        raise ValueError(f"coarse_spacing_mm must be a finite number of mm >= 0, got {coarse_spacing_mm!r}")
    world_from_voxel = np.asarray(world_from_voxel, dtype=np.float64)
    spacing = np.linalg.norm(world_from_voxel[:3, :3], axis=0)
    axial = _superior_axis(world_from_voxel)
    candidate = hu > threshold_hu
    factors = _coarse_factors(spacing, coarse_spacing_mm)
    if factors == (1, 1, 1):
        return _largest_component_filled(candidate, spacing, opening_radius_mm, threshold_hu, axial)
    coarse_spacing = spacing * np.array(factors)
    coarse_radius_mm = opening_radius_mm
    if opening_radius_mm > 0:
        # a block majority already shaves up to half a coarse voxel off each side of a thin part:
        # open with that much less (at least one coarse voxel, which cuts one-voxel bridges)
        in_plane = float(np.max(np.delete(coarse_spacing, axial)))
        coarse_radius_mm = max(opening_radius_mm - in_plane / 2.0, in_plane)
    coarse = _largest_component_filled(_block_majority(candidate, factors), coarse_spacing,
                                       coarse_radius_mm, threshold_hu, axial)
    # refine the surface: the coarse body less one coarse voxel is body; within one coarse voxel
    # of its surface (along the axes that were coarsened) the full-resolution threshold decides
    band = np.ones([3 if f > 1 else 1 for f in factors], dtype=bool)
    inner = ndimage.binary_erosion(coarse, structure=band, border_value=1)
    outer = ndimage.binary_dilation(coarse, structure=band)
    body = _block_expand(outer, factors, hu.shape) & candidate
    body |= _block_expand(inner, factors, hu.shape)
    return body


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
    hu = np.where(mask[box], ct.hu[box], np.float32(AIR_HU)).astype(np.float32, copy=False)
    meta = dict(ct.meta, crop_lower_voxel=[int(v) for v in lower], crop_upper_voxel=[int(v) for v in upper])
    cropped = CTVolume(hu=np.ascontiguousarray(hu), world_from_voxel=_translate_affine(ct.world_from_voxel, lower), meta=meta)
    return cropped, [np.ascontiguousarray(np.asarray(a)[box]) for a in extra]


#: Relative size of off-diagonal terms below which two grids count as axis-aligned (separable path).
_AXIS_ALIGNED_RTOL = 1e-9
#: Tolerance (input voxels) on the edge of the input box when deciding what lies outside it.
_BOX_EDGE_TOLERANCE = 1e-6


def _is_axis_aligned(input_from_output: np.ndarray) -> bool:
    linear = input_from_output[:3, :3]
    off_diagonal = linear - np.diag(np.diag(linear))
    return bool(np.all(np.abs(off_diagonal) <= _AXIS_ALIGNED_RTOL * np.max(np.abs(linear))))


def _resample_axis(array: np.ndarray, axis: int, coords: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Values of ``array`` at fractional indices ``coords`` along ``axis`` (edge values repeated
    within half a voxel of the box) and which of them lie inside the input box."""
    n = array.shape[axis]
    upper = float(n - 1)
    inside = (coords >= -0.5 - _BOX_EDGE_TOLERANCE) & (coords <= upper + 0.5 + _BOX_EDGE_TOLERANCE)
    coords = np.clip(coords, 0.0, upper)
    view = [1] * array.ndim
    view[axis] = coords.size
    if order == 0:
        nearest = np.minimum(np.floor(coords + 0.5), upper).astype(np.intp)
        return np.take(array, nearest, axis=axis), inside
    low = np.minimum(np.floor(coords), max(upper - 1.0, 0.0)).astype(np.intp)
    high = np.minimum(low + 1, n - 1)
    weight = (coords - low).reshape(view).astype(array.dtype)
    low_values = np.take(array, low, axis=axis)
    return low_values + weight * (np.take(array, high, axis=axis) - low_values), inside


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
    separable: bool | None = None,
) -> np.ndarray:
    """Resample ``array`` onto another voxel grid in the same world.

    Args:
        array: ``(I, J, K)`` values on the grid ``world_from_voxel``.
        world_from_voxel: ``(4, 4)`` affine of ``array`` (voxel centre -> world mm).
        out_shape: ``(I', J', K')`` of the result.
        out_world_from_voxel: ``(4, 4)`` affine of the result.
        fill_value: value of output voxels whose centre lies outside the input's physical box
            (the box spans half a voxel beyond the outer voxel centres; within it, edge values are repeated).
        order: spline order, 1 = trilinear, 0 = nearest (for label maps).
        anti_alias: Gaussian prefilter when the output is coarser than the input.
        chunk_voxels: output voxels interpolated at a time by the general path (bounds memory).
        separable: filter and interpolate one axis at a time, each on the already reduced array
            (the same values up to float rounding, much faster); needs output axes along the input
            axes. ``None`` (default) uses it whenever the grids are so aligned.

    Returns:
        ``(I', J', K')`` float32 array (float64 when the input is float64).
    """
    array = np.asarray(array)
    out_shape = tuple(int(n) for n in out_shape)
    if order not in (0, 1):
        raise ValueError(f"order must be 0 (nearest) or 1 (linear), got {order!r}")
    input_from_output = np.linalg.inv(np.asarray(world_from_voxel, dtype=np.float64)) @ np.asarray(
        out_world_from_voxel, dtype=np.float64
    )
    aligned = _is_axis_aligned(input_from_output)
    if separable is None:
        separable = aligned
    elif separable and not aligned:
        raise ValueError("separable=True needs output axes along the input axes (a diagonal input_from_output)")
    dtype = np.float64 if array.dtype == np.float64 else np.float32
    source = array.astype(dtype, copy=False)
    # input voxels per output voxel along each input axis
    factors = np.linalg.norm(input_from_output[:3, :3], axis=1)
    sigmas = np.maximum((factors - 1.0) / 2.0, 0.0) if anti_alias and order > 0 else np.zeros(3)
    if separable:
        inside = np.ones(out_shape, dtype=bool)
        values = source
        for axis in range(3):
            if sigmas[axis] > 0:
                values = ndimage.gaussian_filter1d(values, sigmas[axis], axis=axis, mode="nearest")
            coords = input_from_output[axis, axis] * np.arange(out_shape[axis]) + input_from_output[axis, 3]
            values, inside_axis = _resample_axis(values, axis, coords, order)
            view = [1, 1, 1]
            view[axis] = out_shape[axis]
            inside &= inside_axis.reshape(view)
        return np.where(inside, values, fill_value).astype(dtype, copy=False)
    if np.any(sigmas > 0):
        source = ndimage.gaussian_filter(source, sigma=sigmas, mode="nearest")
    upper = np.array(array.shape, dtype=np.float64) - 1.0
    result = np.empty(int(np.prod(out_shape)), dtype=dtype)
    flat_total = result.size
    for start in range(0, flat_total, chunk_voxels):
        stop = min(start + chunk_voxels, flat_total)
        out_index = np.stack(np.unravel_index(np.arange(start, stop), out_shape)).astype(np.float64)
        coords = input_from_output[:3, :3] @ out_index + input_from_output[:3, 3:4]
        inside = np.all((coords >= -0.5 - _BOX_EDGE_TOLERANCE) & (coords <= upper[:, None] + 0.5 + _BOX_EDGE_TOLERANCE), axis=0)
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
        bone: ``(I, J, K)`` bone mask on the CT grid; default: the threshold mask
            :func:`xraysyn.data.bone_mask.bone_mask_from_hu` of the body-cropped CT (the same mask as
            on the whole CT wherever the body is, at a fraction of the cost).
        size: output voxels per side.
        mode: ``"stretch"`` (paper) or ``"isotropic"``.

    Returns:
        ``(CT (size, size, size) in HU, bool bone mask (size, size, size))``.
    """
    if bone is not None and np.shape(bone) != ct.shape:
        raise ValueError(f"bone has shape {np.shape(bone)}, expected the CT shape {ct.shape}")
    body = body_mask(ct.hu, ct.world_from_voxel)
    extras = [body] if bone is None else [body, np.asarray(bone, dtype=bool)]
    cropped, cropped_extras = crop_to_body(ct, extras, mask=body)
    body_cropped = cropped_extras[0]
    if bone is None:
        from xraysyn.data.bone_mask import bone_mask_from_hu

        bone_cropped = bone_mask_from_hu(cropped.hu, cropped.spacing_mm)
    else:
        bone_cropped = cropped_extras[1]
    # bone outside the body (e.g. a dense table) is not the patient's bone
    cube, (bone_cube,) = resample_to_cube(cropped, size, mode, [bone_cropped & body_cropped])
    return cube, bone_cube
