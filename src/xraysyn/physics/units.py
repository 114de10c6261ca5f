"""Unit conversions and the HU → mass-density calibration.

Internal units of the package: lengths in mm, energies in keV, linear attenuation μ in 1/mm,
mass density ρ in g/cm³, mass attenuation μ/ρ in cm²/g, areal (mass) thickness t in g/cm².
Hounsfield units appear only at the CT boundary.

The projector integrates voxel values along rays in mm, so projecting a density volume
(g/cm³) gives g/cm³ · mm; :func:`areal_density_from_line_integral` turns that into g/cm²
(divide by :data:`MM_PER_CM`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "MM_PER_CM",
    "HU_AIR",
    "HU_PER_RELATIVE_ATTENUATION",
    "mm_to_cm",
    "cm_to_mm",
    "areal_density_from_line_integral",
    "linear_attenuation_per_mm",
    "HUDensityCalibration",
    "DEEPDRR_CALIBRATION",
    "hu_to_density",
    "density_to_hu",
    "hu_to_linear_attenuation",
]

MM_PER_CM = 10.0
"""Millimetres per centimetre."""

HU_PER_RELATIVE_ATTENUATION = 1000.0
"""Definition of the HU scale: HU = 1000 · (μ − μ_water) / μ_water."""

HU_AIR = -HU_PER_RELATIVE_ATTENUATION
"""Hounsfield value of air (μ ≈ 0) by definition of the HU scale."""


def mm_to_cm(length_mm):
    """Length in mm → cm (tensor, array or number)."""
    return length_mm / MM_PER_CM


def cm_to_mm(length_cm):
    """Length in cm → mm (tensor, array or number)."""
    return length_cm * MM_PER_CM


def areal_density_from_line_integral(density_mm):
    """Projected density (g/cm³ × mm, what the projector returns for a density volume) → g/cm²."""
    return density_mm / MM_PER_CM


def linear_attenuation_per_mm(mass_attenuation_cm2_per_g, density_g_per_cm3):
    """μ in 1/mm from μ/ρ (cm²/g) and ρ (g/cm³): μ/ρ · ρ is in 1/cm, divided by :data:`MM_PER_CM`."""
    return mass_attenuation_cm2_per_g * density_g_per_cm3 / MM_PER_CM


@dataclass(frozen=True)
class HUDensityCalibration:
    """Piecewise-linear map from Hounsfield units to mass density (g/cm³).

    Between the knots the map is linear; below the first knot it is clamped to the first
    density; above the last knot it continues with ``slope_above`` (g/cm³ per HU). The map must be
    non-decreasing (it is then invertible above the first knot, see :func:`density_to_hu`).

    Attributes:
        hu_knots: increasing HU values.
        density_knots: densities (g/cm³) at the knots, non-decreasing, ≥ 0.
        slope_above: density slope beyond the last knot (g/cm³ per HU), > 0.
        source: citation of the fit.
    """

    hu_knots: tuple[float, ...]
    density_knots: tuple[float, ...]
    slope_above: float
    source: str = ""

    def __post_init__(self):
        if len(self.hu_knots) < 2 or len(self.hu_knots) != len(self.density_knots):
            raise ValueError(
                f"hu_knots and density_knots must have the same length >= 2, got {len(self.hu_knots)} "
                f"and {len(self.density_knots)}")
        if any(b <= a for a, b in zip(self.hu_knots, self.hu_knots[1:])):
            raise ValueError(f"hu_knots must be strictly increasing, got {self.hu_knots}")
        if any(b < a for a, b in zip(self.density_knots, self.density_knots[1:])) or min(self.density_knots) < 0:
            raise ValueError(f"density_knots must be non-negative and non-decreasing, got {self.density_knots}")
        if not (math.isfinite(self.slope_above) and self.slope_above > 0):
            raise ValueError(f"slope_above must be a positive finite g/cm³ per HU, got {self.slope_above}")


# DeepDRR's conversion (Unberath et al., "DeepDRR - A Catalyst for Machine Learning in
# Fluoroscopy-guided Procedures", MICCAI 2018): ρ = min(0.001029·HU + 1.03, 0.0005886·HU + 1.03),
# clipped at 0. As knots: ρ reaches 0 at HU = -1.03 / 0.001029; both lines meet at HU 0, ρ 1.03.
_DEEPDRR_SLOPE_BELOW = 0.001029
_DEEPDRR_SLOPE_ABOVE = 0.0005886
_DEEPDRR_DENSITY_AT_0_HU = 1.03
DEEPDRR_CALIBRATION = HUDensityCalibration(
    hu_knots=(-_DEEPDRR_DENSITY_AT_0_HU / _DEEPDRR_SLOPE_BELOW, 0.0),
    density_knots=(0.0, _DEEPDRR_DENSITY_AT_0_HU),
    slope_above=_DEEPDRR_SLOPE_ABOVE,
    source="Unberath et al., DeepDRR, MICCAI 2018: min(0.001029 HU + 1.03, 0.0005886 HU + 1.03), >= 0",
)


def _knots(calibration: HUDensityCalibration, ref: torch.Tensor):
    hu = torch.tensor(calibration.hu_knots, dtype=ref.dtype, device=ref.device)
    rho = torch.tensor(calibration.density_knots, dtype=ref.dtype, device=ref.device)
    return hu, rho


def hu_to_density(hu: torch.Tensor, calibration: HUDensityCalibration = DEEPDRR_CALIBRATION) -> torch.Tensor:
    """Mass density (g/cm³) of CT voxels, same shape as ``hu``; differentiable w.r.t. ``hu``.

    Args:
        hu: CT values in Hounsfield units, any shape, floating point.
        calibration: the piecewise-linear fit; default :data:`DEEPDRR_CALIBRATION`.
    """
    if not isinstance(hu, torch.Tensor) or not hu.is_floating_point():
        raise ValueError(f"hu must be a floating-point torch tensor, got {type(hu).__name__}"
                         + (f" of dtype {hu.dtype}" if isinstance(hu, torch.Tensor) else ""))
    knots_hu, knots_rho = _knots(calibration, hu)
    slopes = torch.cat([(knots_rho[1:] - knots_rho[:-1]) / (knots_hu[1:] - knots_hu[:-1]),
                        knots_rho.new_tensor([calibration.slope_above])])
    # Segment s covers [knot_s, knot_{s+1}); the last one extends to +inf. Below knot_0: clamp.
    segment = (torch.searchsorted(knots_hu, hu.detach().contiguous(), right=True) - 1).clamp(min=0)
    below = hu < knots_hu[0]
    rho = knots_rho[segment] + slopes[segment] * (hu - knots_hu[segment])
    return torch.where(below, knots_rho[0].expand_as(rho), rho)


def density_to_hu(density: torch.Tensor, calibration: HUDensityCalibration = DEEPDRR_CALIBRATION) -> torch.Tensor:
    """Inverse of :func:`hu_to_density` for densities above the first knot's density (g/cm³ → HU).

    Flat segments (equal densities at two knots) map to their lower HU. Densities at or below the
    first knot's density map to the first knot's HU.
    """
    if not isinstance(density, torch.Tensor) or not density.is_floating_point():
        raise ValueError("density must be a floating-point torch tensor")
    knots_hu, knots_rho = _knots(calibration, density)
    seg = (torch.searchsorted(knots_rho, density.detach().contiguous(), right=False) - 1).clamp(min=0)
    last = len(calibration.hu_knots) - 1
    inside = seg < last
    seg_c = seg.clamp(max=last - 1)
    dr = knots_rho[seg_c + 1] - knots_rho[seg_c]
    dh = knots_hu[seg_c + 1] - knots_hu[seg_c]
    safe = torch.where(dr > 0, dr, torch.ones_like(dr))
    hu_in = knots_hu[seg_c] + (density - knots_rho[seg_c]) * dh / safe
    hu_above = knots_hu[last] + (density - knots_rho[last]) / calibration.slope_above
    hu = torch.where(inside, hu_in, hu_above)
    return torch.where(density <= knots_rho[0], knots_hu[0].expand_as(hu), hu)


def hu_to_linear_attenuation(hu: torch.Tensor, water_mu_per_mm: float) -> torch.Tensor:
    """μ (1/mm) from HU by the definition of the HU scale, μ = μ_water (1 + HU/1000), clipped at 0.

    Args:
        hu: CT values in HU, any shape.
        water_mu_per_mm: linear attenuation of water (1/mm) at the energy of interest.
    """
    if not (isinstance(water_mu_per_mm, (int, float)) and math.isfinite(water_mu_per_mm) and water_mu_per_mm > 0):
        raise ValueError(f"water_mu_per_mm must be a positive finite 1/mm, got {water_mu_per_mm!r}")
    return torch.clamp(water_mu_per_mm * (1.0 + hu / HU_PER_RELATIVE_ATTENUATION), min=0.0)
