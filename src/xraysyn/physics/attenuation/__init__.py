"""Polychromatic Beer-Lambert attenuation of material thickness maps (paper eq. 5-6), computed stably.

For areal thicknesses ``t_m`` (g/cm²) of materials m and a spectrum with normalised weights w(E),

    I_atten = Σ_E w(E) exp(−Σ_m μ/ρ(m, E) · t_m),         line_integral = −log I_atten,

evaluated as a log-sum-exp over energies, so neither thick bodies (I → 0) nor their gradients give
NaN or inf: ``line_integral`` stays finite whatever the thickness. The paper's unweighted sum over
E is the special case of uniform weights (:meth:`Spectrum.uniform`), up to the constant factor
(number of energies) that the normalisation removes.

Two implementations of the same sum, chosen by ``implementation`` (:func:`resolve_implementation`):

* ``"torch"`` (:mod:`.torch_lse`): a running log-sum-exp over chunks of energies, autograd through it
  (gradients to the thickness and, for learned coefficients, to μ/ρ); any device and dtype.
* ``"triton"`` (:mod:`.triton_function`): one kernel per direction, float32, O(pixels) memory for the
  backward, gradients to the thickness only; CUDA tensors (or CPU tensors under ``TRITON_INTERPRET=1``).

``"auto"`` takes Triton for CUDA tensors that are not float64 when triton is installed and μ/ρ needs
no gradient, else torch. Measurements: ``docs/physics.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from xraysyn.physics.attenuation.coefficients import (
    check_coefficients,
    check_spectrum,
    check_thickness,
    spectral_coefficients,
)
from xraysyn.physics.attenuation.torch_lse import DEFAULT_ENERGY_CHUNK, log_sum_exp_over_energies
from xraysyn.physics.attenuation.triton_function import TritonAttenuation, triton_runs_on
from xraysyn.physics.materials import DEFAULT_MATERIALS, MaterialTable
from xraysyn.physics.spectra import Spectrum

__all__ = ["IMPLEMENTATIONS", "DEFAULT_ENERGY_CHUNK", "attenuate", "attenuate_with_coefficients",
           "log_attenuation", "display_image", "resolve_implementation", "spectral_coefficients", "triton_runs_on"]

IMPLEMENTATIONS = ("auto", "torch", "triton")


def resolve_implementation(implementation: str, thickness: torch.Tensor,
                           mass_attenuation: torch.Tensor | None = None) -> str:
    """The implementation (``"torch"`` or ``"triton"``) that :func:`attenuate` runs for these inputs.

    Args:
        implementation: ``"auto"``, ``"torch"`` or ``"triton"`` (see the module docstring).
        thickness: the ``(N, M, rows, cols)`` thickness maps (their device and dtype decide ``"auto"``).
        mass_attenuation: the ``(M, E)`` coefficients, if given (one that requires grad needs torch).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    learned = isinstance(mass_attenuation, torch.Tensor) and mass_attenuation.requires_grad
    if implementation == "triton":
        if not triton_runs_on(thickness.device):
            raise ValueError("implementation 'triton' needs the triton package and a CUDA tensor "
                             f"(or TRITON_INTERPRET=1 for CPU tensors), got device {thickness.device}")
        if learned:
            raise ValueError("mass_attenuation requires grad, but the triton implementation differentiates the "
                             "thickness only; use implementation='torch' for learned coefficients")
        return "triton"
    if implementation == "auto" and thickness.is_cuda and thickness.dtype != torch.float64 and not learned \
            and triton_runs_on(thickness.device):
        return "triton"
    return "torch"


def _checked(thickness, mass_attenuation, log_weights, check_finite, materials):
    """The coefficients in the thickness dtype and device, after the checks of all three inputs."""
    check_coefficients(mass_attenuation, log_weights, None if materials is None else len(materials))
    check_thickness(thickness, mass_attenuation.shape[0], check_finite, materials)
    return (mass_attenuation.to(dtype=thickness.dtype, device=thickness.device),
            log_weights.to(dtype=thickness.dtype, device=thickness.device))


