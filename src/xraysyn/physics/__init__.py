"""X-ray physics: μ/ρ tables, tube spectra, HU → density, CT2Xray (paper eq. 3-6) as functions and as
modules (:class:`CT2Xray`, :class:`RadiographFromThickness`), DRR mode, detector noise and bone
suppression by reverse CT2Xray (Algorithm 1). CT2Xray reaches the projector through
:func:`xraysyn.projector.forward_project` only; the attenuation has one public choice of
implementation (``attenuate(..., implementation="auto"|"torch"|"triton")``). Notes: ``docs/physics.md``.

Units: energies keV, lengths mm, μ 1/mm, ρ g/cm³, μ/ρ cm²/g, thickness maps t_m g/cm².
"""

from xraysyn.physics.attenuation import (
    attenuate,
    attenuate_with_coefficients,
    display_image,
    log_attenuation,
    resolve_implementation,
)
from xraysyn.physics.ct2xray import (
    CT2XrayResult,
    ct2xray,
    default_drr_energy_keV,
    drr,
    material_density_volumes,
    material_names,
    material_thicknesses,
    project_and_attenuate,
    radiograph_from_thickness,
)
from xraysyn.physics.materials import AIR, BONE, DEFAULT_MATERIALS, TISSUE, MaterialTable
from xraysyn.physics.module import CT2Xray, RadiographFromThickness
from xraysyn.physics.noise import add_noise
from xraysyn.physics.spectra import Spectrum, half_value_layer_mm, tabulated_kvp_range, tube_spectrum
from xraysyn.physics.suppression import BoneSuppressionResult, suppress_bone
from xraysyn.physics.units import (
    DEEPDRR_CALIBRATION,
    HUDensityCalibration,
    areal_density_from_line_integral,
    density_to_hu,
    hu_to_density,
    hu_to_linear_attenuation,
    linear_attenuation_per_mm,
)

__all__ = [
    "AIR", "BONE", "TISSUE", "DEFAULT_MATERIALS", "MaterialTable",
    "Spectrum", "tube_spectrum", "tabulated_kvp_range", "half_value_layer_mm",
    "DEEPDRR_CALIBRATION", "HUDensityCalibration", "hu_to_density", "density_to_hu",
    "hu_to_linear_attenuation", "linear_attenuation_per_mm", "areal_density_from_line_integral",
    "attenuate", "attenuate_with_coefficients", "log_attenuation", "display_image", "resolve_implementation",
    "CT2XrayResult", "ct2xray", "drr", "default_drr_energy_keV", "material_density_volumes",
    "material_names", "material_thicknesses", "radiograph_from_thickness", "project_and_attenuate",
    "CT2Xray", "RadiographFromThickness",
    "add_noise", "BoneSuppressionResult", "suppress_bone",
]
