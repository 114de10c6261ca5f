"""CT2Xray, attenuation and DRR mode against closed forms, float64 references and gradcheck."""

import math

import numpy as np
import pytest
import torch
from support.operator_checks import assert_gradcheck, ct_away_from_kinks

from xraysyn.geometry import ConeBeamGeometry
from xraysyn.physics import (
    MaterialTable,
    Spectrum,
    attenuate,
    ct2xray,
    display_image,
    drr,
    material_density_volumes,
    material_thicknesses,
    tube_spectrum,
)

SPACING_MM = 4.0


def cube_case(n=8, hu_value=0.0, detector=(5, 5), pixel_mm=4.0):
    """A uniform n³ cube of HU ``hu_value``, spacing 4 mm, centred on the isocenter."""
    geometry = ConeBeamGeometry(detector_shape=detector, pixel_spacing=pixel_mm)
    hu = torch.full((1, 1, n, n, n), hu_value, dtype=torch.float64)
    affine = torch.diag(torch.tensor([SPACING_MM, SPACING_MM, SPACING_MM, 1.0], dtype=torch.float64))
    return geometry, hu, affine


def test_monochromatic_slab_is_beer_lambert():
    # Central pixel of an odd detector at azimuth 0 sees the cube along one axis: chord = n · spacing.
    n = 8
    geometry, hu, affine = cube_case(n)
    mask = torch.zeros_like(hu)
    poses = geometry.poses([0.0], dtype=torch.float64)
    result = ct2xray(hu, mask, affine, poses, geometry, Spectrum.monochromatic(60.0))
    chord_cm = n * SPACING_MM / 10.0
    density_at_0_hu = 1.03  # DeepDRR calibration at HU 0 (Unberath et al. 2018)
    mu_rho_tissue_60kev = 0.20304  # xraylib 4.3.0 CS_Total_CP("Tissue, Soft (ICRP)", 60)
    expected = math.exp(-mu_rho_tissue_60kev * density_at_0_hu * chord_cm)
    centre = result.i_atten[0, 0, 2, 2].item()
    assert centre == pytest.approx(expected, rel=1e-4)
    assert result.line_integral[0, 0, 2, 2].item() == pytest.approx(-math.log(expected), rel=1e-4)
    assert result.thickness[0, 1, 2, 2].item() == pytest.approx(density_at_0_hu * chord_cm, rel=1e-9)
    assert result.thickness[0, 0].abs().max().item() == 0.0


def test_polychromatic_attenuation_matches_float64_sum_and_beam_hardens():
    spectrum = Spectrum(np.array([40.0, 70.0, 100.0]), np.array([0.2, 0.5, 0.3]))
    table = MaterialTable.default()
    materials = ("cortical_bone_icrp", "soft_tissue_icrp")
    mu = np.stack([table.mass_attenuation(m, spectrum.energies_keV) for m in materials])
    t_tissue = np.linspace(0.0, 40.0, 41)
    t_bone = 0.1 * t_tissue
    thickness = torch.tensor(np.stack([t_bone, t_tissue])[None, :, None, :], dtype=torch.float64)
    i_atten, line_integral = attenuate(thickness, spectrum)
    expected = (spectrum.weights[:, None] * np.exp(-(mu[0][:, None] * t_bone + mu[1][:, None] * t_tissue))).sum(0)
    np.testing.assert_allclose(i_atten[0, 0, 0].numpy(), expected, rtol=1e-12)
    # Beam hardening: the effective attenuation per g/cm² decreases with thickness and stays
    # between the hardest and softest monochromatic values.
    effective = line_integral[0, 0, 0, 1:].numpy() / t_tissue[1:]
    assert np.all(np.diff(effective) < 0)
    mu_mix = mu[0] * 0.1 + mu[1]
    assert np.all(effective < mu_mix.max()) and np.all(effective > mu_mix.min())


def test_thick_bodies_neither_underflow_nor_give_nan_gradients():
    spectrum = tube_spectrum(120.0)
    thickness = torch.tensor([[[[1e4]], [[1e4]]]], dtype=torch.float32, requires_grad=True)
    i_atten, line_integral = attenuate(thickness, spectrum)
    line_integral.sum().backward()
    assert torch.isfinite(line_integral).all() and torch.isfinite(thickness.grad).all()
    # Asymptote: −log Σ w e^{−a t} → min(a) t − log w at argmin a (a = μ_bone + μ_tissue per E).
    table = MaterialTable.default()
    a = table.mass_attenuation("cortical_bone_icrp", spectrum.energies_keV) + table.mass_attenuation(
        "soft_tissue_icrp", spectrum.energies_keV)
    k = int(np.argmin(a))
    assert line_integral.item() == pytest.approx(a[k] * 1e4 - math.log(spectrum.weights[k]), rel=1e-5)
    assert i_atten.item() == 0.0  # the intensity itself underflows, harmlessly


def test_uniform_spectrum_is_the_papers_unweighted_sum_up_to_a_constant():
    energies = np.arange(20.0, 121.0, 10.0)
    thickness = torch.rand(2, 2, 3, 4, dtype=torch.float64) * 5
    i_uniform, _ = attenuate(thickness, Spectrum.uniform(energies))
    table = MaterialTable.default()
    mu = torch.as_tensor(np.stack([table.mass_attenuation(m, energies)
                                   for m in ("cortical_bone_icrp", "soft_tissue_icrp")]))
    paper = torch.exp(-torch.einsum("me,nmrc->nerc", mu, thickness)).sum(1, keepdim=True)
    torch.testing.assert_close(i_uniform * len(energies), paper)


