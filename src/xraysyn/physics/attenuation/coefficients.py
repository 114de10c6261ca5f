"""Spectral coefficients of the attenuation and the checks of its inputs (one copy of each).

``mass_attenuation`` is the ``(M, E)`` matrix of μ/ρ (cm²/g) of the M materials at the E energies of a
spectrum, ``log_weights`` the ``(E,)`` natural logs of the spectrum's normalised weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from xraysyn.host_cache import HostMemo, array_key
from xraysyn.physics.materials import MaterialTable
from xraysyn.physics.spectra import Spectrum

__all__ = ["spectral_coefficients", "check_spectrum", "check_thickness", "check_coefficients"]

# (μ/ρ matrix, log weights) tensors of recently used (table, materials, spectrum, dtype, device), keyed by
# the exact table and spectrum values.
_COEFFICIENTS = HostMemo(max_entries=32)


def spectral_coefficients(spectrum: Spectrum, materials: Sequence[str], table: MaterialTable | None = None, *,
                          dtype=torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mass_attenuation (M, E) cm²/g, log_weights (E,))`` of ``materials`` at the ``spectrum``'s energies,
    as tensors of ``dtype`` on ``device`` (both made from the float64 table and spectrum).

    Remembered for recent combinations, keyed by the exact values of the table, the materials and the
    spectrum (a call with the same ones skips the log-log interpolation and the host→device copies):
    treat the tensors as read-only (:meth:`MaterialTable.attenuation_matrix` gives a private copy).
    """
    check_spectrum(spectrum)
    table = table or MaterialTable.default()
    materials = tuple(materials)
    if not materials or not all(isinstance(name, str) for name in materials):
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


def check_spectrum(spectrum) -> None:
    """Raise unless ``spectrum`` is a :class:`~xraysyn.physics.spectra.Spectrum`."""
    if not isinstance(spectrum, Spectrum):
        raise ValueError(f"spectrum must be a Spectrum, got {type(spectrum).__name__}")


def check_thickness(thickness, n_materials: int, check_finite: bool, materials: Sequence[str] | None = None) -> None:
    """Raise unless ``thickness`` is a floating-point ``(N, n_materials, rows, cols)`` tensor (finite when
    ``check_finite``: one read of it, on a GPU a synchronisation); ``materials`` names them in the message."""
    if not isinstance(thickness, torch.Tensor) or thickness.dim() != 4 or not thickness.is_floating_point():
        shape = tuple(thickness.shape) if isinstance(thickness, torch.Tensor) else type(thickness).__name__
        raise ValueError(f"thickness must be a floating-point tensor (N, M, rows, cols) in g/cm², got {shape}")
    if thickness.shape[1] != n_materials:
        named = f"materials lists {n_materials}: {tuple(materials)}" if materials is not None else \
            f"the coefficients are for {n_materials} materials"
        raise ValueError(f"thickness has {thickness.shape[1]} material channels but {named}")
    if check_finite and not torch.isfinite(thickness).all():
        raise ValueError("thickness contains non-finite values (NaN or inf)")


def check_coefficients(mass_attenuation, log_weights, n_materials: int | None = None) -> None:
    """Raise unless ``log_weights`` is an ``(E,)`` and ``mass_attenuation`` an ``(M, E)`` floating-point tensor
    (``M = n_materials`` when given)."""
    if not isinstance(log_weights, torch.Tensor) or log_weights.dim() != 1 or not log_weights.is_floating_point():
        shape = tuple(log_weights.shape) if isinstance(log_weights, torch.Tensor) else type(log_weights).__name__
        raise ValueError(f"log_weights must be a floating-point tensor (E,), got {shape}")
    n_energies = log_weights.shape[0]
    rows = "M" if n_materials is None else n_materials
    if (not isinstance(mass_attenuation, torch.Tensor) or not mass_attenuation.is_floating_point()
            or mass_attenuation.dim() != 2 or mass_attenuation.shape[1] != n_energies
            or (n_materials is not None and mass_attenuation.shape[0] != n_materials)):
        shape = (tuple(mass_attenuation.shape) if isinstance(mass_attenuation, torch.Tensor)
                 else type(mass_attenuation).__name__)
        raise ValueError(f"mass_attenuation must have shape (M, E) = ({rows}, {n_energies}) in cm²/g, got {shape}")
