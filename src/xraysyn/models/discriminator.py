"""PatchGAN discriminator D of the 2D RefineNet's LSGAN (paper eq. 13-14).

The layout is the "N-layer" PatchGAN of pix2pix (Isola et al., CVPR 2017) that the official
release (``cpeng93/XraySyn``, ``xraysyn/networks/common.py``, ``NLayerDiscriminator(input_nc=1,
ndf=64, n_layers=3, norm_layer="instance")``) uses. For ``L`` layers and ``f`` filters:

* conv K4 S2 P1 ``(in → f)``, LeakyReLU(0.2), no normalisation;
* for ``n = 1 … L−1``: conv K4 S2 P1 ``(f·m(n−1) → f·m(n))``, norm, LeakyReLU(0.2), with
  ``m(n) = min(2**n, 8)``;
* conv K4 S1 P1 ``(f·m(L−1) → f·m(L))``, norm, LeakyReLU(0.2);
* conv K4 S1 P1 ``(f·m(L) → 1)``: one logit per patch, no activation (LSGAN takes raw scores).

Every K4 P1 convolution maps an edge ``s`` to ``⌊(s − 2) / stride⌋ + 1``: a 256² radiograph gives
30 × 30 patch logits, each seeing a 70 × 70 pixel receptive field (paper/pix2pix: "70×70 PatchGAN").

Our addition: D sees its input through a fixed 3×3 binomial low-pass (:func:`binomial_blur`, ``[1, 2, 1]/4`` in
each direction, reflect padding), whose response is zero at the Nyquist frequencies. Without it, the gradient
that D's strided convolutions send back to the generator rewards a fixed 2×2 sub-pixel pattern, which the 2DRN's
pixel shuffle learns readily (measured on the cpu64 stage 2: docs/models.md); with it D cannot see that pattern,
so only the reconstruction loss, which penalises it, acts on it.

Normalisation: ``"instance"`` is non-affine instance normalisation (the pix2pix/release choice),
``"batch"`` affine batch normalisation, ``"none"`` nothing. Convolutions followed by a
normalisation carry no bias (mean subtraction cancels it; pix2pix keeps one with instance norm,
which never receives a gradient): the paper preset has 896 parameters fewer than pix2pix's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from xraysyn.models.blocks import conv, norm_layer

__all__ = ["DISCRIMINATOR_NORMS", "DiscriminatorConfig", "DiscriminatorInputError", "PatchDiscriminator",
           "binomial_blur"]

#: pix2pix PatchGAN: 4×4 kernels, padding 1.
KERNEL_SIZE = 4
PADDING = 1
#: Stride of the downsampling convolutions (the last two have stride 1).
DOWN_STRIDE = 2
#: pix2pix: LeakyReLU negative slope.
NEGATIVE_SLOPE = 0.2
#: pix2pix: the channel multiplier stops growing at 8 × filters.
MAX_MULTIPLIER = 8
#: Normalisations D can use.
DISCRIMINATOR_NORMS = ("instance", "batch", "none")


#: The 1-D binomial filter of :func:`binomial_blur` (sums to 1; response cos²(ω/2): 1 at ω = 0, 0 at Nyquist).
BINOMIAL_TAPS = (0.25, 0.5, 0.25)


def binomial_blur(images: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` → the same shape, each channel filtered by ``[1, 2, 1]/4`` along rows and columns with
    reflect padding: constants pass unchanged, a pattern alternating every pixel (in rows, columns or both) is
    removed exactly (away from the border)."""
    taps = torch.tensor(BINOMIAL_TAPS, dtype=images.dtype, device=images.device)
    kernel = (taps[:, None] * taps[None, :]).expand(images.shape[1], 1, 3, 3)
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1), mode="reflect")
    return torch.nn.functional.conv2d(padded, kernel, groups=images.shape[1])


class DiscriminatorInputError(ValueError):
    """A bad configuration or input of the PatchGAN discriminator."""


