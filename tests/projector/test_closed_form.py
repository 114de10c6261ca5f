"""FP against closed-form chord lengths through spheres and boxes (independent float64 truth)."""

import numpy as np
import pytest
import torch

from xraysyn.geometry import ConeBeamGeometry
from xraysyn.projector import forward_project

from support.projector_truth import box_chords, pixel_rays, sphere_chords

SPACING = (2.0, 1.6, 1.8)  # mm along i, j, k
SHAPE = (40, 48, 44)
GEOM = ConeBeamGeometry(sdd=1200.0, sid=1000.0, detector_shape=(48, 48), pixel_spacing=2.4)
ANGLES = [(0.0, 0.0), (25.0, 0.0), (-40.0, 15.0), (90.0, -10.0)]


def _affine(origin_mm):
    a = torch.eye(4, dtype=torch.float64)
    a[0, 0], a[1, 1], a[2, 2] = SPACING
    a[:3, 3] = torch.tensor(origin_mm, dtype=torch.float64)
    return a


def _centres(affine):
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), -1).astype(float)
    return idx @ affine[:3, :3].numpy().T + affine[:3, 3].numpy()


def _check(volume, affine, truth_fn, backend, isocenter=None):
    vol = torch.as_tensor(volume, dtype=torch.float32)[None, None]
    iso = np.asarray(isocenter if isocenter is not None else (affine[:3, :3] @ (torch.tensor(SHAPE, dtype=torch.float64) - 1.0)
                                                                / 2 + affine[:3, 3]).numpy())
    for az, el in ANGLES:
        pose = GEOM.poses(az, el)
        img = forward_project(vol, affine.float(), pose, GEOM, backend=backend,
                              isocenter=None if isocenter is None else torch.tensor(isocenter))[0, 0].double().numpy()
        source, pix = pixel_rays(az, el, GEOM.sdd, GEOM.sid, GEOM.rows, GEOM.cols, GEOM.pixel_spacing[0], iso)
        truth = truth_fn(source, pix)
        long = truth >= 10 * min(SPACING)
        assert long.sum() > 100, "test geometry must produce long chords"
        rel = np.abs(img[long] - truth[long]) / truth[long]
        assert rel.max() < 0.01, (az, el, rel.max())
        # rays missing the object integrate to ~0
        assert np.abs(img[truth == 0]).max(initial=0) < 0.05 * truth.max()


SPHERE_SPACING = (1.2, 1.0, 1.1)
SPHERE_SHAPE = (56, 60, 58)


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("offset_mm", [(0.0, 0.0, 0.0), (6.0, -5.0, 4.0)])
def test_sphere_chords(backend, offset_mm):
    """Uniform ball (value 1, anti-aliased surface) at and off the isocenter.

    Compared on pixels whose chord is at least 10 voxels and whose ray passes within 0.7 radius
    of the centre: grazing rays are excluded because there the partial-volume blur of any voxel
    model (trilinear interpolation of a voxelised surface) exceeds 1 %; the uniform-box tests
    below cover rays up to the very edge exactly.
    """
    affine = torch.eye(4, dtype=torch.float64)
    for axis, (sp, n) in enumerate(zip(SPHERE_SPACING, SPHERE_SHAPE)):
        affine[axis, axis] = sp
        affine[axis, 3] = -sp * (n - 1) / 2 + 3.0  # volume centre a few mm off the world origin
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in SPHERE_SHAPE], indexing="ij"), -1).astype(float)
    centres = idx @ affine[:3, :3].numpy().T + affine[:3, 3].numpy()
    iso = centres.reshape(-1, 3).mean(0)
    center = iso + np.asarray(offset_mm)
    radius = 24.0
    h = float(np.mean(SPHERE_SPACING))
    volume = np.clip((radius - np.linalg.norm(centres - center, axis=-1)) / h + 0.5, 0.0, 1.0)
    vol = torch.as_tensor(volume, dtype=torch.float32)[None, None]
    for az, el in ANGLES:
        img = forward_project(vol, affine.float(), GEOM.poses(az, el), GEOM, backend=backend)[0, 0].double().numpy()
        source, pix = pixel_rays(az, el, GEOM.sdd, GEOM.sid, GEOM.rows, GEOM.cols, GEOM.pixel_spacing[0], iso)
        truth = sphere_chords(source, pix, center, radius)
        core = (truth >= 10 * max(SPHERE_SPACING)) & (sphere_chords(source, pix, center, 0.7 * radius) > 0)
        assert core.sum() > 50
        rel = np.abs(img[core] - truth[core]) / truth[core]
        assert rel.max() < 0.01, (az, el, rel.max())
        outside = sphere_chords(source, pix, center, radius + 2 * h) == 0
        assert np.abs(img[outside]).max(initial=0) < 1e-4 * truth.max()


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("isocenter", [None, (20.0, 48.0, 60.0)])
def test_uniform_volume_integrates_to_box_chord(backend, isocenter):
    """A uniform volume is a box with exact chords, at the isocenter and off it."""
    affine = _affine((5.0, -20.0, 30.0))
    lo = affine[:3, 3].numpy() - 0.5 * np.asarray(SPACING)
    hi = lo + np.asarray(SHAPE) * np.asarray(SPACING)
    volume = np.full(SHAPE, 2.5)
    _check(volume, affine, lambda s, p: 2.5 * box_chords(s, p, lo, hi), backend, isocenter=isocenter)
