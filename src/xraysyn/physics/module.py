"""CT2Xray as ``nn.Module`` s for networks and training loops.

* :class:`RadiographFromThickness`: thickness maps ``t_m`` (g/cm²) → radiograph (paper eq. 5-6); what the
  2D RefineNet's predicted thicknesses go through (eq. 12).
* :class:`CT2Xray`: CT (HU) + bone mask → radiographs (eq. 3-6): the density volumes projected by
  :func:`xraysyn.projector.forward_project`, then a :class:`RadiographFromThickness`.

The spectrum (energies keV, weights) and the μ/ρ matrix (cm²/g) at its energies are **buffers**, made
in float64 from the table and spectrum: ``.to(device)`` moves them, a ``state_dict`` holds them, and the
attenuation converts them to the input's dtype, so a module in float64 gives the functional API's values
bit for bit for float32 and float64 inputs alike (``.float()`` rounds the buffers to float32, which keeps
float32 results unchanged). The geometry, the HU calibration and the sampling are plain numbers kept as
extra state (a dtype cast cannot round them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from xraysyn.geometry import ConeBeamGeometry
from xraysyn.physics.attenuation import IMPLEMENTATIONS, attenuate_with_coefficients, display_image
from xraysyn.physics.ct2xray import CT2XrayResult, material_density_volumes, material_names, project_and_attenuate
from xraysyn.physics.materials import DEFAULT_MATERIALS, MaterialTable
from xraysyn.physics.spectra import DEFAULT_KVP, Spectrum, tube_spectrum
from xraysyn.physics.units import DEEPDRR_CALIBRATION, HUDensityCalibration
from xraysyn.projector import BACKENDS

__all__ = ["CT2Xray", "RadiographFromThickness"]


def _check_implementation(implementation: str) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")


class RadiographFromThickness(nn.Module):
    """Polychromatic attenuation of thickness maps (paper eq. 5-6) with the spectrum and μ/ρ as buffers.

    Args:
        spectrum: energies (keV) and weights; default the 120 kVp tube spectrum.
        materials: names of the thickness channels in the μ/ρ ``table`` (default bone, tissue).
        table: μ/ρ table (default the shipped one).
        implementation: of the attenuation, ``"auto"``, ``"torch"`` or ``"triton"``.

    Buffers: ``energies_keV (E,)`` keV, ``weights (E,)`` (normalised), ``log_weights (E,)``,
    ``mass_attenuation (M, E)`` cm²/g. Extra state: the material names and the implementation. Loading a
    state dict takes its spectrum and materials whatever their sizes.
    """

    def __init__(self, spectrum: Spectrum | None = None, materials: Sequence[str] = DEFAULT_MATERIALS,
                 table: MaterialTable | None = None, *, implementation: str = "auto"):
        super().__init__()
        spectrum = spectrum if spectrum is not None else tube_spectrum(DEFAULT_KVP)
        if not isinstance(spectrum, Spectrum):
            raise ValueError(f"spectrum must be a Spectrum, got {type(spectrum).__name__}")
        if isinstance(materials, str) or not materials:
            raise ValueError(f"materials must be a non-empty sequence of names, got {materials!r}")
        _check_implementation(implementation)
        table = table or MaterialTable.default()
        self.materials = tuple(materials)
        self.implementation = implementation
        as_buffer = lambda array: torch.as_tensor(np.asarray(array), dtype=torch.float64)  # noqa: E731
        self.register_buffer("energies_keV", as_buffer(spectrum.energies_keV))
        self.register_buffer("weights", as_buffer(spectrum.weights))
        self.register_buffer("log_weights", spectrum.log_weights(dtype=torch.float64))
        self.register_buffer("mass_attenuation",
                             table.attenuation_matrix(self.materials, spectrum.energies_keV, dtype=torch.float64))

    def get_extra_state(self) -> dict:
        return {"materials": list(self.materials), "implementation": self.implementation}

    def set_extra_state(self, state: dict) -> None:
        _check_implementation(state["implementation"])
        self.materials = tuple(state["materials"])
        self.implementation = state["implementation"]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint carries its own spectrum and materials: take its buffer sizes (E and M may differ)
        for name, buffer in self._buffers.items():
            loaded = state_dict.get(prefix + name)
            if isinstance(loaded, torch.Tensor) and loaded.shape != buffer.shape:
                self._buffers[name] = torch.empty(loaded.shape, dtype=buffer.dtype, device=buffer.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, thickness: torch.Tensor) -> CT2XrayResult:
        """``(N, M, rows, cols)`` thickness maps (g/cm²) → :class:`CT2XrayResult` of ``(N, ...)`` tensors."""
        i_atten, line = attenuate_with_coefficients(thickness, self.mass_attenuation, self.log_weights,
                                                    implementation=self.implementation, materials=self.materials)
        return CT2XrayResult(display_image(i_atten), i_atten, line, thickness, self.materials)

    def extra_repr(self) -> str:
        return (f"materials={self.materials}, energies={self.energies_keV.numel()}, "
                f"implementation={self.implementation!r}")


class CT2Xray(nn.Module):
    """Differentiable polychromatic radiographs of CT volumes (paper eq. 3-6), as a module.

    Args:
        geometry: the C-arm (SDD, SID mm; detector ``(rows, cols)``; pixel spacing mm; principal point px).
        spectrum: default the 120 kVp tube spectrum.
        calibration: HU → density fit (default DeepDRR's).
        air_threshold_hu: model air (HU below this) as a third material.
        table: μ/ρ table (default the shipped one).
        step_mm, num_samples, memory_budget_mib, backend: the projector's sampling and backend (see
            :func:`xraysyn.projector.forward_project`; None: its defaults).
        implementation: of the attenuation, ``"auto"``, ``"torch"`` or ``"triton"``.

    Submodule ``radiograph``: the :class:`RadiographFromThickness` holding the spectrum and μ/ρ buffers.
    Extra state: the geometry's fields, the calibration, ``air_threshold_hu``, the sampling and backend.
    """

    def __init__(self, geometry: ConeBeamGeometry, spectrum: Spectrum | None = None, *,
                 calibration: HUDensityCalibration = DEEPDRR_CALIBRATION, air_threshold_hu: float | None = None,
                 table: MaterialTable | None = None, step_mm: float | None = None, num_samples: int | None = None,
                 memory_budget_mib: float | None = None, backend: str = "auto", implementation: str = "auto"):
        super().__init__()
        if not isinstance(geometry, ConeBeamGeometry):
            raise ValueError(f"geometry must be a ConeBeamGeometry, got {type(geometry).__name__}")
        if not isinstance(calibration, HUDensityCalibration):
            raise ValueError(f"calibration must be a HUDensityCalibration, got {type(calibration).__name__}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.geometry = geometry
        self.calibration = calibration
        self.air_threshold_hu = None if air_threshold_hu is None else float(air_threshold_hu)
        self.sampling = {"step_mm": step_mm, "num_samples": num_samples, "memory_budget_mib": memory_budget_mib,
                         "backend": backend}
        self.radiograph = RadiographFromThickness(spectrum, material_names(self.air_threshold_hu), table,
                                                  implementation=implementation)

    def get_extra_state(self) -> dict:
        g, c = self.geometry, self.calibration
        return {"geometry": {"sdd": float(g.sdd), "sid": float(g.sid), "detector_shape": list(g.detector_shape),
                             "pixel_spacing": list(g.pixel_spacing), "principal_point": list(g.center_pixel)},
                "calibration": {"hu_knots": list(c.hu_knots), "density_knots": list(c.density_knots),
                                "slope_above": float(c.slope_above), "source": c.source},
                "air_threshold_hu": self.air_threshold_hu, "sampling": dict(self.sampling)}

    def set_extra_state(self, state: dict) -> None:
        g, c = state["geometry"], state["calibration"]
        self.geometry = ConeBeamGeometry(sdd=g["sdd"], sid=g["sid"], detector_shape=tuple(g["detector_shape"]),
                                         pixel_spacing=tuple(g["pixel_spacing"]),
                                         principal_point=tuple(g["principal_point"]))
        self.calibration = HUDensityCalibration(tuple(c["hu_knots"]), tuple(c["density_knots"]), c["slope_above"],
                                                c["source"])
        self.air_threshold_hu = state["air_threshold_hu"]
        self.sampling = dict(state["sampling"])

    def _projector_kwargs(self) -> dict:
        return {name: value for name, value in self.sampling.items() if value is not None}

    def forward(self, ct_hu: torch.Tensor, bone_mask: torch.Tensor, world_from_voxel: torch.Tensor,
                poses: torch.Tensor, isocenter: torch.Tensor | None = None) -> CT2XrayResult:
        """Radiographs of ``(B, 1, D, H, W)`` CT (HU) with ``(B, 1, D, H, W)`` bone probability in [0, 1].

        ``world_from_voxel``: ``(B, 4, 4)`` or ``(4, 4)`` voxel → world mm; ``poses``: ``(B·V, 4, 4)``
        camera_from_isocenter (volume-major); ``isocenter``: ``(B, 3)`` or ``(3,)`` world mm (default the
        volume centres). Returns a :class:`CT2XrayResult` of ``(B·V, ...)`` tensors, equal to
        :func:`xraysyn.physics.ct2xray` with the same settings.
        """
        densities = material_density_volumes(ct_hu, bone_mask, calibration=self.calibration,
                                             air_threshold_hu=self.air_threshold_hu)
        radiograph = self.radiograph
        thickness, i_atten, line = project_and_attenuate(
            densities, world_from_voxel, poses, self.geometry, None, materials=radiograph.materials,
            mass_attenuation=radiograph.mass_attenuation, log_weights=radiograph.log_weights,
            implementation=radiograph.implementation, isocenter=isocenter, **self._projector_kwargs())
        return CT2XrayResult(display_image(i_atten), i_atten, line, thickness, radiograph.materials)

    def radiograph_from_thickness(self, thickness: torch.Tensor) -> CT2XrayResult:
        """``(N, M, rows, cols)`` thickness maps (g/cm²) → :class:`CT2XrayResult` (the ``radiograph`` submodule)."""
        return self.radiograph(thickness)

    def extra_repr(self) -> str:
        g = self.geometry
        return (f"sdd={g.sdd}, sid={g.sid}, detector_shape={g.detector_shape}, pixel_spacing={g.pixel_spacing}, "
                f"air_threshold_hu={self.air_threshold_hu}, sampling={self._projector_kwargs()}")
