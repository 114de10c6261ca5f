"""Networks of XraySyn: the 3D PriorNet (3DPN, paper Table 3) and value conversions."""

from xraysyn.models.normalization import (
    AIR_HU,
    DENSE_BONE_HU,
    HUScale,
    mask_probability_from_tanh,
    mask_tanh_from_probability,
)
from xraysyn.models.unet3d import NORMS, PriorNet3D, PriorNetConfig, PriorNetInputError
from xraysyn.models.hypernet import HyperNetworkConfig, HyperNetworkInputError, HyperNetworkM, per_sample_conv1x1
from xraysyn.models.rdn import RDN, RDNConfig, RDNInputError, ResidualDenseBlock
from xraysyn.models.refine2d import RefineNet2D, RefineNetConfig, RefineNetInputError
from xraysyn.models.discriminator import DiscriminatorConfig, DiscriminatorInputError, PatchDiscriminator

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
    # stage 2: the 2D RefineNet (RDN F + hypernetwork M) and the PatchGAN discriminator D
    "DiscriminatorConfig",
    "DiscriminatorInputError",
    "HyperNetworkConfig",
    "HyperNetworkInputError",
    "HyperNetworkM",
    "PatchDiscriminator",
    "RDN",
    "RDNConfig",
    "RDNInputError",
    "RefineNet2D",
    "RefineNetConfig",
    "RefineNetInputError",
    "ResidualDenseBlock",
    "per_sample_conv1x1",
]
