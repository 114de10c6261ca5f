"""Stage-1 (3DPN) losses of XraySyn, paper eq. 9-10.

    L_G = λ_CT L_CT + λ_mask L_mask + λ_dice L_dice + λ_xray (L_xray^T + L_xray^T')     (eq. 9)
    L_CT = ‖V_CT − V_gt‖₁,  L_mask = CE(V_mask, V_mask^gt),  L_dice = 1 − soft Dice(V_mask, V_mask^gt),
    L_xray^T = ‖I_CT^T − I_in^T‖₁ + Σ_m ‖t_m^CT(T) − t_m(T)‖₁                    (eq. 10)

Every L1 is mean-reduced (average absolute difference per element), the cross entropy is the
mean binary cross entropy of bone probabilities. L_dice is ours, not the paper's: bone fills about 2 % of a
chest volume, and the cross entropy alone leaves the mask under-confident and spread out (the first CPU 3DPN
never exceeded p = 0.6; Dice 0.10 at p > 0.5). Units: L_CT in the network's normalised CT units
(:class:`xraysyn.models.HUScale`, 1 unit = half the HU window), L_mask in nats, the image term in
units of the displayed radiograph (transmitted fraction, dimensionless), the thickness terms in
g/cm².
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Stage1LossWeights", "ct_loss", "mask_loss", "soft_dice_loss", "stage1_generator_loss", "xray_view_loss"]


@dataclass(frozen=True)
class Stage1LossWeights:
    """λ weights of eq. 9.

    The paper does not print their values and the official release was not available when this
    was written, so the defaults are our choice: ``ct = mask = 1`` and ``xray = 0.1``, because the
    thickness residuals (g/cm², bone ≈ 0–5, soft tissue ≈ 10–30 g/cm² through a chest) are about
    ten times larger than the normalised-CT residuals in [0, 2]. Tune them for real training.

    Args:
        ct: λ_CT, weight of the L1 between predicted and true normalised CT.
        mask: λ_mask, weight of the bone-mask binary cross entropy.
        mask_dice: λ_dice, weight of the bone mask's soft-Dice loss (ours; 0 gives the paper's eq. 9).
        xray: λ_xray, weight of the projection-consistency terms at T and T'.
    """

    ct: float = 1.0
    mask: float = 1.0
    mask_dice: float = 1.0
    xray: float = 0.1

    def __post_init__(self):
        for name in ("ct", "mask", "mask_dice", "xray"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"loss weight {name} must be a finite number >= 0, got {value!r}")


def _check_pair(prediction: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if not isinstance(prediction, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise ValueError(f"{name}: prediction and target must be tensors")  # noqa: TRY004 (project convention: ValueError)
    if prediction.shape != target.shape:
        raise ValueError(f"{name}: prediction shape {tuple(prediction.shape)} differs from target shape "
                         f"{tuple(target.shape)}")


def ct_loss(predicted_ct: torch.Tensor, target_ct: torch.Tensor) -> torch.Tensor:
    """L_CT = mean |V_CT − V_gt| (scalar) over volumes of any equal shape, e.g. ``(B, 1, D, H, W)``
    normalised CT in [-1, 1]."""
    _check_pair(predicted_ct, target_ct, "ct_loss")
    return (predicted_ct - target_ct).abs().mean()


def mask_loss(predicted_probability: torch.Tensor, target_probability: torch.Tensor) -> torch.Tensor:
    """L_mask = mean binary cross entropy (nats, scalar) of bone probabilities in [0, 1], any equal
    shape, e.g. ``(B, 1, D, H, W)``. Logarithms are floored at −100 (torch's convention), so a
    saturated prediction gives a large finite loss."""
    _check_pair(predicted_probability, target_probability, "mask_loss")
    return F.binary_cross_entropy(predicted_probability, target_probability.to(predicted_probability.dtype))


SOFT_DICE_SMOOTHING_VOXELS = 1.0
"""Added to the soft Dice's numerator and denominator (in voxels of probability mass): a volume without bone that
is predicted without bone scores a loss of 0, not 0/0."""


def soft_dice_loss(predicted_probability: torch.Tensor, target_probability: torch.Tensor) -> torch.Tensor:
    """L_dice = mean over the batch of ``1 − (2 Σ p·y + s) / (Σ p + Σ y + s)`` (scalar, dimensionless, in [0, 1])
    for bone probabilities ``(B, …)`` in [0, 1], sums over all but the first axis, ``s`` =
    :data:`SOFT_DICE_SMOOTHING_VOXELS`. It weighs the rare bone voxels as much as the background, unlike the
    cross entropy."""
    _check_pair(predicted_probability, target_probability, "soft_dice_loss")
    if predicted_probability.dim() < 2:
        raise ValueError(f"soft_dice_loss needs a batch axis and at least one more, got shape "
                         f"{tuple(predicted_probability.shape)}")
    p = predicted_probability.flatten(1)
    y = target_probability.to(p.dtype).flatten(1)
    overlap = (p * y).sum(dim=1)
    total = p.sum(dim=1) + y.sum(dim=1)
    return (1.0 - (2.0 * overlap + SOFT_DICE_SMOOTHING_VOXELS) / (total + SOFT_DICE_SMOOTHING_VOXELS)).mean()


def xray_view_loss(predicted_image: torch.Tensor, target_image: torch.Tensor,
                   predicted_thickness: torch.Tensor, target_thickness: torch.Tensor) -> torch.Tensor:
    """L_xray^T for one set of views (scalar): ``mean|I_CT − I_in| + Σ_m mean|t_m^CT − t_m|``.

    Args:
        predicted_image, target_image: ``(N, 1, rows, cols)`` radiographs (dimensionless).
        predicted_thickness, target_thickness: ``(N, M, rows, cols)`` material thicknesses g/cm².
    """
    _check_pair(predicted_image, target_image, "xray_view_loss image")
    _check_pair(predicted_thickness, target_thickness, "xray_view_loss thickness")
    if predicted_thickness.dim() != 4:
        raise ValueError(f"thickness maps must be (N, M, rows, cols), got {tuple(predicted_thickness.shape)}")
    image_term = (predicted_image - target_image).abs().mean()
    per_material = (predicted_thickness - target_thickness).abs().mean(dim=(0, 2, 3))  # (M,)
    return image_term + per_material.sum()


def stage1_generator_loss(weights: Stage1LossWeights, *, ct: torch.Tensor, mask: torch.Tensor,
                          mask_dice: torch.Tensor, xray_t: torch.Tensor, xray_t_prime: torch.Tensor) -> torch.Tensor:
    """L_G of eq. 9 (scalar) from the already computed terms (scalars), with our soft-Dice term."""
    if not isinstance(weights, Stage1LossWeights):
        raise ValueError(f"weights must be a Stage1LossWeights, got {type(weights).__name__}")  # noqa: TRY004 (project convention: ValueError)
    return weights.ct * ct + weights.mask * mask + weights.mask_dice * mask_dice + weights.xray * (xray_t + xray_t_prime)
