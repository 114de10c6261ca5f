"""3-D augmentations: identity, known rotations and scalings of a blob, binary masks, seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xraysyn.data.augment import AugmentConfig, AugmentParams, RandomAugment, apply_augment, sample_augment_params

N = 24


def _blob(center_ijk, shape=(N, N, N), sigma=1.5, spacing=(1.0, 1.0, 1.0)) -> torch.Tensor:
    axes = [torch.arange(n, dtype=torch.float64) for n in shape]
    ii, jj, kk = torch.meshgrid(*axes, indexing="ij")
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip((ii, jj, kk), center_ijk, spacing))
    return torch.exp(-d2 / (2 * sigma**2))


def _centroid(volume: torch.Tensor) -> np.ndarray:
    w = volume.double().clamp(min=0)
    axes = [torch.arange(n, dtype=torch.float64) for n in volume.shape]
    grids = torch.meshgrid(*axes, indexing="ij")
    return np.array([float((g * w).sum() / w.sum()) for g in grids])


def _affine(spacing):
    a = np.eye(4)
    a[0, 0], a[1, 1], a[2, 2] = spacing
    return a


def test_identity_parameters_return_the_input():
    gen = torch.Generator().manual_seed(0)
    ct = torch.rand(1, N, N - 4, N - 2, generator=gen) * 2000 - 1000
    bone = torch.rand(1, N, N - 4, N - 2, generator=gen) > 0.7
    out_ct, out_bone = apply_augment(ct, bone, _affine((1.0, 2.0, 0.7)), AugmentParams())
    torch.testing.assert_close(out_ct, ct, atol=1e-3, rtol=0)
    assert torch.equal(out_bone, bone)
    none = sample_augment_params(AugmentConfig.none(), gen)
    out_ct, out_bone = apply_augment(ct, bone, _affine((1.0, 1.0, 1.0)), none)
    torch.testing.assert_close(out_ct, ct, atol=1e-3, rtol=0)


@pytest.mark.parametrize("axis, angle", [(2, 30.0), (0, -20.0), (1, 25.0)])
def test_rotation_moves_a_point_where_expected(axis, angle):
    spacing = (1.0, 1.5, 1.2)
    centre = np.array([(N - 1) / 2.0] * 3)
    start = centre + np.array([4.0, -3.0, 2.0])
    ct = (-1000 + 1000 * _blob(start, spacing=spacing)).float()[None]
    rotation = [0.0, 0.0, 0.0]
    rotation[axis] = angle
    out, _ = apply_augment(ct, torch.zeros_like(ct, dtype=torch.bool), _affine(spacing), AugmentParams(rotation_deg=tuple(rotation)))
    # Expected: rotate the mm offset about the array axis (right-handed), back to indices.
    offset_mm = (start - centre) * spacing
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    u, v = [(1, 2), (2, 0), (0, 1)][axis]  # plane of the rotation, in right-handed order
    rotated = offset_mm.copy()
    rotated[u] = c * offset_mm[u] - s * offset_mm[v]
    rotated[v] = s * offset_mm[u] + c * offset_mm[v]
    expected = centre + rotated / spacing
    np.testing.assert_allclose(_centroid(out[0] + 1000), expected, atol=0.08)


def test_scaling_moves_a_point_away_from_the_centre():
    centre = np.array([(N - 1) / 2.0] * 3)
    start = centre + np.array([5.0, 0.0, -4.0])
    ct = (-1000 + 1000 * _blob(start)).float()[None]
    out, _ = apply_augment(ct, torch.zeros_like(ct), np.eye(4), AugmentParams(scale=(1.2, 1.0, 0.9)))
    expected = centre + (start - centre) * np.array([1.2, 1.0, 0.9])
    np.testing.assert_allclose(_centroid(out[0] + 1000), expected, atol=0.08)


def test_random_augment_is_seeded_mask_binary_and_outside_is_air():
    ct = torch.full((1, N, N, N), 40.0)
    bone = torch.zeros(1, N, N, N)
    bone[:, 8:16, 8:16, 8:16] = 1.0
    config = AugmentConfig(max_rotation_deg=10.0, max_scale=0.1, elastic_std_mm=1.5, noise_hu=0.0,
                           max_hu_scale=0.0, max_hu_shift=0.0)
    aug = RandomAugment(config)
    a = aug(ct, bone, np.eye(4), torch.Generator().manual_seed(3))
    b = aug(ct, bone, np.eye(4), torch.Generator().manual_seed(3))
    c = aug(ct, bone, np.eye(4), torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert set(torch.unique(a[1]).tolist()) <= {0.0, 1.0}
    assert abs(a[1].sum().item() - bone.sum().item()) < 0.45 * bone.sum().item()
    assert a[0][0, N // 2, N // 2, N // 2].item() == pytest.approx(40.0, abs=1e-3)
    # Shrinking a cube of tissue leaves air (-1000 HU) at the corners, where nothing maps from inside.
    shrunk, _ = apply_augment(ct, bone, np.eye(4), AugmentParams(scale=(0.8, 0.8, 0.8)))
    assert shrunk[0, 0, 0, 0].item() == pytest.approx(-1000.0, abs=1e-6)
    assert shrunk[0, N // 2, N // 2, N // 2].item() == pytest.approx(40.0, abs=1e-3)


def test_intensity_jitter_is_the_documented_affine_map():
    ct = torch.linspace(-1000, 1500, N**3).reshape(1, N, N, N)
    params = AugmentParams(hu_scale=1.1, hu_shift=-15.0)
    out, _ = apply_augment(ct, torch.zeros_like(ct), np.eye(4), params)
    torch.testing.assert_close(out, 1.1 * (ct + 1000) - 1000 - 15.0, atol=2e-3, rtol=0)


def test_bad_inputs():
    ct = torch.zeros(1, 8, 8, 8)
    with pytest.raises(ValueError, match="ct_hu"):
        apply_augment(ct[0], ct, np.eye(4), AugmentParams())
    with pytest.raises(ValueError, match="bone"):
        apply_augment(ct, torch.zeros(1, 8, 8, 7), np.eye(4), AugmentParams())
    with pytest.raises(ValueError, match="world_from_voxel"):
        apply_augment(ct, ct, np.eye(3), AugmentParams())
    with pytest.raises(ValueError, match="max_scale"):
        AugmentConfig(max_scale=0.7)
    with pytest.raises(ValueError, match="elastic_grid"):
        AugmentConfig(elastic_grid=1)
