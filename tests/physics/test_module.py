"""The CT2Xray modules against the functional API (bit for bit on CPU), their buffers under ``.to`` and a
state-dict round trip, and gradcheck of a tiny float64 case with respect to the volume."""

import io

import numpy as np
import pytest
import torch
from support.operator_checks import assert_gradcheck, ct_away_from_kinks

from xraysyn.geometry import ConeBeamGeometry
from xraysyn.physics import (
    CT2Xray,
    RadiographFromThickness,
    Spectrum,
    ct2xray,
    radiograph_from_thickness,
    tube_spectrum,
)
from xraysyn.physics.materials import AIR, BONE, TISSUE

GEOMETRY = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(6, 7), pixel_spacing=(9.0, 8.0))
FIELDS = ("image", "i_atten", "line_integral", "thickness")


def _case(dtype=torch.float32, seed=0, batch=2, views=2, shape=(6, 5, 7)):
    gen = torch.Generator().manual_seed(seed)
    ct = (torch.rand(batch, 1, *shape, generator=gen, dtype=torch.float64) * 1800 - 900).to(dtype)
    mask = torch.rand(batch, 1, *shape, generator=gen, dtype=torch.float64).to(dtype)
    affine = torch.diag(torch.tensor([5.0, 6.0, 4.5, 1.0], dtype=dtype))
    poses = GEOMETRY.poses(torch.rand(batch * views, generator=gen) * 60 - 30, dtype=dtype)
    return ct, mask, affine, poses


def _assert_equal(got, want):
    assert got.materials == want.materials
    for name in FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name


@pytest.mark.parametrize("air_threshold_hu", [None, -500.0], ids=["2mat", "3mat"])
def test_forward_equals_the_functional_ct2xray_bit_for_bit(air_threshold_hu):
    ct, mask, affine, poses = _case()
    spectrum = tube_spectrum(90.0)
    module = CT2Xray(GEOMETRY, spectrum, air_threshold_hu=air_threshold_hu, num_samples=9)
    got = module(ct, mask, affine, poses)
    want = ct2xray(ct, mask, affine, poses, GEOMETRY, spectrum, air_threshold_hu=air_threshold_hu, num_samples=9)
    assert float(want.i_atten.min()) < 0.9, "the test must attenuate noticeably"
    _assert_equal(got, want)
    assert got.materials == ((BONE, TISSUE) if air_threshold_hu is None else (BONE, TISSUE, AIR))


def test_radiograph_from_thickness_equals_the_functional_one():
    gen = torch.Generator().manual_seed(2)
    thickness = torch.rand(3, 2, 4, 5, generator=gen) * 20
    spectrum = Spectrum(np.linspace(30.0, 110.0, 40), np.linspace(1.0, 2.0, 40))
    module = CT2Xray(GEOMETRY, spectrum)
    _assert_equal(module.radiograph_from_thickness(thickness), radiograph_from_thickness(thickness, spectrum))
    _assert_equal(RadiographFromThickness()(thickness), radiograph_from_thickness(thickness))
    with pytest.raises(ValueError, match="3 material channels but materials lists 2"):
        module.radiograph_from_thickness(torch.zeros(1, 3, 2, 2))


def test_buffers_follow_to_and_a_float64_module_equals_the_float64_functional_api():
    module = CT2Xray(GEOMETRY, tube_spectrum(90.0), num_samples=9)
    names = {name for name, _ in module.named_buffers()}
    assert names == {"radiograph.energies_keV", "radiograph.weights", "radiograph.log_weights",
                     "radiograph.mass_attenuation"}
    assert all(b.dtype == torch.float64 for b in module.buffers())
    assert module.radiograph.mass_attenuation.shape == (2, module.radiograph.energies_keV.numel())
    assert float(module.radiograph.weights.sum()) == pytest.approx(1.0, abs=1e-12)
    ct, mask, affine, poses = _case(dtype=torch.float64)
    module = module.to(torch.float64)
    _assert_equal(module(ct, mask, affine, poses),
                  ct2xray(ct, mask, affine, poses, GEOMETRY, tube_spectrum(90.0), num_samples=9))
    module.float()  # rounds the buffers; float32 results are unchanged
    assert all(b.dtype == torch.float32 for b in module.buffers())
    ct32, mask32, affine32, poses32 = (x.float() for x in (ct, mask, affine, poses))
    _assert_equal(module(ct32, mask32, affine32, poses32),
                  ct2xray(ct32, mask32, affine32, poses32, GEOMETRY, tube_spectrum(90.0), num_samples=9))


def test_state_dict_round_trip_restores_spectrum_materials_geometry_and_sampling():
    other_geometry = ConeBeamGeometry(sdd=320.0, sid=210.0, detector_shape=(6, 7), pixel_spacing=(8.5, 8.0),
                                      principal_point=(2.0, 3.5))
    source = CT2Xray(other_geometry, tube_spectrum(70.0), air_threshold_hu=-400.0, step_mm=2.5)
    state = source.state_dict()
    assert "radiograph.mass_attenuation" in state and "_extra_state" in state
    target = CT2Xray(GEOMETRY, tube_spectrum(120.0), num_samples=9)
    target.load_state_dict(state)
    assert target.geometry == other_geometry and target.air_threshold_hu == -400.0
    assert target.radiograph.materials == (BONE, TISSUE, AIR)
    ct, mask, affine, poses = _case(seed=3)
    _assert_equal(target(ct, mask, affine, poses), source(ct, mask, affine, poses))
    stream = io.BytesIO()
    torch.save(state, stream)
    stream.seek(0)
    again = CT2Xray(GEOMETRY)
    again.load_state_dict(torch.load(stream, weights_only=True))  # plain tensors, numbers and strings
    _assert_equal(again(ct, mask, affine, poses), source(ct, mask, affine, poses))


def test_gradcheck_wrt_the_volume_and_mask():
    geometry = ConeBeamGeometry(detector_shape=(4, 4), pixel_spacing=8.0)
    module = CT2Xray(geometry, Spectrum(np.array([40.0, 60.0, 90.0]), np.array([0.3, 0.4, 0.3]))).double()
    affine = torch.diag(torch.tensor([6.0, 6.0, 6.0, 1.0], dtype=torch.float64))
    poses = geometry.poses([0.0, 25.0], [0.0, 10.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(4)
    hu, mask = ct_away_from_kinks((5, 5, 5), gen)
    assert_gradcheck(lambda h, m: module(h, m, affine, poses).image, (hu, mask), eps=1e-6, atol=1e-7, rtol=1e-4)


def test_bad_settings_raise_one_clear_error():
    with pytest.raises(ValueError, match="geometry must be a ConeBeamGeometry"):
        CT2Xray((6, 7))
    with pytest.raises(ValueError, match="backend must be one of"):
        CT2Xray(GEOMETRY, backend="cuda")
    with pytest.raises(ValueError, match="implementation must be one of"):
        CT2Xray(GEOMETRY, implementation="fused")
    with pytest.raises(ValueError, match="spectrum must be a Spectrum"):
        RadiographFromThickness([60.0])
    with pytest.raises(ValueError, match="materials must be a non-empty sequence"):
        RadiographFromThickness(materials="bone")
