"""Adjoint identity, gradcheck (volume and pose), and backend agreement."""

import pytest
import torch
from support.operator_checks import assert_adjoint_identity, assert_gradcheck

from xraysyn.geometry import ConeBeamGeometry, carm_poses
from xraysyn.projector import forward_project, forward_project_adjoint

GEOM = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(7, 6), pixel_spacing=(6.0, 7.0))


def _affine(spacing=(4.0, 3.5, 3.0), dtype=torch.float64):
    a = torch.eye(4, dtype=dtype)
    a[0, 0], a[1, 1], a[2, 2] = spacing
    a[0, 1] = 0.4  # a slightly sheared affine exercises the general voxel mapping
    return a


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("sampling", [dict(), dict(num_samples=9), dict(step_mm=0.7)])
def test_adjoint_identity(backend, sampling):
    b, v, c, shape = 2, 3, 2, (6, 7, 5)
    vol = torch.rand(b, c, *shape, dtype=torch.float64)
    poses = GEOM.poses(torch.tensor([-30.0, 5.0, 40.0, 10.0, 80.0, -60.0], dtype=torch.float64),
                       torch.tensor([0.0, 10.0, -15.0, 5.0, 0.0, 20.0], dtype=torch.float64))
    affines = torch.stack([_affine(), _affine((3.0, 3.0, 4.5))])
    w = torch.rand(b * v, c, *GEOM.detector_shape, dtype=torch.float64)
    assert_adjoint_identity(lambda x: forward_project(x, affines, poses, GEOM, backend=backend, **sampling),
                            lambda y: forward_project_adjoint(y, affines, poses, GEOM, shape, backend=backend,
                                                              **sampling),
                            vol, w)


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_gradcheck_volume(backend):
    vol = torch.rand(1, 2, 4, 5, 4, dtype=torch.float64, requires_grad=True)
    poses = GEOM.poses(torch.tensor([20.0, -35.0], dtype=torch.float64), 10.0)
    f = lambda x: forward_project(x, _affine((8.0, 7.0, 8.0)), poses, GEOM, backend=backend, num_samples=11)
    assert_gradcheck(f, (vol,), eps=1e-6, atol=1e-6)


def test_gradcheck_pose_angles_translation_and_isocenter():
    # a smooth (Gaussian) volume keeps finite differences away from trilinear kinks
    shape = (7, 8, 7)
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing="ij")
    r2 = sum((g - (s - 1) / 2) ** 2 for g, s in zip(grids, shape))
    vol = torch.exp(-r2 / 6.0)[None, None]
    affine = _affine((6.0, 5.0, 6.0))
    angles = torch.tensor([15.0, -25.0], dtype=torch.float64, requires_grad=True)
    elev = torch.tensor([5.0, -10.0], dtype=torch.float64, requires_grad=True)
    trans = torch.tensor([3.0, -2.0, 4.0], dtype=torch.float64, requires_grad=True)
    iso = torch.tensor([1.0, 2.0, -1.5], dtype=torch.float64, requires_grad=True)

    def f(a, e, t, i):
        poses = carm_poses(a, e, sid=GEOM.sid, translation_mm=t)
        return forward_project(vol, affine, poses, GEOM, num_samples=13, isocenter=i, backend="reference")

    assert_gradcheck(f, (angles, elev, trans, iso), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_backends_agree_float32():
    vol = torch.rand(3, 2, 12, 10, 11)
    affines = torch.stack([_affine(dtype=torch.float32)] * 3)
    poses = GEOM.poses(torch.tensor([0.0, 33.0, -71.0]), torch.tensor([0.0, -12.0, 25.0]))
    ref = forward_project(vol, affines, poses, GEOM, backend="reference")
    fast = forward_project(vol, affines, poses, GEOM, backend="numba")
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-4)
    g = torch.rand_like(ref)
    gr = forward_project_adjoint(g, affines, poses, GEOM, vol.shape[2:], backend="reference")
    gn = forward_project_adjoint(g, affines, poses, GEOM, vol.shape[2:], backend="numba")
    torch.testing.assert_close(gn, gr, rtol=1e-4, atol=1e-4)


def test_autograd_volume_gradient_is_the_adjoint():
    vol = torch.rand(1, 1, 6, 6, 6, dtype=torch.float64, requires_grad=True)
    poses = GEOM.poses(torch.tensor([12.0], dtype=torch.float64))
    w = torch.rand(1, 1, *GEOM.detector_shape, dtype=torch.float64)
    (forward_project(vol, _affine(), poses, GEOM) * w).sum().backward()
    torch.testing.assert_close(vol.grad, forward_project_adjoint(w, _affine(), poses, GEOM, (6, 6, 6)))
