"""Quantum (Poisson) and electronic (Gaussian) detector noise, seeded -- realism beyond the paper.

Model: a pixel that would receive ``photons_per_pixel`` quanta without the patient counts
``k ~ Poisson(photons_per_pixel · I_atten)``; the read-out adds ``ε ~ Normal(0, σ_e²)`` in the same
quanta units. The noisy transmitted fraction is ``(k + ε) / photons_per_pixel``, so its mean is
``I_atten`` and its variance ``I_atten / N0 + σ_e² / N0²`` (N0 = photons_per_pixel). For an
energy-integrating detector this treats every quantum as carrying the mean energy (the Swank
factor of a polychromatic beam is ignored).

Gradients pass straight through the noise (d noisy / d I_atten = 1): the sample is a detached
additive perturbation.
"""

from __future__ import annotations

import math

import torch

__all__ = ["add_noise", "make_generator"]


def make_generator(seed: int, device: torch.device | str | None = None) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    generator = torch.Generator(device=device if device is not None else "cpu")
    generator.manual_seed(seed)
    return generator


def add_noise(i_atten: torch.Tensor, photons_per_pixel: float, *, electronic_noise_photons: float = 0.0,
              seed: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Noisy transmitted fraction, same shape/dtype/device as ``i_atten``.

    Args:
        i_atten: transmitted fraction of the beam in [0, 1], any shape (e.g. ``(N, 1, rows, cols)``).
        photons_per_pixel: unattenuated quanta per pixel N0 (> 0); larger = less noise.
        electronic_noise_photons: standard deviation σ_e of the additive Gaussian read-out noise,
            in quanta (≥ 0).
        seed: seed a fresh generator (reproducible); mutually exclusive with ``generator``.
        generator: a ``torch.Generator`` on ``i_atten``'s device.

    Returns:
        ``(k + ε) / N0``; may be ≤ 0 where electronic noise dominates -- clamp before taking a log.
    """
    if not isinstance(i_atten, torch.Tensor) or not i_atten.is_floating_point():
        raise ValueError("i_atten must be a floating-point tensor")
    if not (isinstance(photons_per_pixel, (int, float)) and math.isfinite(photons_per_pixel) and photons_per_pixel > 0):
        raise ValueError(f"photons_per_pixel must be a positive finite number of quanta, got {photons_per_pixel!r}")
    if not (isinstance(electronic_noise_photons, (int, float)) and math.isfinite(electronic_noise_photons)
            and electronic_noise_photons >= 0):
        raise ValueError("electronic_noise_photons must be a non-negative finite number, "
                         f"got {electronic_noise_photons!r}")
    if seed is not None and generator is not None:
        raise ValueError("give either seed or generator, not both")
    clean = i_atten.detach()
    if bool((clean < 0).any()):
        raise ValueError(f"i_atten must be non-negative (a transmitted fraction), got minimum {float(clean.min()):g}")
    if seed is not None:
        generator = make_generator(seed, i_atten.device)
    expected = clean.to(torch.float64) * float(photons_per_pixel)
    counts = torch.poisson(expected, generator=generator)
    if electronic_noise_photons > 0:
        counts = counts + float(electronic_noise_photons) * torch.randn(
            counts.shape, dtype=counts.dtype, device=counts.device, generator=generator)
    perturbation = ((counts - expected) / float(photons_per_pixel)).to(i_atten.dtype)
    return i_atten + perturbation
