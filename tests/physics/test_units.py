"""Unit conversions and the HU → density calibration against closed forms."""

import pytest
import torch

from xraysyn.physics.units import (
    DEEPDRR_CALIBRATION,
    HUDensityCalibration,
    areal_density_from_line_integral,
    cm_to_mm,
    density_to_hu,
    hu_to_density,
    hu_to_linear_attenuation,
    linear_attenuation_per_mm,
    mm_to_cm,
)


def deepdrr_formula(hu: torch.Tensor) -> torch.Tensor:
    # Unberath et al. 2018, written independently of the knot representation.
    return torch.clamp(torch.minimum(0.001029 * hu + 1.03, 0.0005886 * hu + 1.03), min=0.0)


def test_hu_to_density_matches_deepdrr_formula():
    hu = torch.linspace(-1200.0, 3000.0, 4201, dtype=torch.float64)
    torch.testing.assert_close(hu_to_density(hu), deepdrr_formula(hu), rtol=0, atol=1e-12)
    assert float(hu_to_density(torch.tensor([0.0]))) == pytest.approx(1.03)
    assert float(hu_to_density(torch.tensor([1000.0]))) == pytest.approx(1.6186)


def test_density_to_hu_round_trip():
    hu = torch.linspace(-990.0, 2500.0, 500, dtype=torch.float64)
    torch.testing.assert_close(density_to_hu(hu_to_density(hu)), hu, rtol=0, atol=1e-9)


def test_hu_to_density_gradient_is_the_local_slope():
    hu = torch.tensor([-500.0, 500.0], dtype=torch.float64, requires_grad=True)
    hu_to_density(hu).sum().backward()
    torch.testing.assert_close(hu.grad, torch.tensor([0.001029, 0.0005886], dtype=torch.float64))


def test_conversions():
    assert mm_to_cm(25.0) == 2.5 and cm_to_mm(2.5) == 25.0
    # 100 mm of water (1 g/cm³) is 10 g/cm².
    assert areal_density_from_line_integral(1.0 * 100.0) == pytest.approx(10.0)
    # Water at 60 keV: μ/ρ 0.2059 cm²/g → μ = 0.2059 /cm = 0.02059 /mm.
    assert linear_attenuation_per_mm(0.2059, 1.0) == pytest.approx(0.02059)


def test_hu_to_linear_attenuation_follows_hu_definition():
    mu_w = 0.02
    hu = torch.tensor([-1000.0, -1500.0, 0.0, 1000.0])
    torch.testing.assert_close(hu_to_linear_attenuation(hu, mu_w), torch.tensor([0.0, 0.0, 0.02, 0.04]))
    with pytest.raises(ValueError, match="water_mu_per_mm"):
        hu_to_linear_attenuation(hu, -1.0)


def test_bad_calibrations_and_inputs():
    with pytest.raises(ValueError, match="hu_knots"):
        HUDensityCalibration((0.0, -1.0), (0.0, 1.0), 0.001)
    with pytest.raises(ValueError, match="density_knots"):
        HUDensityCalibration((-1000.0, 0.0), (1.0, 0.5), 0.001)
    with pytest.raises(ValueError, match="slope_above"):
        HUDensityCalibration((-1000.0, 0.0), (0.0, 1.0), 0.0)
    with pytest.raises(ValueError, match="hu"):
        hu_to_density(torch.tensor([1, 2, 3]))
    assert DEEPDRR_CALIBRATION.source
