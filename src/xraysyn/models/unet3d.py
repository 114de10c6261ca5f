"""3D PriorNet G of XraySyn (paper eq. 8, supplementary Table 3): a 3D U-Net that maps the
backprojected volume V_BP to a CT estimate and a bone mask.

Architecture for encoder widths ``w_0 … w_{L-1}`` (the paper: L = 6, widths 96, 192, 384, 768,
768, 768, input 128³):

* encoder level ``i``: Conv3d K3 S2 P1 ``(w_{i-1} → w_i)`` (``w_{-1}`` = input channels), then
  normalisation (none at level 0, as in Table 3) and LeakyReLU(0.2); spatial size halves each
  level, so the input must be divisible by ``2**L``;
* decoder, from the deepest feature ``e_{L-1}`` up: for ``i = L-2 … 0``, trilinear ×2 upsampling,
  Conv3d K3 S1 P1 ``(c → w_i)``, normalisation, ReLU, then concatenation with the encoder feature
  ``e_i`` of the same size (so ``c`` is ``w_{L-1}`` for the first decoder conv and ``2 w_{i+1}``
  after);
* head: trilinear ×2 upsampling back to the input size, Conv3d K3 S1 P1 ``(2 w_0 → out)``, tanh.

For the paper preset this is exactly Table 3: conv6 768→768, conv7 1536→768, conv8 1536→384,
conv9 768→192, conv10 384→96, final 192→2.

Bias terms: Table 3 does not state them. Convolutions followed by a normalisation layer carry no
bias (the normalisation's shift makes one redundant); the first encoder conv and the head conv
(no normalisation after them) do. With ``norm="none"`` every conv has a bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from xraysyn.models.blocks import NORMS, ConvBlock

__all__ = ["NORMS", "PriorNet3D", "PriorNetConfig", "PriorNetInputError"]

#: Table 3: every convolution is 3×3×3 with padding 1.
KERNEL_SIZE = 3
PADDING = 1
#: Volumes: three spatial dimensions.
SPATIAL_DIMS = 3
#: Encoder convolutions halve the volume (stride 2); the decoder upsamples by the same factor.
DOWNSAMPLING_FACTOR = 2
#: Table 3: LeakyReLU negative slope of the encoder.
PAPER_NEGATIVE_SLOPE = 0.2
#: Table 3 encoder widths (output channels of conv0 … conv5).
PAPER_WIDTHS = (96, 192, 384, 768, 768, 768)
#: Widths of the CPU-sized preset (input divisible by 8, so 16³ volumes work).
SMALL_WIDTHS = (8, 16, 32)


class PriorNetInputError(ValueError):
    """A bad configuration or input tensor for the 3D PriorNet."""


@dataclass(frozen=True)
class PriorNetConfig:
    """Hyper-parameters of :class:`PriorNet3D`.

    Args:
        in_channels: channels of the input volume (1: the backprojected radiograph V_BP).
        out_channels: output channels (2: normalised CT and bone mask, both in tanh space).
        widths: encoder output channels per level; their number L fixes the divisibility
            ``2**L`` of the input size.
        negative_slope: LeakyReLU slope of the encoder.
        norm: ``"batch"`` (Table 3), ``"instance"`` (affine) or ``"none"``.
    """

    in_channels: int = 1
    out_channels: int = 2
    widths: tuple[int, ...] = PAPER_WIDTHS
    negative_slope: float = PAPER_NEGATIVE_SLOPE
    norm: str = "batch"

    def __post_init__(self):
        for name in ("in_channels", "out_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PriorNetInputError(f"{name} must be a positive integer, got {value!r}")
        try:
            widths = tuple(self.widths)
        except TypeError:
            raise PriorNetInputError(f"widths must be a sequence of positive integers, got {self.widths!r}") from None
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise PriorNetInputError(f"widths must be a non-empty sequence of positive integers, got {self.widths!r}")
        object.__setattr__(self, "widths", widths)
        slope = self.negative_slope
        if not isinstance(slope, (int, float)) or not math.isfinite(slope) or slope < 0:
            raise PriorNetInputError(f"negative_slope must be a finite number >= 0, got {slope!r}")
        if self.norm not in NORMS:
            raise PriorNetInputError(f"norm must be one of {NORMS}, got {self.norm!r}")

    @classmethod
    def paper(cls) -> PriorNetConfig:
        """Table 3 of the paper: widths 96…768, batch norm, LeakyReLU 0.2 (≈ 1.2e8 parameters)."""
        return cls()

    @classmethod
    def small(cls) -> PriorNetConfig:
        """A CPU-sized network (widths 8, 16, 32) for tests and small volumes (divisible by 8)."""
        return cls(widths=SMALL_WIDTHS)

    @classmethod
    def preset(cls, name: str) -> PriorNetConfig:
        """The named preset ``"paper"`` or ``"small"``."""
        presets = {"paper": cls.paper, "small": cls.small}
        if name not in presets:
            raise PriorNetInputError(f"preset must be one of {tuple(presets)}, got {name!r}")
        return presets[name]()

    @property
    def size_divisor(self) -> int:
        """Each spatial input size must be a multiple of this (``2**len(widths)``)."""
        return DOWNSAMPLING_FACTOR ** len(self.widths)


class PriorNet3D(nn.Module):
    """The 3D PriorNet G: ``(B, in_channels, D, H, W)`` → ``(B, out_channels, D, H, W)`` in [-1, 1].

    For XraySyn the input is the backprojected radiograph V_BP (scaled as in
    :func:`xraysyn.train.stage1.network_input_from_backprojection`) and the output channel 0 is
    the CT in :class:`xraysyn.models.normalization.HUScale` space, channel 1 the bone mask in
    tanh space (probability ``(t + 1) / 2``).

    Submodules: ``encoder[i]`` and ``decoder[j]`` are ``nn.Sequential`` blocks with a ``conv``
    child (``decoder[j]`` produces level ``L-2-j``); ``head`` is upsample → conv → tanh.
    """

    def __init__(self, config: PriorNetConfig | None = None):
        super().__init__()
        config = config if config is not None else PriorNetConfig.paper()
        if not isinstance(config, PriorNetConfig):
            raise PriorNetInputError(f"config must be a PriorNetConfig, got {type(config).__name__}")
        self.config = config
        widths = config.widths

        encoder = []
        previous = config.in_channels
        for level, width in enumerate(widths):
            normalised = level > 0  # Table 3: no normalisation after conv0
            encoder.append(ConvBlock(SPATIAL_DIMS, previous, width, KERNEL_SIZE, stride=DOWNSAMPLING_FACTOR,
                                     padding=PADDING, norm=config.norm if normalised else "none",
                                     activation=nn.LeakyReLU(config.negative_slope)))
            previous = width
        self.encoder = nn.ModuleList(encoder)

        decoder = []
        for level in range(len(widths) - 2, -1, -1):
            decoder.append(ConvBlock(SPATIAL_DIMS, previous, widths[level], KERNEL_SIZE, padding=PADDING,
                                     norm=config.norm, activation=nn.ReLU(), upsample_factor=DOWNSAMPLING_FACTOR))
            previous = 2 * widths[level]  # after concatenation with the encoder feature
        self.decoder = nn.ModuleList(decoder)

        self.head = ConvBlock(SPATIAL_DIMS, previous, config.out_channels, KERNEL_SIZE, padding=PADDING,
                              activation=nn.Tanh(), upsample_factor=DOWNSAMPLING_FACTOR)

    def check_input(self, volume: torch.Tensor) -> None:
        """Raise :class:`PriorNetInputError` unless ``volume`` is ``(B, in_channels, D, H, W)``
        floating point with every spatial size a positive multiple of ``config.size_divisor``."""
        cfg = self.config
        if not isinstance(volume, torch.Tensor) or volume.dim() != 5 or not volume.is_floating_point():
            shape = tuple(volume.shape) if isinstance(volume, torch.Tensor) else type(volume).__name__
            raise PriorNetInputError(f"volume must be a floating-point tensor (B, {cfg.in_channels}, D, H, W), "
                                     f"got {shape}")
        if volume.shape[1] != cfg.in_channels:
            raise PriorNetInputError(f"volume has {volume.shape[1]} channels, the network expects {cfg.in_channels}")
        spatial = tuple(volume.shape[2:])
        if any(s < cfg.size_divisor or s % cfg.size_divisor for s in spatial):
            raise PriorNetInputError(
                f"volume spatial size {spatial} must be positive multiples of {cfg.size_divisor} "
                f"(2**{len(cfg.widths)} for {len(cfg.widths)} encoder levels)")

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, D, H, W)`` → ``(B, out_channels, D, H, W)`` in [-1, 1] (tanh)."""
        self.check_input(volume)
        features = []
        x = volume
        for block in self.encoder:
            x = block(x)
            features.append(x)
        for block, skip in zip(self.decoder, reversed(features[:-1])):
            x = torch.cat([block(x), skip], dim=1)
        return self.head(x)
