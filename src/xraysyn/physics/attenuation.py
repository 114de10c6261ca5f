"""Polychromatic Beer-Lambert attenuation of material thickness maps (paper eq. 5-6), computed stably.

For areal thicknesses ``t_m`` (g/cm²) of materials m and a spectrum with normalised weights w(E),

    I_atten = Σ_E w(E) exp(−Σ_m μ/ρ(m, E) · t_m),         line_integral = −log I_atten,

evaluated as a log-sum-exp over energies, so neither thick bodies (I → 0) nor their gradients give
NaN or inf: ``line_integral`` stays finite whatever the thickness. The paper's unweighted sum over
E is the special case of uniform weights (:meth:`Spectrum.uniform`), up to the constant factor
(number of energies) that the normalisation removes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from xraysyn.physics.materials import DEFAULT_MATERIALS, MaterialTable
from xraysyn.physics.spectra import Spectrum
from xraysyn.host_cache import HostMemo, array_key

__all__ = ["attenuate", "log_attenuation", "display_image", "coefficients_for", "spectral_coefficients",
           "DEFAULT_ENERGY_CHUNK"]

DEFAULT_ENERGY_CHUNK = 32
"""Energies processed at once; bounds the ``(N, chunk, rows, cols)`` temporary."""

# (μ/ρ matrix, log weights) tensors of recently used (table, materials, spectrum, dtype, device), keyed by
# the exact table and spectrum values.
_COEFFICIENTS = HostMemo(max_entries=32)


def spectral_coefficients(spectrum: Spectrum, materials: Sequence[str], table: MaterialTable | None = None, *,
                          dtype=torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mass_attenuation (M, E) cm²/g, log_weights (E,))`` of ``materials`` at the ``spectrum``'s energies,
    as tensors on ``device``.

    Remembered for recent combinations, keyed by the exact values of the table, the materials and the
    spectrum (a call with the same ones skips the log-log interpolation and the host→device copies):
    treat the tensors as read-only (:meth:`MaterialTable.attenuation_matrix` gives a private copy).
    """
    table = table or MaterialTable.default()
    materials = tuple(materials)
    if not all(isinstance(name, str) for name in materials) or not materials:
        raise ValueError(f"materials must be a non-empty sequence of names, got {materials!r}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = (array_key(table.energies_keV),
           tuple((name, array_key(table.values[name]) if name in table.values else None) for name in materials),
           array_key(spectrum.energies_keV), array_key(spectrum.weights), dtype, device)
    kept = _COEFFICIENTS.get(key)
    if kept is None:
        kept = (table.attenuation_matrix(materials, spectrum.energies_keV, dtype=dtype, device=device),
                spectrum.log_weights(dtype=dtype, device=device))
        _COEFFICIENTS.put(key, kept)
    return kept


