"""Quantum (Poisson) and electronic (Gaussian) detector noise, seeded -- realism beyond the paper.

Model: a pixel that would receive ``photons_per_pixel`` quanta without the patient counts
``k ~ Poisson(photons_per_pixel · I_atten)``; the read-out adds ``ε ~ Normal(0, σ_e²)`` in the same
quanta units. The noisy transmitted fraction is ``(k + ε) / photons_per_pixel``, so its mean is
``I_atten`` and its variance ``I_atten / N0 + σ_e² / N0²`` (N0 = photons_per_pixel). For an
energy-integrating detector this treats every quantum as carrying the mean energy (the Swank
factor of a polychromatic beam is ignored).

Gradients pass straight through the noise (d noisy / d I_atten = 1): the sample is a detached
additive perturbation.

Largest expected count: ``torch.poisson`` turns each sample into a fixed-width integer, which
wraps for rates past its range instead of failing. On the CPU the sample is an int64: measured
with torch 2.13, a rate of 9.223e18 still gives sane counts while 9.2234e18 (just past
2**63 ≈ 9.2234e18) and every larger rate, 1e30 included, give -2**63 for every pixel. On CUDA
the sample is cuRAND's ``curand_poisson``, documented to return a 32-bit ``unsigned int``, so
rates past 2**32 ≈ 4.3e9 cannot be represented (from the documentation; not measured here).
:func:`add_noise` refuses an expected count ``photons_per_pixel · max(i_atten)`` above
:func:`max_expected_count` (half of each range, so that no sample comes near the wrap).
"""

from __future__ import annotations

import math
from numbers import Real

import torch

__all__ = ["add_noise", "make_generator", "max_expected_count", "MAX_EXPECTED_COUNT_CPU",
           "MAX_EXPECTED_COUNT_CUDA"]

MAX_EXPECTED_COUNT_CPU = float(2**62)
"""Largest Poisson rate ``add_noise`` samples on the CPU (≈ 4.6e18): half of the int64 range the
sample is stored in; a sample at this rate would have to exceed it by ~2e9 standard deviations to
wrap."""
MAX_EXPECTED_COUNT_CUDA = float(2**31)
"""Largest Poisson rate ``add_noise`` samples on CUDA and other accelerators (≈ 2.1e9): half of
the 32-bit unsigned range of cuRAND's ``curand_poisson``."""


def max_expected_count(device: torch.device | str) -> float:
    """Largest Poisson rate (expected quanta in one pixel) that ``torch.poisson`` samples without
    integer wrap-around on ``device``: :data:`MAX_EXPECTED_COUNT_CPU` on the CPU, else
    :data:`MAX_EXPECTED_COUNT_CUDA` (the smallest known range, used for every other device)."""
    return MAX_EXPECTED_COUNT_CPU if torch.device(device).type == "cpu" else MAX_EXPECTED_COUNT_CUDA


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


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
            ``N0 · max(i_atten)`` must not exceed :func:`max_expected_count` of the device
            (≈ 4.6e18 on the CPU, ≈ 2.1e9 on CUDA).
        electronic_noise_photons: standard deviation σ_e of the additive Gaussian read-out noise,
            in quanta (≥ 0).
        seed: seed a fresh generator (reproducible); mutually exclusive with ``generator``.
        generator: a ``torch.Generator`` on ``i_atten``'s device.

    Returns:
        ``(k + ε) / N0``; may be ≤ 0 where electronic noise dominates -- clamp before taking a log.

    Raises:
        ValueError: a non-float ``i_atten`` or one with negative, NaN or infinite values; a
            ``photons_per_pixel`` that is not a positive finite number or whose expected count
            would overflow the Poisson sampler; a negative or non-finite
            ``electronic_noise_photons``; both ``seed`` and ``generator``.
    """
    if not isinstance(i_atten, torch.Tensor) or not i_atten.is_floating_point():
        raise ValueError("i_atten must be a floating-point tensor")
    if not (_is_number(photons_per_pixel) and math.isfinite(photons_per_pixel) and photons_per_pixel > 0):
        raise ValueError(f"photons_per_pixel must be a positive finite number of quanta, got {photons_per_pixel!r}")
    limit = max_expected_count(i_atten.device)
    if photons_per_pixel > limit:
        raise ValueError(f"photons_per_pixel must be <= {limit:.4g} quanta on {i_atten.device.type} (torch.poisson "
                         f"wraps around past it), got {float(photons_per_pixel):g}")
    if not (_is_number(electronic_noise_photons) and math.isfinite(electronic_noise_photons)
            and electronic_noise_photons >= 0):
        raise ValueError("electronic_noise_photons must be a non-negative finite number, "
                         f"got {electronic_noise_photons!r}")
    if seed is not None and generator is not None:
        raise ValueError("give either seed or generator, not both")
    clean = i_atten.detach()
    if not bool(torch.isfinite(clean).all()):
        raise ValueError("i_atten must be finite (a transmitted fraction), got NaN or infinite values")
    if bool((clean < 0).any()):
        raise ValueError(f"i_atten must be non-negative (a transmitted fraction), got minimum {float(clean.min()):g}")
    if clean.numel() and float(clean.max()) * float(photons_per_pixel) > limit:
        raise ValueError(f"photons_per_pixel {float(photons_per_pixel):g} times the largest i_atten "
                         f"{float(clean.max()):g} exceeds the {limit:.4g} expected quanta torch.poisson samples "
                         f"on {i_atten.device.type}")
    if seed is not None:
        generator = make_generator(seed, i_atten.device)
    expected = clean.to(torch.float64) * float(photons_per_pixel)
    counts = torch.poisson(expected, generator=generator)
    if electronic_noise_photons > 0:
        counts = counts + float(electronic_noise_photons) * torch.randn(
            counts.shape, dtype=counts.dtype, device=counts.device, generator=generator)
    perturbation = ((counts - expected) / float(photons_per_pixel)).to(i_atten.dtype)
    return i_atten + perturbation