def attenuate_with_coefficients(thickness: torch.Tensor, mass_attenuation: torch.Tensor, log_weights: torch.Tensor,
                                *, implementation: str = "auto", energy_chunk: int = DEFAULT_ENERGY_CHUNK,
                                check_finite: bool = True,
                                materials: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attenuate` with the spectral coefficients given as tensors.

    Args:
        thickness: ``(N, M, rows, cols)`` areal densities in g/cm².
        mass_attenuation: ``(M, E)`` μ/ρ in cm²/g (converted to the thickness dtype and device).
        log_weights: ``(E,)`` natural log of the spectrum's normalised weights (converted likewise).
        implementation, energy_chunk, check_finite: as for :func:`attenuate`.
        materials: names of the M channels, only for the error messages.

    Returns:
        ``(i_atten, line_integral)``, each ``(N, 1, rows, cols)``, in the thickness dtype.
    """
    chosen = resolve_implementation(implementation, thickness, mass_attenuation)
    mass_attenuation, log_weights = _checked(thickness, mass_attenuation, log_weights, check_finite, materials)
    if chosen == "triton":
        return TritonAttenuation.apply(thickness, mass_attenuation, log_weights)
    log_i = log_sum_exp_over_energies(thickness, mass_attenuation, log_weights, energy_chunk)
    return torch.exp(log_i), -log_i


def _coefficients(thickness, spectrum, mass_attenuation, materials, table):
    """``(mass_attenuation, log_weights)`` for :func:`attenuate`: the given μ/ρ or the table's, the spectrum's
    log weights, in the thickness dtype and device."""
    check_spectrum(spectrum)
    if isinstance(materials, str):
        raise ValueError(f"materials must be a sequence of names, got the string {materials!r}")
    if not isinstance(thickness, torch.Tensor):
        check_thickness(thickness, len(materials), check_finite=False)
    dtype, device = thickness.dtype, thickness.device
    if mass_attenuation is None:
        return spectral_coefficients(spectrum, tuple(materials), table, dtype=dtype, device=device)
    return mass_attenuation, spectrum.log_weights(dtype=dtype, device=device)


def attenuate(thickness: torch.Tensor, spectrum: Spectrum, *, mass_attenuation: torch.Tensor | None = None,
              materials: Sequence[str] = DEFAULT_MATERIALS, table: MaterialTable | None = None,
              implementation: str = "auto", energy_chunk: int = DEFAULT_ENERGY_CHUNK,
              check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Transmitted intensity fraction and its negative log, each ``(N, 1, rows, cols)``.

    Args:
        thickness: ``(N, M, rows, cols)`` areal densities in g/cm² of the M ``materials``.
        spectrum: energies (keV) and normalised weights.
        mass_attenuation: optional ``(M, E)`` μ/ρ in cm²/g at the spectrum's energies; default
            looked up in ``table`` for ``materials``.
        materials: names of the channels in the :class:`MaterialTable` (default bone, tissue).
        table: μ/ρ table (default the shipped one).
        implementation: ``"auto"``, ``"torch"`` or ``"triton"`` (:func:`resolve_implementation`).
        energy_chunk: energies per step of the torch implementation's running log-sum-exp (memory bound).
        check_finite: raise for NaN/inf thicknesses (one read of them; on a GPU a synchronisation).
            False only where the caller knows them finite, e.g. projections of a volume checked finite.

    Returns:
        ``(i_atten, line_integral)``: ``i_atten = Σ_E w(E) exp(−Σ_m μ/ρ(m,E) t_m)`` in [0, 1]
        (relative to the unattenuated beam) and ``line_integral = −log i_atten`` (dimensionless).
    """
    mass_attenuation, log_weights = _coefficients(thickness, spectrum, mass_attenuation, materials, table)
    return attenuate_with_coefficients(thickness, mass_attenuation, log_weights, implementation=implementation,
                                       energy_chunk=energy_chunk, check_finite=check_finite, materials=materials)


def log_attenuation(thickness: torch.Tensor, spectrum: Spectrum, *, mass_attenuation: torch.Tensor | None = None,
                    materials: Sequence[str] = DEFAULT_MATERIALS, table: MaterialTable | None = None,
                    energy_chunk: int = DEFAULT_ENERGY_CHUNK, check_finite: bool = True) -> torch.Tensor:
    """``log I_atten`` of thickness maps, ``(N, 1, rows, cols)`` (≤ 0 for non-negative thickness), by the torch
    implementation (autograd to the thickness and to ``mass_attenuation``). Arguments as for :func:`attenuate`."""
    mass_attenuation, log_weights = _coefficients(thickness, spectrum, mass_attenuation, materials, table)
    mass_attenuation, log_weights = _checked(thickness, mass_attenuation, log_weights, check_finite, materials)
    return log_sum_exp_over_energies(thickness, mass_attenuation, log_weights, energy_chunk)


def display_image(i_atten: torch.Tensor) -> torch.Tensor:
    """Radiograph as displayed (paper eq. 5): ``max(I_atten) − I_atten`` per image, ``(N, C, rows, cols)``."""
    if not isinstance(i_atten, torch.Tensor) or i_atten.dim() != 4:
        raise ValueError("i_atten must be a tensor (N, C, rows, cols)")
    peak = i_atten.amax(dim=(-2, -1), keepdim=True)
    return peak - i_atten
