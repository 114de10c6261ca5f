"""Preprocessing: the 2.5 mm rule, body crop (air and table removed), cube resampling keeping the physical extent."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from xraysyn.data.ct_io import CTVolume
from xraysyn.data.preprocess import (
    AIR_HU,
    body_mask,
    check_slice_spacing,
    crop_to_body,
    cube_grid,
    preprocess_ct,
    resample_to_cube,
    resample_to_grid,
)

LUNG_HU, TISSUE_HU, TABLE_HU, BONE_HU = -850.0, 40.0, 200.0, 1200.0


def _affine(spacing, origin=(-20.0, 15.0, 100.0)) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def _world(affine, ijk) -> np.ndarray:
    return (np.asarray(affine) @ np.array([*ijk, 1.0]))[:3]


def _chest(shape=(30, 28, 20), spacing=(2.0, 2.0, 2.5)):
    """Axial chest-like phantom: body cylinder (i, j ellipse) with two lungs and a spine ball, on a table.

    Walls are at least 4 voxels (8 mm) thick, like a real chest wall (>= 1 cm), so that the 3 mm
    body opening keeps them."""
    i, j, k = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    hu = np.full(shape, AIR_HU, dtype=np.float32)
    body = ((i - 15) / 12) ** 2 + ((j - 13) / 9) ** 2 <= 1.0  # cut by the scan range at k = 0 and k = 19
    hu[body] = TISSUE_HU
    for centre in (10, 20):
        lung = (((i - centre) / 3) ** 2 + ((j - 13) / 4.5) ** 2 <= 1.0) & (k >= 5) & (k <= 14)
        hu[lung] = LUNG_HU
    spine = (i - 15) ** 2 + (j - 18) ** 2 + ((k - 10) * 1.25) ** 2 <= 2.5**2
    hu[spine] = BONE_HU
    table = (j >= 23) & (j <= 24)  # a slab touching the body's posterior edge (j = 22)
    hu[table & ~body] = TABLE_HU
    return CTVolume(hu=hu, world_from_voxel=_affine(spacing)), body, spine


def test_slice_spacing_rule():
    hu = np.zeros((4, 4, 4), np.float32)
    assert check_slice_spacing(CTVolume(hu, _affine((0.7, 0.7, 2.5)))).ok
    thick = check_slice_spacing(CTVolume(hu, _affine((0.7, 0.7, 5.0))))
    assert not thick.ok and "5 mm > 2.5 mm" in thick.reason
    by_header = check_slice_spacing(CTVolume(hu, _affine((0.7, 0.7, 2.0)), meta={"slice_thickness_mm": 3.0}))
    assert not by_header.ok and "thickness 3 mm" in by_header.reason


def test_body_mask_fills_lungs_and_drops_table():
    ct, body, _ = _chest()
    mask = body_mask(ct.hu, ct.world_from_voxel)
    assert not np.any(mask & (ct.hu == TABLE_HU))
    assert np.all(mask[ct.hu == LUNG_HU])  # lungs are inside the body
    # the opening may only shave the outermost voxel layer (26-neighbourhood) at the ellipse's tips and steps
    assert not np.any(mask & ~body)
    outer_layer = body & ~ndimage.binary_erosion(body, structure=np.ones((3, 3, 3)), border_value=1)
    assert not np.any(body & ~mask & ~outer_layer)
    assert (body & ~mask).sum() <= 0.05 * body.sum()


def test_crop_keeps_world_positions_and_removes_table():
    ct, _, spine = _chest()
    mask = body_mask(ct.hu, ct.world_from_voxel)
    cropped, (spine_cropped,) = crop_to_body(ct, [spine])
    lower = np.argwhere(mask).min(axis=0)
    upper = np.argwhere(mask).max(axis=0) + 1
    assert cropped.shape == tuple(int(v) for v in upper - lower)
    assert not np.any(cropped.hu == TABLE_HU)
    assert np.any(cropped.hu == LUNG_HU)
    # the same world point holds the same value before and after
    for ijk in np.argwhere(spine)[::7]:
        new_ijk = ijk - lower
        np.testing.assert_allclose(_world(cropped.world_from_voxel, new_ijk), _world(ct.world_from_voxel, ijk))
        assert cropped.hu[tuple(new_ijk)] == BONE_HU and spine_cropped[tuple(new_ijk)]


def _box_corners(shape, affine):
    """World positions of the outer faces' corners: voxel index -1/2 and n - 1/2 per axis."""
    lo = _world(affine, [-0.5] * 3)
    hi = _world(affine, [n - 0.5 for n in shape])
    return lo, hi


def test_cube_grid_stretch_keeps_physical_box():
    affine = _affine((0.7, 0.9, 2.5))
    shape = (40, 30, 12)
    out = cube_grid(shape, affine, size=16, mode="stretch")
    for a, b in zip(_box_corners(shape, affine), _box_corners((16, 16, 16), out)):
        np.testing.assert_allclose(a, b, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(out[:3, :3], axis=0), [40 * 0.7 / 16, 30 * 0.9 / 16, 12 * 2.5 / 16])


