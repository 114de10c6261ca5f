"""Value conversions between physical volumes and the 3DPN's tanh output space.

The 3D PriorNet (:mod:`xraysyn.models.unet3d`) ends with ``tanh``, so both of its output channels
live in [-1, 1]:

* channel 0, the CT, is HU mapped linearly by :class:`HUScale`;
* channel 1, the bone mask, is a probability ``p`` stored as ``2 p − 1``
  (:func:`mask_probability_from_tanh` / :func:`mask_tanh_from_probability`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "AIR_HU",
    "DENSE_BONE_HU",
    "HUScale",
    "mask_probability_from_tanh",
    "mask_tanh_from_probability",
]

#: Air on the Hounsfield scale (HU); −1024 is the lowest value stored by 12-bit CT scanners
#: (the usual DICOM rescale intercept), −1000 is air by definition.
AIR_HU = -1024.0
#: Upper end of the default HU window: dense cortical bone reaches ≈ 1900 HU
#: (e.g. Schneider et al., Phys. Med. Biol. 41 (1996) 111, table of tissue HU); 2048 = 2 × 1024
#: keeps the window symmetric in stored bits and above any bone.
DENSE_BONE_HU = 2048.0


@dataclass(frozen=True)
class HUScale:
    """Linear map between HU and the network's [-1, 1] range.

    ``normalized = 2 (hu − min_hu) / (max_hu − min_hu) − 1``; ``min_hu`` ↦ −1, ``max_hu`` ↦ +1.

    Args:
        min_hu: HU mapped to −1 (default :data:`AIR_HU`, −1024 HU).
        max_hu: HU mapped to +1 (default :data:`DENSE_BONE_HU`, 2048 HU); must exceed ``min_hu``.
    """

    min_hu: float = AIR_HU
    max_hu: float = DENSE_BONE_HU

    def __post_init__(self):
        for name in ("min_hu", "max_hu"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number of HU, got {value!r}")
        if self.max_hu <= self.min_hu:
            raise ValueError(f"max_hu ({self.max_hu} HU) must be larger than min_hu ({self.min_hu} HU)")

    @property
    def width_hu(self) -> float:
        """Width of the HU window (HU)."""
        return float(self.max_hu) - float(self.min_hu)

    def to_normalized(self, hu: torch.Tensor) -> torch.Tensor:
        """HU (any shape) → [-1, 1], same shape; values outside the window are clamped to it
        (the tanh output cannot represent them)."""
        normalized = 2.0 * (hu - float(self.min_hu)) / self.width_hu - 1.0
        return normalized.clamp(-1.0, 1.0)

    def to_hu(self, normalized: torch.Tensor) -> torch.Tensor:
        """[-1, 1] (any shape) → HU, same shape; differentiable, no clamping."""
        return (normalized + 1.0) * (0.5 * self.width_hu) + float(self.min_hu)


def mask_probability_from_tanh(mask_tanh: torch.Tensor) -> torch.Tensor:
    """Bone probability in [0, 1] from the network's tanh-space mask channel: ``(t + 1) / 2``.

    Any shape; the result is clamped to [0, 1] so float rounding never leaves the interval.
    """
    return ((mask_tanh + 1.0) * 0.5).clamp(0.0, 1.0)


def mask_tanh_from_probability(probability: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`mask_probability_from_tanh`: ``2 p − 1``, any shape."""
    return 2.0 * probability - 1.0
