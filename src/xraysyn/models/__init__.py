"""Networks of XraySyn: the 3D PriorNet (3DPN, paper Table 3) and value conversions."""

from xraysyn.models.normalization import (
    AIR_HU,
    DENSE_BONE_HU,
    HUScale,
    mask_probability_from_tanh,
    mask_tanh_from_probability,
)
from xraysyn.models.unet3d import NORMS, PriorNet3D, PriorNetConfig, PriorNetInputError

__all__ = [
    "AIR_HU",
    "DENSE_BONE_HU",
    "NORMS",
    "HUScale",
    "PriorNet3D",
    "PriorNetConfig",
    "PriorNetInputError",
    "mask_probability_from_tanh",
    "mask_tanh_from_probability",
]
