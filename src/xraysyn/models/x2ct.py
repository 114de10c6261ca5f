"""X2CT-CNN, the 2-D-to-3-D baseline of the paper's ablation (Ying et al., "X2CT-GAN", CVPR 2019, its
single-view CNN variant): a 2-D encoder on the radiograph whose features are copied along a third axis
(depth) into a 3-D decoder. XraySyn's ablation trains it with the losses of eq. 9 on CT2Xray radiographs
(:mod:`xraysyn.train.baselines`).

Architecture for encoder widths ``w_0 … w_{L-1}``, a square ``S × S`` radiograph (``S`` a multiple of
``2**L``) and an ``S³`` output:

* 2-D encoder level ``i``: Conv2d K3 S2 P1 ``(w_{i-1} → w_i)`` (``w_{-1}`` = input channels), normalisation
  (none at level 0) and LeakyReLU, then a residual dense block (``dense_layers`` densely connected conv3×3 +
  ReLU layers of ``growth`` channels, 1×1 local fusion, residual; :class:`xraysyn.models.rdn.ResidualDenseBlock`)
  — the dense 2-D encoder of X2CT; ``dense_layers = 0`` leaves it out;
* bridges: each encoder feature ``e_i`` ``(B, w_i, s_i, s_i)`` passes a 1×1 Conv2d + normalisation + ReLU and
  is copied ``s_i`` times along a new depth axis → ``(B, w_i, s_i, s_i, s_i)`` (X2CT's 2-D → 3-D
  connection; constant along depth, which is what makes it geometrically wrong away from the input view);
* 3-D decoder: Conv3d K3 ``(w_{L-1} → w_{L-1})`` + norm + ReLU on the deepest copied feature; then for
  ``i = L-2 … 0``: trilinear ×2, Conv3d K3 ``(c → w_i)`` + norm + ReLU, concatenation with the copied ``e_i``,
  Conv3d K3 ``(2 w_i → w_i)`` + norm + ReLU (``c`` = ``w_{i+1}``);
* head: trilinear ×2 to ``S³``, Conv3d K3 ``(w_0 → out)``, tanh.

Output frame: ``(B, out, depth, rows, cols)`` — depth along the copy axis, rows and columns those of the
input image; mapping it to a CT's voxel order is the caller's (see
:func:`xraysyn.train.baselines.voxel_order_from_frontal_view`). Bias terms as in the 3DPN: only on convolutions
without a normalisation after them.

Presets (``paper`` after X2CT's ngf 64; ``cpu64`` and ``small`` as the 3DPN's presets; parameter counts from
:func:`parameter_count`, checked by a hand count in ``tests/models/test_x2ct.py``):

* ``paper`` — widths 64, 128, 256, 512, 512, 512, 3 dense layers of growth 32, batch norm, for 128²
  radiographs → 128³ (68,938,626 parameters);
* ``cpu64`` — widths 16, 32, 64, 128, 2 dense layers of growth 8, instance norm, 64² → 64³ (1,206,930);
* ``small`` — widths 4, 8, 1 dense layer of growth 4, instance norm, 16² → 16³ (tests; 4,734).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from xraysyn.models.blocks import NORMS, ConvBlock
from xraysyn.models.rdn import ResidualDenseBlock

__all__ = ["X2CTConfig", "X2CTNet", "X2CTInputError", "parameter_count"]

#: Every feature convolution is K3 with "same" padding (1); the bridges are 1×1.
KERNEL_SIZE = 3
BRIDGE_KERNEL_SIZE = 1
#: The encoder halves the image per level (stride 2); the decoder doubles the volume per level.
DOWNSAMPLING_FACTOR = 2
IMAGE_DIMS = 2
VOLUME_DIMS = 3


class X2CTInputError(ValueError):
    """A bad configuration or input of the X2CT-CNN baseline."""


@dataclass(frozen=True)
class X2CTConfig:
    """Hyper-parameters of :class:`X2CTNet`.

    Args:
        widths: encoder (and decoder) channels per level; ``L = len(widths)`` fixes the divisibility ``2**L``.
        dense_layers: layers of each encoder level's residual dense block (0: none).
        growth: channels added by each dense layer.
        norm: ``"batch"``, ``"instance"`` or ``"none"``.
        negative_slope: LeakyReLU slope of the encoder.
        in_channels: radiograph channels (1).
        out_channels: volume channels (2: normalised CT and bone mask in tanh space, as the 3DPN).
    """

    widths: tuple[int, ...] = (64, 128, 256, 512, 512, 512)
    dense_layers: int = 3
    growth: int = 32
    norm: str = "batch"
    negative_slope: float = 0.2
    in_channels: int = 1
    out_channels: int = 2

    def __post_init__(self):
        try:
            widths = tuple(self.widths)
        except TypeError:
            raise X2CTInputError(f"widths must be a sequence of positive integers, got {self.widths!r}") from None
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise X2CTInputError(f"widths must be a non-empty sequence of positive integers, got {self.widths!r}")
        object.__setattr__(self, "widths", widths)
        for name, minimum in (("dense_layers", 0), ("growth", 1), ("in_channels", 1), ("out_channels", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise X2CTInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
        slope = self.negative_slope
        if isinstance(slope, bool) or not isinstance(slope, (int, float)) or not math.isfinite(slope) or slope < 0:
            raise X2CTInputError(f"negative_slope must be a finite number >= 0, got {slope!r}")
        if self.norm not in NORMS:
            raise X2CTInputError(f"norm must be one of {NORMS}, got {self.norm!r}")

    @classmethod
    def paper(cls) -> X2CTConfig:
        """After X2CT (ngf 64): widths 64…512 over 6 levels, dense blocks 3 × growth 32, batch norm (128² → 128³)."""
        return cls()

    @classmethod
    def cpu64(cls) -> X2CTConfig:
        """For 64² → 64³ on 2 CPU cores: widths 16…128 over 4 levels, 2 × growth 8, instance norm."""
        return cls(widths=(16, 32, 64, 128), dense_layers=2, growth=8, norm="instance")

    @classmethod
    def small(cls) -> X2CTConfig:
        """For tests (16² → 16³): widths 4, 8, one dense layer of growth 4, instance norm."""
        return cls(widths=(4, 8), dense_layers=1, growth=4, norm="instance")

    @classmethod
    def preset(cls, name: str) -> X2CTConfig:
        """The named preset ``"paper"``, ``"cpu64"`` or ``"small"``."""
        presets = {"paper": cls.paper, "cpu64": cls.cpu64, "small": cls.small}
        if name not in presets:
            raise X2CTInputError(f"preset must be one of {tuple(presets)}, got {name!r}")
        return presets[name]()

    @property
    def size_divisor(self) -> int:
        """The image side must be a multiple of this (``2**len(widths)``)."""
        return DOWNSAMPLING_FACTOR ** len(self.widths)


class X2CTNet(nn.Module):
    """``(B, in_channels, S, S)`` radiograph → ``(B, out_channels, S, S, S)`` volume in [-1, 1] (tanh), in the
    frame ``(depth, rows, cols)`` of the module docstring. The network is unit-agnostic (XraySyn feeds it the
    normalised radiograph in [0, 1] and reads the channels as the 3DPN's: CT in HUScale units, bone mask).

    Submodules: ``encoder[i]`` (``nn.Sequential``: ``down`` ConvBlock, optional ``dense``), ``bridges[i]``
    (1×1 ConvBlocks), ``bottleneck``, ``up[j]`` and ``fuse[j]`` (3-D ConvBlocks of level ``L-2-j``), ``head``.
    """

    def __init__(self, config: X2CTConfig | None = None):
        super().__init__()
        config = config if config is not None else X2CTConfig.paper()
        if not isinstance(config, X2CTConfig):
            raise X2CTInputError(f"config must be an X2CTConfig, got {type(config).__name__}")
        self.config = config
        widths, norm = config.widths, config.norm
        encoder, bridges = [], []
        previous = config.in_channels
        for level, width in enumerate(widths):
            parts = [("down", ConvBlock(IMAGE_DIMS, previous, width, KERNEL_SIZE, stride=DOWNSAMPLING_FACTOR,
                                        norm=norm if level > 0 else "none",
                                        activation=nn.LeakyReLU(config.negative_slope)))]
            if config.dense_layers:
                parts.append(("dense", ResidualDenseBlock(width, config.growth, config.dense_layers)))
            encoder.append(nn.Sequential(OrderedDict(parts)))
            bridges.append(ConvBlock(IMAGE_DIMS, width, width, BRIDGE_KERNEL_SIZE, norm=norm, activation=nn.ReLU()))
            previous = width
        self.encoder = nn.ModuleList(encoder)
        self.bridges = nn.ModuleList(bridges)
        self.bottleneck = ConvBlock(VOLUME_DIMS, widths[-1], widths[-1], KERNEL_SIZE, norm=norm, activation=nn.ReLU())
        up, fuse = [], []
        previous = widths[-1]
        for level in range(len(widths) - 2, -1, -1):
            up.append(ConvBlock(VOLUME_DIMS, previous, widths[level], KERNEL_SIZE, norm=norm, activation=nn.ReLU(),
                                upsample_factor=DOWNSAMPLING_FACTOR))
            fuse.append(ConvBlock(VOLUME_DIMS, 2 * widths[level], widths[level], KERNEL_SIZE, norm=norm,
                                  activation=nn.ReLU()))
            previous = widths[level]
        self.up = nn.ModuleList(up)
        self.fuse = nn.ModuleList(fuse)
        self.head = ConvBlock(VOLUME_DIMS, widths[0], config.out_channels, KERNEL_SIZE, activation=nn.Tanh(),
                              upsample_factor=DOWNSAMPLING_FACTOR)

    def check_input(self, image: torch.Tensor) -> None:
        """Raise :class:`X2CTInputError` unless ``image`` is floating point ``(B, in_channels, S, S)`` with ``S``
        a positive multiple of ``config.size_divisor``."""
        cfg = self.config
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or not image.is_floating_point():
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise X2CTInputError(f"image must be a floating-point tensor (B, {cfg.in_channels}, S, S), got {got}")
        if image.shape[0] < 1 or image.shape[1] != cfg.in_channels:
            raise X2CTInputError(f"image must have shape (B, {cfg.in_channels}, S, S), got {tuple(image.shape)}")
        rows, cols = image.shape[2:]
        if rows != cols or rows < cfg.size_divisor or rows % cfg.size_divisor:
            raise X2CTInputError(f"image must be square with a side that is a positive multiple of "
                                 f"{cfg.size_divisor} (2**{len(cfg.widths)}), got {rows}×{cols}")

    @staticmethod
    def copy_along_depth(features: torch.Tensor) -> torch.Tensor:
        """``(B, C, s, s)`` → ``(B, C, s, s, s)``: the same image at every depth (a view, no copy in memory)."""
        return features.unsqueeze(2).expand(-1, -1, features.shape[2], -1, -1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, S, S)`` → ``(B, out_channels, S, S, S)`` (depth, rows, cols) in [-1, 1]."""
        self.check_input(image)
        skips = []
        x = image
        for block, bridge in zip(self.encoder, self.bridges):
            x = block(x)
            skips.append(self.copy_along_depth(bridge(x)))
        volume = self.bottleneck(skips[-1])
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips[:-1])):
            volume = fuse(torch.cat([up(volume), skip], dim=1))
        return self.head(volume)


def parameter_count(config: X2CTConfig) -> int:
    """Number of trainable parameters of :class:`X2CTNet` with ``config``."""
    return sum(p.numel() for p in X2CTNet(config).parameters())
