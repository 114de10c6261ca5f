"""The faster preprocessing of issue 25 against the full-resolution method it replaces.

References computed here, independently of the library: scipy's ``binary_fill_holes`` per slice and
in 3-D, ``map_coordinates`` resampling, and the body mask with the opening, labelling and filling
all at full resolution (the method before issue 25, reproduced in :func:`_reference_body_mask`).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from xraysyn.data.bone_mask import _fill_holes, bone_mask_from_hu, dice
from xraysyn.data.ct_io import CTVolume
from xraysyn.data.preprocess import (
    BODY_OPENING_RADIUS_MM,
    BODY_THRESHOLD_HU,
    _ball,
    _coarse_factors,
    body_mask,
    cube_grid,
    fill_holes_in_slices,
    preprocess_ct,
    resample_to_grid,
)

AIR_HU, LUNG_HU, TISSUE_HU, BONE_HU, COUCH_HU = -1000.0, -850.0, 40.0, 700.0, 250.0
CUSHION_HU = -800.0  # foam: below the -500 HU body threshold
SPACING_MM = (0.7, 0.7, 2.5)  # a typical chest CT: the body mask runs on 3 x 3 x 1 voxel blocks


def _reference_body_mask(hu, spacing, axial=2):
    """Opening (3 mm ball, edges replicated), largest component, per-slice hole filling, at full resolution."""
    candidate = hu > BODY_THRESHOLD_HU
    ball = _ball(BODY_OPENING_RADIUS_MM, spacing)
    pad = [(h, h) for h in np.array(ball.shape) // 2]
    opened = ndimage.binary_opening(np.pad(candidate, pad, mode="edge"), structure=ball)
    opened = opened[tuple(slice(a, a + n) for (a, _), n in zip(pad, hu.shape))]
    components, _ = ndimage.label(opened)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    body = np.moveaxis(components == np.argmax(sizes), axial, 0).copy()
    for index in range(body.shape[0]):
        body[index] = ndimage.binary_fill_holes(body[index])
    return np.moveaxis(body, 0, axial)


def _chest_on_couch(shape=(200, 160, 12), seed=0):
    """Body (lungs, spine, rib arcs) with an arm 3 mm beside it, on a 4 mm foam cushion over a 10 mm
    couch, tied to the couch by a 2 mm strap (cut by the opening), in air.

    Returns the CT and the true masks ``body`` (torso only) and ``couch`` (couch and strap)."""
    rng = np.random.default_rng(seed)
    ni, nj, nk = shape
    x = ((np.arange(ni) - (ni - 1) / 2) * SPACING_MM[0])[:, None, None]
    y = ((np.arange(nj) - (nj - 1) / 2) * SPACING_MM[1])[None, :, None]
    k = np.arange(nk)[None, None, :]
    width = 45.0 + 0.5 * k  # mm, changes from slice to slice
    radial = (x / width) ** 2 + ((y + 8.0) / 32.0) ** 2
    body = np.broadcast_to(radial <= 1.0, shape)
    hu = np.full(shape, AIR_HU, np.float32)
    hu[body] = TISSUE_HU
    lungs = ((np.abs(x) - 0.5 * width) / (0.3 * width)) ** 2 + ((y + 10.0) / 18.0) ** 2 <= 1.0
    hu[np.broadcast_to(lungs & (k > 1) & (k < nk - 2), shape)] = LUNG_HU
    bone = (np.abs(np.sqrt(radial) - 0.88) < 0.05) | (x**2 + (y - 14.0) ** 2 <= 6.0**2)
    hu[np.broadcast_to(bone, shape)] = BONE_HU
    arm = np.broadcast_to((x - width - 3.0 - 10.0) ** 2 + (y + 8.0) ** 2 <= 10.0**2, shape) & ~body
    hu[arm] = TISSUE_HU
    bottom = 32.0 - 8.0
    cushion = np.broadcast_to((y > bottom - 3.0) & (y <= bottom + 4.0) & (np.abs(x) < 60.0), shape) & ~body
    hu[cushion] = CUSHION_HU
    strap = np.broadcast_to((np.abs(x + 20.0) <= 1.0) & (y > bottom - 3.0) & (y <= bottom + 4.0), shape) & ~body
    couch = np.broadcast_to((y > bottom + 4.0) & (y <= bottom + 14.0) & (np.abs(x) < 60.0), shape) | strap
    hu[couch] = COUCH_HU
    hu += rng.normal(0.0, 15.0, size=shape).astype(np.float32)
    return CTVolume(hu=hu, world_from_voxel=np.diag([*SPACING_MM, 1.0])), body, couch


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_fill_holes_in_slices_equals_scipy_per_slice(axis):
    rng = np.random.default_rng(axis)
    for density in (0.3, 0.5, 0.7):
        mask = rng.random((14, 11, 9)) < density
        expected = np.moveaxis(mask, axis, 0).copy()
        for index in range(expected.shape[0]):
            expected[index] = ndimage.binary_fill_holes(expected[index])
        np.testing.assert_array_equal(fill_holes_in_slices(mask, axis), np.moveaxis(expected, 0, axis))
    with pytest.raises(ValueError, match="axis"):
        fill_holes_in_slices(mask, 3)


def test_bone_fill_holes_equals_scipy():
    rng = np.random.default_rng(5)
    for density in (0.2, 0.5, 0.8, 1.0):
        mask = rng.random((12, 10, 9)) < density
        np.testing.assert_array_equal(_fill_holes(mask), ndimage.binary_fill_holes(mask))


def test_coarse_body_mask_matches_full_resolution_method():
    ct, true_body, couch = _chest_on_couch()
    assert _coarse_factors(SPACING_MM, 2.0) == (3, 3, 1)  # the coarse path really runs
    reference = _reference_body_mask(ct.hu, SPACING_MM)
    mask = body_mask(ct.hu, ct.world_from_voxel)
    assert dice(mask, reference) >= 0.99
    assert dice(mask, true_body) >= 0.99
    # the arm 3 mm away, the cushion and the couch stay out, as with the full-resolution opening
    # (only where the strap meets the skin may a few of its voxels stay)
    assert reference[couch].sum() <= 0.002 * true_body.sum()
    assert mask[couch].sum() <= 0.002 * true_body.sum()
    arm_side = ct.hu.shape[0] - 25  # voxels beyond the widest torso, where only the arm lies
    assert not mask[arm_side:].any() and not reference[arm_side:].any()
    # coarse_spacing_mm=0 is the full-resolution method itself
    np.testing.assert_array_equal(body_mask(ct.hu, ct.world_from_voxel, coarse_spacing_mm=0), reference)
    with pytest.raises(ValueError, match="coarse_spacing_mm"):
        body_mask(ct.hu, ct.world_from_voxel, coarse_spacing_mm=float("nan"))


@pytest.mark.parametrize("mode", ["stretch", "isotropic"])
@pytest.mark.parametrize("order", [0, 1])
def test_separable_resampling_equals_map_coordinates(mode, order):
    rng = np.random.default_rng(order)
    shape = (23, 17, 9)
    values = rng.normal(0.0, 300.0, size=shape)
    affine = np.diag([0.7, 0.9, 2.5, 1.0])
    affine[:3, 3] = [-8.0, 3.0, 40.0]
    out_affine = cube_grid(shape, affine, 7, mode)
    expected = resample_to_grid(values, affine, (7, 7, 7), out_affine, order=order, separable=False, fill_value=-5.0)
    result = resample_to_grid(values, affine, (7, 7, 7), out_affine, order=order, fill_value=-5.0)
    assert result.dtype == np.float64
    np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-9)
    if mode == "isotropic":
        assert np.any(result == -5.0)  # padding outside the input box
    rotated = affine.copy()
    rotated[:3, :3] = rotated[:3, :3] @ np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="separable"):
        resample_to_grid(values, affine, (7, 7, 7), rotated, separable=True)


def test_preprocess_default_bone_on_the_crop_equals_bone_on_the_whole_ct():
    ct, _, _ = _chest_on_couch(seed=1)
    whole = bone_mask_from_hu(ct.hu, ct.spacing_mm)
    cube_a, bone_a = preprocess_ct(ct, size=16)
    cube_b, bone_b = preprocess_ct(ct, bone=whole, size=16)
    np.testing.assert_array_equal(bone_a, bone_b)
    np.testing.assert_array_equal(cube_a.hu, cube_b.hu)
    assert bone_a.any()