def _multiplier(layer: int) -> int:
    return min(2 ** layer, MAX_MULTIPLIER)


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Hyper-parameters of :class:`PatchDiscriminator`.

    Args:
        in_channels: image channels (1: grey radiographs).
        filters: ``f``, channels of the first convolution (64).
        layers: ``L``, number of stride-2 convolutions (3 = pix2pix's ``n_layers=3``).
        norm: ``"instance"`` (non-affine, the release), ``"batch"`` or ``"none"``.
        negative_slope: LeakyReLU slope (0.2).
    """

    in_channels: int = 1
    filters: int = 64
    layers: int = 3
    norm: str = "instance"
    negative_slope: float = NEGATIVE_SLOPE

    def __post_init__(self):
        for name in ("in_channels", "filters", "layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DiscriminatorInputError(f"{name} must be a positive integer, got {value!r}")
        if self.norm not in DISCRIMINATOR_NORMS:
            raise DiscriminatorInputError(f"norm must be one of {DISCRIMINATOR_NORMS}, got {self.norm!r}")
        slope = self.negative_slope
        if isinstance(slope, bool) or not isinstance(slope, (int, float)) or not math.isfinite(slope) or slope < 0:
            raise DiscriminatorInputError(f"negative_slope must be a finite number >= 0, got {slope!r}")

    @classmethod
    def paper(cls) -> DiscriminatorConfig:
        """The release's D: 64 filters, 3 layers, instance norm (2,761,793 parameters)."""
        return cls()

    @classmethod
    def cpu64(cls) -> DiscriminatorConfig:
        """CPU-sized: 16 filters, 3 layers (128² radiographs → 14 × 14 logits)."""
        return cls(filters=16)

    @classmethod
    def small(cls) -> DiscriminatorConfig:
        """For tests: 8 filters, 2 layers (32² images → 6 × 6 logits)."""
        return cls(filters=8, layers=2)

    @classmethod
    def preset(cls, name: str) -> DiscriminatorConfig:
        """The named preset ``"paper"``, ``"cpu64"`` or ``"small"``."""
        presets = {"paper": cls.paper, "cpu64": cls.cpu64, "small": cls.small}
        if name not in presets:
            raise DiscriminatorInputError(f"preset must be one of {tuple(presets)}, got {name!r}")
        return presets[name]()

    def output_size(self, size: int) -> int:
        """Edge of the logit map for an input edge of ``size`` pixels (≤ 0: input too small)."""
        for _ in range(self.layers):
            size = (size + 2 * PADDING - KERNEL_SIZE) // DOWN_STRIDE + 1
        for _ in range(2):  # the two stride-1 convolutions
            size = size + 2 * PADDING - KERNEL_SIZE + 1
        return size


def _norm(kind: str, channels: int) -> nn.Module | None:
    if kind == "instance":
        # non-affine like pix2pix; blocks.norm_layer's instance norm is affine
        return nn.InstanceNorm2d(channels, affine=False)
    return norm_layer(2, kind, channels)


class PatchDiscriminator(nn.Module):
    """D: images ``(N, in_channels, H, W)`` (display-normalised radiographs in [0, 1]) → patch
    logits ``(N, 1, H', W')`` with ``H' = config.output_size(H)`` (30 for 256), dimensionless
    raw scores (LSGAN targets: 1 real, 0 fake).

    Submodule ``layers`` is one ``nn.Sequential``; its ``nn.Conv2d`` children in order are the
    ``L + 2`` convolutions listed in the module docstring.
    """

    def __init__(self, config: DiscriminatorConfig | None = None):
        super().__init__()
        config = config if config is not None else DiscriminatorConfig.paper()
        if not isinstance(config, DiscriminatorConfig):
            raise DiscriminatorInputError(f"config must be a DiscriminatorConfig, got {type(config).__name__}")
        self.config = config
        f = config.filters
        normalised = config.norm != "none"
        sequence: list[nn.Module] = [
            conv(2, config.in_channels, f, KERNEL_SIZE, stride=DOWN_STRIDE, padding=PADDING),
            nn.LeakyReLU(config.negative_slope),
        ]
        for layer in range(1, config.layers + 1):
            stride = DOWN_STRIDE if layer < config.layers else 1
            channels = f * _multiplier(layer)
            sequence.append(conv(2, f * _multiplier(layer - 1), channels, KERNEL_SIZE, stride=stride,
                                 padding=PADDING, bias=not normalised))
            normalisation = _norm(config.norm, channels)
            if normalisation is not None:
                sequence.append(normalisation)
            sequence.append(nn.LeakyReLU(config.negative_slope))
        sequence.append(conv(2, f * _multiplier(config.layers), 1, KERNEL_SIZE, stride=1, padding=PADDING))
        self.layers = nn.Sequential(*sequence)

    def check_input(self, images: torch.Tensor) -> None:
        """Raise :class:`DiscriminatorInputError` unless ``images`` is floating point
        ``(N, in_channels, H, W)`` large enough for at least one logit."""
        cfg = self.config
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise DiscriminatorInputError(f"images must be a floating-point tensor (N, {cfg.in_channels}, H, W), "
                                          f"got {got}")
        if images.shape[0] < 1 or images.shape[1] != cfg.in_channels:
            raise DiscriminatorInputError(f"images must have shape (N, {cfg.in_channels}, H, W) with N >= 1, "
                                          f"got {tuple(images.shape)}")
        if min(cfg.output_size(images.shape[2]), cfg.output_size(images.shape[3])) < 1:
            raise DiscriminatorInputError(
                f"images of {images.shape[2]}x{images.shape[3]} pixels are too small for a {cfg.layers}-layer "
                f"PatchGAN (no patch logit left)")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, H, W)`` → ``(N, 1, H', W')`` patch logits."""
        self.check_input(images)
        return self.layers(binomial_blur(images))
