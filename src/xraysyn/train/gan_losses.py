"""Least-squares GAN losses of the 2D RefineNet (paper eq. 14; Mao et al., ICCV 2017).

With ``D`` the patch discriminator (:class:`xraysyn.models.PatchDiscriminator`), real images the
input radiographs ``I_in^T`` and fakes the refined novel views ``I_final^T'``:

    L_D = E[(D(I_in^T) − 1)²] + E[(D(I_final^T') − 0)²]
    L_G = E[(D(I_final^T') − 1)²]

The typeset eq. 14 misplaces its brackets (``E(D(I − 1)²)``); the intended and released form is the
one above: D pushes real scores to 1 and fake scores to 0, the generator pushes fake scores to 1.
``E`` is the mean over every patch logit of every sample (``mean((d − target)²)``), so the losses
are dimensionless and do not grow with batch or logit-map size.

Note on the official release (``cpeng93/XraySyn``): its ``GANLoss`` iterates over the batch and
*sums* the per-sample means, i.e. its losses are ``N ×`` these for a batch of ``N``: its
λ_GAN = 0.02 weights the GAN term like λ_GAN = 0.02·N does with the mean-reduced losses here.
"""

from __future__ import annotations

import torch

__all__ = ["FAKE_TARGET", "REAL_TARGET", "lsgan_discriminator_loss", "lsgan_generator_loss"]

#: LSGAN target score of real images (paper eq. 14).
REAL_TARGET = 1.0
#: LSGAN target score of generated images.
FAKE_TARGET = 0.0


def _check_scores(name: str, scores: torch.Tensor) -> None:
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        got = f"{scores.dtype} tensor" if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"{name} must be a floating-point tensor of discriminator scores, got {got}")
    if scores.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(scores.shape)}): no discriminator scores to average")


def _mean_square(scores: torch.Tensor, target: float) -> torch.Tensor:
    return (scores - target).square().mean()


def lsgan_discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """``mean((d_real − 1)²) + mean(d_fake²)`` (scalar, dimensionless).

    Args:
        d_real: D's raw scores on real radiographs, any non-empty shape (e.g. ``(N, 1, 30, 30)``).
        d_fake: D's scores on generated images, any non-empty shape (may differ from ``d_real``'s);
            pass ``D(fake.detach())`` so that the generator gets no gradient from this loss.
    """
    _check_scores("d_real", d_real)
    _check_scores("d_fake", d_fake)
    return _mean_square(d_real, REAL_TARGET) + _mean_square(d_fake, FAKE_TARGET)


def lsgan_generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """``mean((d_fake − 1)²)`` (scalar, dimensionless): the generator wants its images scored real.

    Args:
        d_fake: D's raw scores on generated images, any non-empty shape.
    """
    _check_scores("d_fake", d_fake)
    return _mean_square(d_fake, REAL_TARGET)
