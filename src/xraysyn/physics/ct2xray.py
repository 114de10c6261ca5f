"""CT2Xray (paper eq. 3-6): material decomposition, projection to thickness maps, attenuation;
and the DRR mode (plain line integral of μ at one effective energy, for the 3DPN-DRR baseline).

Pipeline: HU → density ρ (g/cm³, :func:`hu_to_density`) → per-material density volumes
``ρ · mask_m`` (B, M, D, H, W) → one projector call for all materials (channels) → divide by
10 (g/cm³ · mm → g/cm²) → polychromatic attenuation (:mod:`xraysyn.physics.attenuation`).

Air is treated as tissue by default, as in the paper; ``air_threshold_hu`` adds a third
material channel ``air`` (voxels below the threshold, hard assignment, NIST dry air μ/ρ).
Soft (probabilistic) bone masks in [0, 1] are accepted; gradients reach both CT and mask.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from xraysyn.geometry import ConeBeamGeometry
from xraysyn.physics.attenuation import attenuate, attenuate_with_coefficients, display_image, spectral_coefficients
from xraysyn.physics.attenuation.coefficients import check_coefficients, check_spectrum
from xraysyn.physics.materials import AIR, BONE, DEFAULT_MATERIALS, TISSUE, MaterialTable
from xraysyn.physics.spectra import DEFAULT_KVP, Spectrum, tube_spectrum
from xraysyn.physics.units import (
    DEEPDRR_CALIBRATION,
    HUDensityCalibration,
    areal_density_from_line_integral,
    hu_to_density,
    hu_to_linear_attenuation,
    linear_attenuation_per_mm,
)
from xraysyn.projector import forward_project

__all__ = [
    "CT2XrayResult",
    "material_names",
    "material_density_volumes",
    "material_thicknesses",
    "project_and_attenuate",
    "radiograph_from_thickness",
    "ct2xray",
    "drr",
    "default_drr_energy_keV",
]


@dataclass
class CT2XrayResult:
    """Output of CT2Xray for N = B·V views.

    Attributes:
        image: ``(N, 1, rows, cols)`` displayed radiograph ``max(I_atten) − I_atten`` (eq. 5).
        i_atten: ``(N, 1, rows, cols)`` transmitted fraction of the beam (eq. 6, normalised weights).
        line_integral: ``(N, 1, rows, cols)`` ``−log(i_atten)``, finite for any thickness.
        thickness: ``(N, M, rows, cols)`` areal densities t_m in g/cm² (channel order ``materials``).
        materials: material names of the thickness channels.
    """

    image: torch.Tensor
    i_atten: torch.Tensor
    line_integral: torch.Tensor
    thickness: torch.Tensor
    materials: tuple[str, ...]


def material_names(air_threshold_hu: float | None = None) -> tuple[str, ...]:
    """Channel names of :func:`material_thicknesses`: (bone, tissue) or (bone, tissue, air)."""
    return DEFAULT_MATERIALS if air_threshold_hu is None else (BONE, TISSUE, AIR)


def _check_volume(ct_hu, bone_mask) -> None:
    if not isinstance(ct_hu, torch.Tensor) or ct_hu.dim() != 5 or ct_hu.shape[1] != 1 or not ct_hu.is_floating_point():
        shape = tuple(ct_hu.shape) if isinstance(ct_hu, torch.Tensor) else type(ct_hu).__name__
        raise ValueError(f"ct_hu must be a floating-point tensor (B, 1, D, H, W) in HU, got {shape}")
    if not isinstance(bone_mask, torch.Tensor):
        raise ValueError(f"bone_mask must be a tensor, got {type(bone_mask).__name__}")
    if tuple(bone_mask.shape) != tuple(ct_hu.shape):
        raise ValueError(f"bone_mask shape {tuple(bone_mask.shape)} must match ct_hu shape {tuple(ct_hu.shape)}")
    if not torch.isfinite(ct_hu).all():
        raise ValueError("ct_hu contains non-finite values (NaN or inf)")
    mask = bone_mask.detach()
    if not bool(((mask >= 0) & (mask <= 1)).all()):
        raise ValueError(f"bone_mask values must lie in [0, 1] (a probability), got range "
                         f"[{float(mask.min()):g}, {float(mask.max()):g}]")


def material_density_volumes(ct_hu: torch.Tensor, bone_mask: torch.Tensor, *,
                             calibration: HUDensityCalibration = DEEPDRR_CALIBRATION,
                             air_threshold_hu: float | None = None) -> torch.Tensor:
    """Per-material density volumes ``ρ · mask_m``, ``(B, M, D, H, W)`` in g/cm³ (Σ_m = ρ).

    Args:
        ct_hu: ``(B, 1, D, H, W)`` CT in HU.
        bone_mask: same shape, bone probability in [0, 1] (binary or soft).
        calibration: HU → density fit (default DeepDRR's, Unberath et al. 2018).
        air_threshold_hu: if given, voxels with HU below it form a third channel ``air``.
    """
    _check_volume(ct_hu, bone_mask)
    mask = bone_mask.to(ct_hu.dtype)
    density = hu_to_density(ct_hu, calibration)
    bone = density * mask
    rest = density * (1.0 - mask)
    if air_threshold_hu is None:
        return torch.cat([bone, rest], dim=1)
    is_air = (ct_hu < float(air_threshold_hu)).to(ct_hu.dtype)
    return torch.cat([bone, rest * (1.0 - is_air), rest * is_air], dim=1)


def material_thicknesses(ct_hu: torch.Tensor, bone_mask: torch.Tensor, world_from_voxel, poses: torch.Tensor,
                         geometry: ConeBeamGeometry, *, calibration: HUDensityCalibration = DEEPDRR_CALIBRATION,
                         air_threshold_hu: float | None = None, **projector_kwargs) -> torch.Tensor:
    """Material thickness maps t_m(T) = FP(ρ · mask_m, T) / 10, ``(B·V, M, rows, cols)`` in g/cm² (eq. 3-4).

    One projector call projects all materials (channels). ``projector_kwargs`` (``step_mm``,
    ``num_samples``, ``isocenter``, ``memory_budget_mib``, ``backend``) go to
    :func:`xraysyn.projector.forward_project`; ``world_from_voxel`` is ``(B, 4, 4)`` or ``(4, 4)`` mm,
    ``poses`` ``(B·V, 4, 4)`` camera_from_isocenter.
    """
    densities = material_density_volumes(ct_hu, bone_mask, calibration=calibration, air_threshold_hu=air_threshold_hu)
    return areal_density_from_line_integral(forward_project(densities, world_from_voxel, poses, geometry,
                                                            **projector_kwargs))


def project_and_attenuate(densities: torch.Tensor, world_from_voxel, poses: torch.Tensor, geometry: ConeBeamGeometry,
                          spectrum: Spectrum, *, materials: Sequence[str] = DEFAULT_MATERIALS,
                          table: MaterialTable | None = None, mass_attenuation: torch.Tensor | None = None,
                          log_weights: torch.Tensor | None = None, implementation: str = "auto",
                          **projector_kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thickness maps, transmitted fraction and its negative log of material density volumes (eq. 3-6).

    The density volumes go through :func:`xraysyn.projector.forward_project` (one call, one channel per
    material), the line integrals (g/cm³ · mm) become areal densities (g/cm², divided by
    :data:`~xraysyn.physics.units.MM_PER_CM`), and :func:`xraysyn.physics.attenuation.attenuate` sums the
    spectrum. The densities are checked finite by the projector, so the thicknesses are not scanned again.

    Args:
        densities: ``(B, M, D, H, W)`` density (g/cm³) of each of the M ``materials`` per voxel.
        world_from_voxel: ``(B, 4, 4)`` or ``(4, 4)`` voxel → world mm affines.
        poses: ``(B·V, 4, 4)`` camera_from_isocenter poses (volume-major).
        geometry: the C-arm.
        spectrum: energies (keV) and normalised weights; None only with ``mass_attenuation`` and
            ``log_weights`` given.
        materials: names of the density channels in the μ/ρ ``table`` (default bone, tissue).
        table: μ/ρ table (default the shipped one).
        mass_attenuation, log_weights: optional ``(M, E)`` μ/ρ (cm²/g) and ``(E,)`` log weights used instead of
            the table's and the spectrum's (both or neither).
        implementation: of the attenuation, ``"auto"``, ``"torch"`` or ``"triton"``.
        **projector_kwargs: ``step_mm``, ``num_samples``, ``isocenter``, ``memory_budget_mib``, ``backend``
            as for :func:`xraysyn.projector.forward_project`.

    Returns:
        ``(thickness (B·V, M, rows, cols) g/cm², i_atten (B·V, 1, rows, cols) in [0, 1], line_integral
        (B·V, 1, rows, cols) dimensionless)``; differentiable w.r.t. ``densities``.
    """
    if isinstance(materials, str) or not isinstance(densities, torch.Tensor) or densities.dim() != 5 \
            or densities.shape[1] != len(materials):
        shape = tuple(densities.shape) if isinstance(densities, torch.Tensor) else type(densities).__name__
        raise ValueError(f"densities must be (B, M, D, H, W) with one channel per material {tuple(materials)!r}, "
                         f"got {shape}")
    if (mass_attenuation is None) != (log_weights is None):
        raise ValueError("give both mass_attenuation and log_weights, or neither")
    if mass_attenuation is None:
        check_spectrum(spectrum)
    else:
        check_coefficients(mass_attenuation, log_weights, len(materials))
    thickness = areal_density_from_line_integral(forward_project(densities, world_from_voxel, poses, geometry,
                                                                 **projector_kwargs))
    if mass_attenuation is None:  # in the thickness dtype (the projector's compute dtype)
        mass_attenuation, log_weights = spectral_coefficients(spectrum, tuple(materials), table,
                                                              dtype=thickness.dtype, device=thickness.device)
    i_atten, line = attenuate_with_coefficients(thickness, mass_attenuation, log_weights,
                                                implementation=implementation, check_finite=False,
                                                materials=tuple(materials))
    return thickness, i_atten, line


def radiograph_from_thickness(thickness: torch.Tensor, spectrum: Spectrum | None = None, *,
                              materials=DEFAULT_MATERIALS, table: MaterialTable | None = None,
                              implementation: str = "auto") -> CT2XrayResult:
    """CT2Xray from thickness maps ``(N, M, rows, cols)`` g/cm² (e.g. those a 2D network predicts, eq. 12).

    ``spectrum`` defaults to the 120 kVp tube spectrum; ``implementation`` of the attenuation as for
    :func:`xraysyn.physics.attenuation.attenuate`. Returns a :class:`CT2XrayResult` of ``(N, ...)`` tensors.
    """
    spectrum = spectrum if spectrum is not None else tube_spectrum(DEFAULT_KVP)
    i_atten, line_integral = attenuate(thickness, spectrum, materials=tuple(materials), table=table,
                                       implementation=implementation)
    return CT2XrayResult(display_image(i_atten), i_atten, line_integral, thickness, tuple(materials))


def ct2xray(ct_hu: torch.Tensor, bone_mask: torch.Tensor, world_from_voxel, poses: torch.Tensor,
            geometry: ConeBeamGeometry, spectrum: Spectrum | None = None, *,
            calibration: HUDensityCalibration = DEEPDRR_CALIBRATION, air_threshold_hu: float | None = None,
            table: MaterialTable | None = None, implementation: str = "auto", **projector_kwargs) -> CT2XrayResult:
    """Differentiable polychromatic radiographs of CT volumes (paper eq. 3-6).

    Args:
        ct_hu: ``(B, 1, D, H, W)`` CT in HU.
        bone_mask: ``(B, 1, D, H, W)`` bone probability in [0, 1].
        world_from_voxel: ``(B, 4, 4)`` or ``(4, 4)`` voxel → world mm affines.
        poses: ``(B·V, 4, 4)`` camera_from_isocenter poses (volume-major).
        geometry: the C-arm.
        spectrum: default the 120 kVp energy-integrating tube spectrum.
        calibration: HU → density fit.
        air_threshold_hu: model air (HU below this) as a separate material.
        table: μ/ρ table (default the shipped one).
        implementation: of the attenuation, ``"auto"``, ``"torch"`` or ``"triton"``
            (:func:`xraysyn.physics.attenuation.resolve_implementation`).
        **projector_kwargs: forwarded to :func:`xraysyn.projector.forward_project` (``step_mm``,
            ``num_samples``, ``isocenter``, ``memory_budget_mib``, ``backend``).

    Returns:
        :class:`CT2XrayResult` with ``(B·V, ...)`` tensors on the input's device and dtype.
    """
    densities = material_density_volumes(ct_hu, bone_mask, calibration=calibration, air_threshold_hu=air_threshold_hu)
    spectrum = spectrum if spectrum is not None else tube_spectrum(DEFAULT_KVP)
    materials = material_names(air_threshold_hu)
    thickness, i_atten, line_integral = project_and_attenuate(densities, world_from_voxel, poses, geometry, spectrum,
                                                              materials=materials, table=table,
                                                              implementation=implementation, **projector_kwargs)
    return CT2XrayResult(display_image(i_atten), i_atten, line_integral, thickness, tuple(materials))


@functools.lru_cache(maxsize=1)
def default_drr_energy_keV() -> float:
    """Effective energy of the DRR mode: the photon-fluence mean energy of the 120 kVp tube spectrum (keV)."""
    return tube_spectrum(DEFAULT_KVP, detector="photon_counting").mean_energy_keV


def drr(ct_hu: torch.Tensor, world_from_voxel, poses: torch.Tensor, geometry: ConeBeamGeometry, *,
        energy_keV: float | None = None, table: MaterialTable | None = None, **projector_kwargs) -> torch.Tensor:
    """DRR mode: ∫ μ(x, E_eff) dl, ``(B·V, 1, rows, cols)`` dimensionless line integrals.

    μ follows the definition of the HU scale, μ = μ_water(E_eff) (1 + HU/1000) clipped at 0, with
    μ_water from the NIST water μ/ρ (density 1 g/cm³). ``energy_keV`` defaults to
    :func:`default_drr_energy_keV`. ``exp(−drr)`` is the monochromatic transmitted fraction.
    """
    if not isinstance(ct_hu, torch.Tensor) or ct_hu.dim() != 5 or not ct_hu.is_floating_point():
        raise ValueError("ct_hu must be a floating-point tensor (B, C, D, H, W) in HU")
    table = table or MaterialTable.default()
    energy = default_drr_energy_keV() if energy_keV is None else float(energy_keV)
    water_density_g_per_cm3 = 1.0
    mu_water = float(linear_attenuation_per_mm(table.mass_attenuation("water", energy), water_density_g_per_cm3))
    mu = hu_to_linear_attenuation(ct_hu, mu_water)
    return forward_project(mu, world_from_voxel, poses, geometry, **projector_kwargs)