def test_cube_grid_isotropic_contains_box_with_cubic_voxels():
    affine = _affine((0.7, 0.9, 2.5))
    shape = (40, 30, 12)
    out = cube_grid(shape, affine, size=16, mode="isotropic")
    side = max(40 * 0.7, 30 * 0.9, 12 * 2.5)  # 30 mm
    np.testing.assert_allclose(np.linalg.norm(out[:3, :3], axis=0), [side / 16] * 3)
    (lo_in, hi_in), (lo_out, hi_out) = _box_corners(shape, affine), _box_corners((16, 16, 16), out)
    np.testing.assert_allclose((lo_in + hi_in) / 2, (lo_out + hi_out) / 2, atol=1e-9)
    assert np.all(lo_out <= lo_in + 1e-9) and np.all(hi_out >= hi_in - 1e-9)
    with pytest.raises(ValueError, match="mode"):
        cube_grid(shape, affine, 16, mode="squash")
    with pytest.raises(ValueError, match="size"):
        cube_grid(shape, affine, 1)


def test_resample_reproduces_linear_field_exactly():
    """Trilinear interpolation is exact for a field linear in world coordinates (closed form)."""
    affine = _affine((0.8, 1.1, 2.0))
    shape = (24, 20, 10)
    gradient, constant = np.array([3.0, -2.0, 0.5]), 7.0
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = (affine[:3, :3] @ ijk.T).T + affine[:3, 3]
    field = (world @ gradient + constant).reshape(shape)
    out_affine = cube_grid(shape, affine, size=8, mode="stretch")
    result = resample_to_grid(field.astype(np.float64), affine, (8, 8, 8), out_affine, anti_alias=False)
    out_ijk = np.stack(np.meshgrid(*[np.arange(8)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    out_world = (out_affine[:3, :3] @ out_ijk.T).T + out_affine[:3, 3]
    np.testing.assert_allclose(result.reshape(-1), out_world @ gradient + constant, atol=1e-9)


def test_resample_outside_box_is_filled():
    affine = _affine((1.0, 1.0, 1.0))
    out_affine = _translate(affine, (100.0, 0.0, 0.0))
    result = resample_to_grid(np.zeros((4, 4, 4)), affine, (2, 2, 2), out_affine, fill_value=-1000.0)
    assert np.all(result == -1000.0)


def _translate(affine, offset_mm):
    moved = affine.copy()
    moved[:3, 3] += offset_mm
    return moved


def test_cube_resampling_keeps_ball_volume_and_centre():
    spacing = (0.6, 0.6, 1.5)
    shape = (32, 32, 16)
    i, j, k = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    affine = _affine(spacing)
    centre = np.array([14.0, 17.0, 7.0])
    radius_mm = 5.0
    distance = np.sqrt(((i - centre[0]) * spacing[0]) ** 2 + ((j - centre[1]) * spacing[1]) ** 2 + ((k - centre[2]) * spacing[2]) ** 2)
    ball = distance <= radius_mm
    ct = CTVolume(np.where(ball, BONE_HU, TISSUE_HU).astype(np.float32), affine)
    cube, (ball_cube,) = resample_to_cube(ct, size=24, mode="isotropic", masks=[ball])
    voxel_mm3 = abs(np.linalg.det(cube.world_from_voxel[:3, :3]))
    true_volume = 4.0 / 3.0 * math.pi * radius_mm**3
    assert ball_cube.sum() * voxel_mm3 == pytest.approx(true_volume, rel=0.12)
    centroid = _world(cube.world_from_voxel, np.argwhere(ball_cube).mean(axis=0))
    np.testing.assert_allclose(centroid, _world(affine, centre), atol=0.5)
    # the bright ball's HU centre of mass lands at the same place
    weights = np.clip(cube.hu - TISSUE_HU, 0, None)
    hu_centroid = _world(cube.world_from_voxel, (np.argwhere(weights > -1) * weights.reshape(-1, 1)).sum(0) / weights.sum())
    np.testing.assert_allclose(hu_centroid, _world(affine, centre), atol=0.5)


def test_preprocess_ct_end_to_end():
    ct, _, spine = _chest()
    cube, bone = preprocess_ct(ct, size=16)
    assert cube.shape == (16, 16, 16) and bone.shape == (16, 16, 16) and bone.dtype == bool
    assert bone.any() and cube.hu.dtype == np.float32
    # the bone centre stays where the spine ball was
    np.testing.assert_allclose(
        _world(cube.world_from_voxel, np.argwhere(bone).mean(axis=0)),
        _world(ct.world_from_voxel, np.argwhere(spine).mean(axis=0)),
        atol=1.0,
    )
    # the cube spans exactly the body's bounding box (stretch mode)
    mask = body_mask(ct.hu, ct.world_from_voxel)
    lower, upper = np.argwhere(mask).min(axis=0), np.argwhere(mask).max(axis=0) + 1
    np.testing.assert_allclose(_world(cube.world_from_voxel, [-0.5] * 3), _world(ct.world_from_voxel, lower - 0.5), atol=1e-9)
    np.testing.assert_allclose(_world(cube.world_from_voxel, [15.5] * 3), _world(ct.world_from_voxel, upper - 0.5), atol=1e-9)
    with pytest.raises(ValueError, match="bone has shape"):
        preprocess_ct(ct, bone=np.zeros((2, 2, 2), bool), size=16)
