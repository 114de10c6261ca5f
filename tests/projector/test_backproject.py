"""Single-image backprojector (eq. 7): FP(BP(I)) = I on covered pixels; chord normalisation."""

import pytest
import torch

from xraysyn.geometry import ConeBeamGeometry
from xraysyn.projector import backproject, chord_lengths, forward_project

GEOM = ConeBeamGeometry(sdd=1200.0, sid=1000.0, detector_shape=(40, 44), pixel_spacing=2.0)
SHAPE = (40, 36, 44)


def _affine():
    a = torch.diag(torch.tensor([1.6, 1.9, 1.5, 1.0], dtype=torch.float64))
    a[:3, 3] = torch.tensor([-30.0, -35.0, -32.0])
    return a


def _smooth_image(geom=GEOM):
    r = torch.linspace(-1, 1, geom.rows, dtype=torch.float64)[:, None]
    c = torch.linspace(-1, 1, geom.cols, dtype=torch.float64)[None, :]
    return (50.0 + 20.0 * torch.sin(2.0 * r) * torch.cos(1.5 * c) + 10 * c)[None, None]


@pytest.mark.parametrize("az,el", [(0.0, 0.0), (30.0, -10.0), (-65.0, 20.0), (120.0, 5.0)])
def test_fp_of_bp_reproduces_image(az, el):
    geom = ConeBeamGeometry(sdd=1200.0, sid=1000.0, detector_shape=(60, 64), pixel_spacing=2.0)  # no truncation
    img = _smooth_image(geom)
    pose = geom.poses(torch.tensor([az], dtype=torch.float64), torch.tensor([el], dtype=torch.float64))
    vol = backproject(img, _affine(), pose, geom, SHAPE)
    again = forward_project(vol, _affine(), pose, geom)
    length = chord_lengths(_affine(), pose, geom, SHAPE)[0]
    rel = ((again - img).abs() / img)[0, 0]
    assert (again[0, 0][length == 0] == 0).all()
    # Covered: the ray and its neighbours within 2 pixels cross >= 10 voxels.
    min_chord = -torch.nn.functional.max_pool2d(-length[None], 5, stride=1, padding=2)[0]
    covered = min_chord >= 10 * 1.9
    assert covered.sum() > 1000
    assert rel[covered].median() < 2e-3
    assert rel[covered].max() < 0.05
    # Within 1 % wherever the chord map is smooth. Where the exit face changes, |l| has a kink
    # and trilinear sampling blends voxels of rays with different chords: a first-order error
    # of up to a few per cent in a band of ~2 pixels (documented in the README's limitations).
    second = torch.zeros_like(length)
    second[1:-1, :] = (length[2:, :] - 2 * length[1:-1, :] + length[:-2, :]).abs()
    second[:, 1:-1] = torch.maximum(second[:, 1:-1], (length[:, 2:] - 2 * length[:, 1:-1] + length[:, :-2]).abs())
    kink = torch.nn.functional.max_pool2d((second > 0.01 * length).double()[None], 5, stride=1, padding=2)[0] > 0
    smooth = covered & ~kink
    assert smooth.sum() > 0.4 * covered.sum()
    assert rel[smooth].max() < 0.01, rel[smooth].max()


def test_bp_is_image_over_chord_along_central_ray():
    img = torch.full((1, 2, GEOM.rows, GEOM.cols), 3.0, dtype=torch.float64)
    img[:, 1] *= 2
    pose = GEOM.poses(torch.tensor([0.0], dtype=torch.float64))
    vol = backproject(img, _affine(), pose, GEOM, SHAPE)
    # the central voxel column lies on the central ray (PA: along axis j = anterior), whose
    # chord is the volume depth 36 * 1.9 mm; the voxel grid is centred, so with an even detector
    # the central ray falls between the middle voxels: average the four around it
    centre = vol[0, :, 19:21, :, 21:23].mean(dim=(1, 3))  # (C, H)
    torch.testing.assert_close(centre[0], torch.full((36,), 3.0 / (36 * 1.9), dtype=torch.float64), rtol=2e-3, atol=0)
    torch.testing.assert_close(vol[:, 1], 2 * vol[:, 0])


def test_bp_outside_detector_is_zero_and_batched_matches_single():
    small = ConeBeamGeometry(sdd=1200.0, sid=1000.0, detector_shape=(10, 10), pixel_spacing=2.0)
    imgs = torch.rand(2, 1, 10, 10, dtype=torch.float64) + 1
    poses = small.poses(torch.tensor([0.0, 40.0], dtype=torch.float64))
    affines = torch.stack([_affine(), _affine() * torch.tensor([[1.0], [1.0], [1.0], [1.0]], dtype=torch.float64)])
    both = backproject(imgs, affines, poses, small, SHAPE)
    for i in range(2):
        torch.testing.assert_close(both[i:i + 1], backproject(imgs[i:i + 1], affines[i], poses[i:i + 1], small, SHAPE))
    # a 20 mm detector only covers a thin cone: corner voxels get nothing
    assert both[0, 0, 0, 0, 0] == 0 and both[0, 0, 20, 18, 22] > 0


def test_bp_differentiable_and_chunking_invariant():
    img = _smooth_image().requires_grad_(True)
    pose = GEOM.poses(torch.tensor([10.0], dtype=torch.float64))
    a = backproject(img, _affine(), pose, GEOM, SHAPE)
    b = backproject(img, _affine(), pose, GEOM, SHAPE, memory_budget_mib=0.5)
    torch.testing.assert_close(a, b)
    a.sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