def test_display_image_is_max_minus_i():
    i = torch.tensor([[[[0.2, 0.9], [0.5, 1.0]]]])
    torch.testing.assert_close(display_image(i), torch.tensor([[[[0.8, 0.1], [0.5, 0.0]]]]))


def test_air_channel_conserves_mass():
    geometry, hu, affine = cube_case(6, detector=(4, 4), pixel_mm=6.0)
    hu = hu.clone()
    hu[..., :2, :, :] = -1000.0
    hu[..., 3:5, 2:4, 2:4] = 900.0
    mask = (hu > 300).double()
    poses = geometry.poses([0.0, 40.0], dtype=torch.float64)
    two = material_thicknesses(hu, mask, affine, poses, geometry)
    three = material_thicknesses(hu, mask, affine, poses, geometry, air_threshold_hu=-500.0)
    assert three.shape[1] == 3 and float(three[:, 2].max()) > 0
    torch.testing.assert_close(three[:, 0], two[:, 0])
    torch.testing.assert_close(three[:, 1] + three[:, 2], two[:, 1])
    volumes = material_density_volumes(hu, mask, air_threshold_hu=-500.0)
    assert float(volumes[:, 2][hu[:, 0] >= -500.0].abs().max()) == 0.0


def test_gradcheck_through_ct2xray_wrt_volume_and_soft_mask():
    geometry = ConeBeamGeometry(detector_shape=(5, 5), pixel_spacing=8.0)
    affine = torch.diag(torch.tensor([6.0, 6.0, 6.0, 1.0], dtype=torch.float64))
    poses = geometry.poses([0.0, 25.0], [0.0, 10.0], dtype=torch.float64)
    hu, mask = ct_away_from_kinks((6, 6, 6))
    spectrum = Spectrum(np.array([40.0, 60.0, 90.0]), np.array([0.3, 0.4, 0.3]))

    def image(h, m):
        return ct2xray(h, m, affine, poses, geometry, spectrum).image

    assert_gradcheck(image, (hu, mask), eps=1e-6, atol=1e-7, rtol=1e-4)


def test_batch_of_volumes_equals_separate_calls():
    geometry = ConeBeamGeometry(detector_shape=(6, 7), pixel_spacing=5.0)
    affine = torch.diag(torch.tensor([5.0, 5.0, 5.0, 1.0]))
    hu = -200.0 + 1200.0 * torch.rand(2, 1, 8, 8, 8)
    mask = torch.rand(2, 1, 8, 8, 8)
    poses = geometry.poses([0.0, 15.0, -10.0, 30.0])
    batched = ct2xray(hu, mask, affine, poses, geometry)
    for b in range(2):
        single = ct2xray(hu[b:b + 1], mask[b:b + 1], affine, poses[2 * b:2 * b + 2], geometry)
        torch.testing.assert_close(batched.image[2 * b:2 * b + 2], single.image, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(batched.thickness[2 * b:2 * b + 2], single.thickness, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
def test_cpu_and_cuda_agree():
    geometry = ConeBeamGeometry(detector_shape=(16, 16), pixel_spacing=4.0)
    affine = torch.diag(torch.tensor([4.0, 4.0, 4.0, 1.0]))
    hu = -200.0 + 1200.0 * torch.rand(2, 1, 16, 16, 16)
    mask = torch.rand(2, 1, 16, 16, 16)
    poses = geometry.poses([0.0, 20.0, -10.0, 5.0])
    cpu = ct2xray(hu, mask, affine, poses, geometry)
    gpu = ct2xray(hu.cuda(), mask.cuda(), affine.cuda(), poses.cuda(), geometry)
    torch.testing.assert_close(gpu.image.cpu(), cpu.image, rtol=1e-4, atol=1e-5)


def test_drr_mode_is_the_line_integral_of_mu():
    n = 8
    geometry, hu, affine = cube_case(n, hu_value=500.0)
    poses = geometry.poses([0.0], dtype=torch.float64)
    line = drr(hu, affine, poses, geometry, energy_keV=60.0)
    mu_water_per_mm = 0.2059 / 10.0  # NIST water μ/ρ at 60 keV (Hubbell & Seltzer 1995) × 1 g/cm³
    expected = mu_water_per_mm * (1.0 + 500.0 / 1000.0) * n * SPACING_MM
    assert line[0, 0, 2, 2].item() == pytest.approx(expected, rel=2e-3)


def test_bad_inputs_raise_clear_errors():
    geometry, hu, affine = cube_case(4, detector=(3, 3))
    poses = geometry.poses([0.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="bone_mask shape"):
        ct2xray(hu, torch.zeros(1, 1, 4, 4, 3, dtype=torch.float64), affine, poses, geometry)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ct2xray(hu, torch.full_like(hu, 2.0), affine, poses, geometry)
    with pytest.raises(ValueError, match="ct_hu"):
        ct2xray(hu[0], torch.zeros_like(hu[0]), affine, poses, geometry)
    with pytest.raises(ValueError, match="material channels"):
        attenuate(torch.zeros(1, 3, 2, 2), tube_spectrum(120.0))
    with pytest.raises(ValueError, match="non-finite"):
        attenuate(torch.full((1, 2, 2, 2), float("nan")), tube_spectrum(120.0))