def coefficients_for(spectrum: Spectrum, mass_attenuation: torch.Tensor | None, materials: Sequence[str],
                     table: MaterialTable | None, *, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mass_attenuation, log_weights)``: the ``mass_attenuation`` given (as is) with the spectrum's log
    weights, or both from :func:`spectral_coefficients` when it is None."""
    if mass_attenuation is None:
        return spectral_coefficients(spectrum, materials, table, dtype=dtype, device=device)
    return mass_attenuation, spectrum.log_weights(dtype=dtype, device=device)


def _check_thickness(thickness: torch.Tensor, materials: Sequence[str], check_finite: bool = True) -> None:
    if not isinstance(thickness, torch.Tensor) or thickness.dim() != 4 or not thickness.is_floating_point():
        shape = tuple(thickness.shape) if isinstance(thickness, torch.Tensor) else type(thickness).__name__
        raise ValueError(f"thickness must be a floating-point tensor (N, M, rows, cols) in g/cm², got {shape}")
    if thickness.shape[1] != len(materials):
        raise ValueError(f"thickness has {thickness.shape[1]} material channels but materials lists "
                         f"{len(materials)}: {tuple(materials)}")
    if check_finite and not torch.isfinite(thickness).all():
        raise ValueError("thickness contains non-finite values (NaN or inf)")


def log_attenuation(thickness: torch.Tensor, spectrum: Spectrum, *, mass_attenuation: torch.Tensor | None = None,
                    materials: Sequence[str] = DEFAULT_MATERIALS, table: MaterialTable | None = None,
                    energy_chunk: int = DEFAULT_ENERGY_CHUNK, check_finite: bool = True) -> torch.Tensor:
    """``log I_atten`` of thickness maps, ``(N, 1, rows, cols)`` (≤ 0 for non-negative thickness).

    Args:
        thickness: ``(N, M, rows, cols)`` areal densities in g/cm² of the M ``materials``.
        spectrum: energies (keV) and normalised weights.
        mass_attenuation: optional ``(M, E)`` μ/ρ in cm²/g at the spectrum's energies; default
            looked up in ``table`` for ``materials``.
        materials: names of the channels in the :class:`MaterialTable` (default bone, tissue).
        table: μ/ρ table (default the shipped one).
        energy_chunk: energies per step of the running log-sum-exp (memory bound).
        check_finite: raise for NaN/inf thicknesses (one read of them; on a GPU a synchronisation).
            False only where the caller knows them finite, e.g. projections of a volume checked finite.
    """
    _check_thickness(thickness, materials, check_finite)
    if not isinstance(spectrum, Spectrum):
        raise ValueError(f"spectrum must be a Spectrum, got {type(spectrum).__name__}")
    if int(energy_chunk) < 1:
        raise ValueError(f"energy_chunk must be >= 1, got {energy_chunk}")
    mass_attenuation, log_w = coefficients_for(spectrum, mass_attenuation, materials, table, dtype=thickness.dtype,
                                               device=thickness.device)
    mass_attenuation = mass_attenuation.to(dtype=thickness.dtype, device=thickness.device)
    n_energies = spectrum.energies_keV.size
    if tuple(mass_attenuation.shape) != (len(materials), n_energies):
        raise ValueError(f"mass_attenuation must have shape (M, E) = ({len(materials)}, {n_energies}), "
                         f"got {tuple(mass_attenuation.shape)}")
    result = None
    for start in range(0, n_energies, int(energy_chunk)):
        stop = min(start + int(energy_chunk), n_energies)
        exponent = log_w[start:stop].view(1, -1, 1, 1) - torch.einsum(
            "me,nmrc->nerc", mass_attenuation[:, start:stop], thickness)
        part = torch.logsumexp(exponent, dim=1, keepdim=True)
        result = part if result is None else torch.logaddexp(result, part)
    return result


def attenuate(thickness: torch.Tensor, spectrum: Spectrum, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Transmitted intensity fraction and its negative log, each ``(N, 1, rows, cols)``.

    Returns:
        ``(i_atten, line_integral)``: ``i_atten = Σ_E w(E) exp(−Σ_m μ/ρ(m,E) t_m)`` in [0, 1]
        (relative to the unattenuated beam) and ``line_integral = −log i_atten`` (dimensionless).
        Keyword arguments as for :func:`log_attenuation`.

    On CUDA, float32/half thickness maps go through the one-pass fused kernel
    (:func:`xraysyn.physics.fused.fused_attenuate`, same values, O(pixels) backward memory).
    """
    mass_attenuation = kwargs.get("mass_attenuation")
    if (isinstance(thickness, torch.Tensor) and thickness.is_cuda and thickness.dtype != torch.float64
            and "energy_chunk" not in kwargs
            and not (isinstance(mass_attenuation, torch.Tensor) and mass_attenuation.requires_grad)):
        from xraysyn.physics.fused import fused_attenuate

        return fused_attenuate(thickness, spectrum, **kwargs)
    log_i = log_attenuation(thickness, spectrum, **kwargs)
    return torch.exp(log_i), -log_i


def display_image(i_atten: torch.Tensor) -> torch.Tensor:
    """Radiograph as displayed (paper eq. 5): ``max(I_atten) − I_atten`` per image, ``(N, C, rows, cols)``."""
    if not isinstance(i_atten, torch.Tensor) or i_atten.dim() != 4:
        raise ValueError("i_atten must be a tensor (N, C, rows, cols)")
    peak = i_atten.amax(dim=(-2, -1), keepdim=True)
    return peak - i_atten
