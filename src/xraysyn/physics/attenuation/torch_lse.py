"""The torch implementation of the attenuation: a running log-sum-exp over chunks of energies.

Autograd differentiates it with respect to the thickness and the coefficients (learned μ/ρ too); its
backward keeps one ``(N, chunk, rows, cols)`` exponent tensor per chunk of energies.
"""

from __future__ import annotations

import torch

__all__ = ["DEFAULT_ENERGY_CHUNK", "log_sum_exp_over_energies"]

DEFAULT_ENERGY_CHUNK = 32
"""Energies processed at once; bounds the ``(N, chunk, rows, cols)`` temporary."""


def log_sum_exp_over_energies(thickness: torch.Tensor, mass_attenuation: torch.Tensor, log_weights: torch.Tensor,
                              energy_chunk: int = DEFAULT_ENERGY_CHUNK) -> torch.Tensor:
    """``L = log Σ_E w_E exp(−Σ_m μ/ρ(m, E) t_m)`` per pixel, ``(N, 1, rows, cols)``.

    Args:
        thickness: ``(N, M, rows, cols)`` g/cm² (checked by the caller).
        mass_attenuation: ``(M, E)`` cm²/g, same dtype and device.
        log_weights: ``(E,)`` natural log of the normalised weights, same dtype and device.
        energy_chunk: energies per step (≥ 1).
    """
    if int(energy_chunk) < 1:
        raise ValueError(f"energy_chunk must be >= 1, got {energy_chunk}")
    n_energies = log_weights.shape[0]
    result = None
    for start in range(0, n_energies, int(energy_chunk)):
        stop = min(start + int(energy_chunk), n_energies)
        exponent = log_weights[start:stop].view(1, -1, 1, 1) - torch.einsum(
            "me,nmrc->nerc", mass_attenuation[:, start:stop], thickness)
        part = torch.logsumexp(exponent, dim=1, keepdim=True)
        result = part if result is None else torch.logaddexp(result, part)
    return result
