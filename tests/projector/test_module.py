import io

import pytest
import torch
from support.operator_checks import assert_adjoint_identity

from xraysyn.geometry import ConeBeamGeometry
from xraysyn.projector import backproject, forward_project
from xraysyn.projector.module import ForwardProjector

GEOM = ConeBeamGeometry(sdd=900.0, sid=600.0, detector_shape=(6, 8), pixel_spacing=(7.0, 6.0))
AFFINE = torch.diag(torch.tensor([5.0, 5.0, 5.0, 1.0], dtype=torch.float64))


def test_module_equals_the_functional_api():
    volume = torch.rand(2, 2, 8, 8, 8, dtype=torch.float64)
    poses = GEOM.poses(torch.tensor([-10.0, 0.0, 5.0, 15.0]), dtype=torch.float64)
    fp = ForwardProjector(GEOM, num_samples=20, backend="reference")
    assert torch.equal(fp(volume, AFFINE, poses),
                       forward_project(volume, AFFINE, poses, GEOM, num_samples=20, backend="reference"))
    assert torch.equal(fp.backproject(fp(volume, AFFINE, poses)[:2, :1], AFFINE, poses[:2], (8, 8, 8)),
                       backproject(fp(volume, AFFINE, poses)[:2, :1], AFFINE, poses[:2], GEOM, (8, 8, 8),
                                   backend="reference"))


def test_adjoint_identity_through_the_module():
    """<FP v, w> = <v, FPᵀ w> in float64."""
    gen = torch.Generator().manual_seed(1)
    volume = torch.rand(2, 1, 8, 8, 8, dtype=torch.float64, generator=gen)
    poses = GEOM.poses(torch.tensor([-20.0, 12.0]), dtype=torch.float64)
    fp = ForwardProjector(GEOM, num_samples=16, backend="reference")
    weights = torch.rand(2, 1, 6, 8, dtype=torch.float64, generator=gen)
    assert_adjoint_identity(lambda x: fp(x, AFFINE, poses),
                            lambda y: fp.adjoint(y, AFFINE, poses, (8, 8, 8), num_volumes=2), volume, weights)


def test_geometry_survives_state_dict_and_dtype_casts():
    fp = ForwardProjector(GEOM, num_samples=16)
    fp.to(torch.bfloat16)  # must not round the geometry
    assert fp.geometry == GEOM
    buffer = io.BytesIO()
    torch.save(fp.state_dict(), buffer)
    other = ForwardProjector(ConeBeamGeometry(detector_shape=(4, 4), pixel_spacing=1.0))
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert other.geometry == GEOM


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="geometry"):
        ForwardProjector("not a geometry")
    with pytest.raises(ValueError, match="backend"):
        ForwardProjector(GEOM, backend="cuda-fast")
