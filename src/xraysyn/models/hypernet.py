"""Hypernetwork M of the 2D RefineNet (paper supplementary Table 2) and the per-sample 1×1
convolution whose weights it generates.

M reads the input radiograph ``I_in^T`` and produces, for every sample, the ``F × F`` weight matrix
of a 1×1 convolution that the RDN applies to its ``F`` fused features after global feature fusion
(:mod:`xraysyn.models.rdn`). Its purpose in the paper: carry high-level information of the real
radiograph that the 3D PriorNet may have lost into the refinement.

Architecture (Table 2, ``F = 64``, input 256²): eight convolutions K3 S2 P1
``1 → 32 → 64 → 128 → 256 → 512 → 1024 → 2048 → 4096`` with a ReLU after each but the last; every
convolution halves the image (``s ↦ ⌊(s − 1) / 2⌋ + 1``), so 256² shrinks to 1×1 and the 4096
output channels of a sample are its ``64 × 64 = F²`` weights. Table 2 prints the input channels of
CONV1 as 64 and the last layer's name as CONV4; both are typesetting slips (the channel chain and
the official release, ``cpeng93/XraySyn``, ``xraysyn/networks/rdn_meta.py``, say 32 and CONV7).

Weight layout (as in the release): the ``F²`` outputs of a sample, read row-major as an
``(F, F)`` matrix ``W``, are ``W[out, in]``: output feature ``out`` is ``Σ_in W[out, in] x_in``.
The generated convolution has no bias.

Generalisation for smaller presets: the number of convolutions is whatever reduces the configured
input edge to 1 pixel, and the last width must be ``F²``; :meth:`HyperNetworkConfig.doubling`
builds the Table 2 pattern (widths doubling from a base, the last one ``F²``) for any input size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from xraysyn.models.blocks import conv

__all__ = ["HyperNetworkConfig", "HyperNetworkInputError", "HyperNetworkM", "per_sample_conv1x1"]

#: Table 2: every convolution of M is 3×3, stride 2, padding 1.
KERNEL_SIZE = 3
STRIDE = 2
PADDING = 1
#: Channels of the input radiograph (grey scale).
IN_CHANNELS = 1
#: Table 2: width of CONV0; later widths double.
PAPER_BASE_WIDTH = 32
#: Table 2 / release: the input radiograph is 256 × 256.
PAPER_INPUT_SIZE = 256
#: Paper: the generated 1×1 convolution acts on the RDN's 64 base features (64 × 64 = 4096 weights).
PAPER_FEATURES = 64


class HyperNetworkInputError(ValueError):
    """A bad configuration or input of the hypernetwork M or of :func:`per_sample_conv1x1`."""


def _halved(size: int) -> int:
    """Output edge of a K3 S2 P1 convolution on an edge of ``size`` pixels."""
    return (size + 2 * PADDING - KERNEL_SIZE) // STRIDE + 1


def convolutions_to_one_pixel(size: int) -> int:
    """Number of K3 S2 P1 convolutions that reduce an edge of ``size`` pixels to 1 (8 for 256)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise HyperNetworkInputError(f"input size must be a positive integer number of pixels, got {size!r}")
    count = 0
    while size > 1:
        size = _halved(size)
        count += 1
    return count


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HyperNetworkInputError(f"{name} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class HyperNetworkConfig:
    """Hyper-parameters of :class:`HyperNetworkM`.

    Args:
        features: ``F``, the channels of the generated 1×1 convolution (in and out); M outputs
            ``F²`` weights per sample. Must equal the RDN's ``features``.
        input_size: edge of the square input radiograph in pixels (256 in the paper).
        widths: output channels of the convolutions; their number must be exactly the number of
            K3 S2 P1 convolutions that reduce ``input_size`` to 1 pixel
            (:func:`convolutions_to_one_pixel`), and the last must be ``features**2``.
    """

    features: int = PAPER_FEATURES
    input_size: int = PAPER_INPUT_SIZE
    widths: tuple[int, ...] = tuple(PAPER_BASE_WIDTH * 2 ** i for i in range(8))

    def __post_init__(self):
        features = _positive_int("features", self.features)
        _positive_int("input_size", self.input_size)
        try:
            widths = tuple(self.widths)
        except TypeError:
            raise HyperNetworkInputError(f"widths must be a sequence of positive integers, "
                                         f"got {self.widths!r}") from None
        if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise HyperNetworkInputError(f"widths must be positive integers, got {self.widths!r}")
        object.__setattr__(self, "widths", widths)
        needed = convolutions_to_one_pixel(self.input_size)
        if needed < 1:
            raise HyperNetworkInputError(f"input_size must be at least 2 pixels, got {self.input_size}")
        if len(widths) != needed:
            raise HyperNetworkInputError(
                f"widths has {len(widths)} entries, but an input of {self.input_size} pixels needs exactly "
                f"{needed} stride-2 convolutions to reach 1 pixel")
        if widths[-1] != features ** 2:
            raise HyperNetworkInputError(
                f"the last width must be features**2 = {features ** 2} (one weight per input/output feature "
                f"pair of the generated 1x1 convolution), got {widths[-1]}")

    @classmethod
    def doubling(cls, features: int, input_size: int, base_width: int) -> HyperNetworkConfig:
        """Table 2's pattern for any input: ``L = convolutions_to_one_pixel(input_size)`` convolutions
        of widths ``base_width · 2**i`` (i = 0 … L − 2) and a last one of ``features**2``."""
        _positive_int("base_width", base_width)
        count = convolutions_to_one_pixel(input_size)
        if count < 1:
            raise HyperNetworkInputError(f"input_size must be at least 2 pixels, got {input_size}")
        widths = tuple(base_width * 2 ** i for i in range(count - 1)) + (_positive_int("features", features) ** 2,)
        return cls(features=features, input_size=input_size, widths=widths)

    @classmethod
    def paper(cls) -> HyperNetworkConfig:
        """Table 2: 256² input, 1 → 32 → … → 2048 → 4096 = 64² (about 1.0e8 parameters)."""
        return cls()

    @classmethod
    def cpu64(cls) -> HyperNetworkConfig:
        """For the ``cpu64`` RefineNet: 128² input, ``F = 32``: 1 → 8 → … → 256 → 1024 (7 convolutions)."""
        return cls.doubling(features=32, input_size=128, base_width=8)

    @classmethod
    def small(cls) -> HyperNetworkConfig:
        """For tests: 32² input, ``F = 8``: 1 → 4 → 8 → 16 → 32 → 64 (5 convolutions)."""
        return cls.doubling(features=8, input_size=32, base_width=4)

    @classmethod
    def preset(cls, name: str) -> HyperNetworkConfig:
        """The named preset ``"paper"``, ``"cpu64"`` or ``"small"``."""
        presets = {"paper": cls.paper, "cpu64": cls.cpu64, "small": cls.small}
        if name not in presets:
            raise HyperNetworkInputError(f"preset must be one of {tuple(presets)}, got {name!r}")
        return presets[name]()


class HyperNetworkM(nn.Module):
    """M: radiograph ``(N, 1, S, S)`` (display-normalised, values in [0, 1]) → per-sample 1×1
    convolution weights ``(N, F, F)`` indexed ``[sample, out_feature, in_feature]``.

    ``S`` is ``config.input_size``; ``F = config.features``. The weights are dimensionless (they
    mix the RDN's features). Submodule ``convs[i]`` is the i-th K3 S2 P1 convolution; a ReLU
    follows every convolution but the last (Table 2, release).
    """

    def __init__(self, config: HyperNetworkConfig | None = None):
        super().__init__()
        config = config if config is not None else HyperNetworkConfig.paper()
        if not isinstance(config, HyperNetworkConfig):
            raise HyperNetworkInputError(f"config must be a HyperNetworkConfig, got {type(config).__name__}")
        self.config = config
        channels = (IN_CHANNELS, *config.widths)
        self.convs = nn.ModuleList(conv(2, c_in, c_out, KERNEL_SIZE, stride=STRIDE, padding=PADDING)
                                   for c_in, c_out in zip(channels[:-1], channels[1:]))
        self.act = nn.ReLU()

    def check_input(self, radiograph: torch.Tensor) -> None:
        """Raise :class:`HyperNetworkInputError` unless ``radiograph`` is a floating-point
        ``(N, 1, S, S)`` tensor with ``S = config.input_size`` and ``N ≥ 1``."""
        size = self.config.input_size
        expected = f"(N, {IN_CHANNELS}, {size}, {size})"
        if not isinstance(radiograph, torch.Tensor) or radiograph.dim() != 4 or not radiograph.is_floating_point():
            got = tuple(radiograph.shape) if isinstance(radiograph, torch.Tensor) else type(radiograph).__name__
            raise HyperNetworkInputError(f"radiograph must be a floating-point tensor {expected}, got {got}")
        if radiograph.shape[0] < 1 or tuple(radiograph.shape[1:]) != (IN_CHANNELS, size, size):
            raise HyperNetworkInputError(f"radiograph must have shape {expected}, got {tuple(radiograph.shape)}")

    def forward(self, radiograph: torch.Tensor) -> torch.Tensor:
        """``(N, 1, S, S)`` → ``(N, F, F)`` weights ``W[n, out, in]`` (the ``F²`` output channels
        of the last convolution, read row-major)."""
        self.check_input(radiograph)
        x = radiograph
        last = len(self.convs) - 1
        for index, layer in enumerate(self.convs):
            x = layer(x)
            if index < last:
                x = self.act(x)
        features = self.config.features
        return x.reshape(x.shape[0], features, features)


def per_sample_conv1x1(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A 1×1 convolution without bias whose weights differ per sample.

    ``out[n, o, h, w] = Σ_c weights[n, o, c] · x[n, c, h, w]``, i.e. for every sample ``n`` the
    result of ``torch.nn.functional.conv2d(x[n:n+1], weights[n][:, :, None, None])``.

    Args:
        x: features ``(N, C_in, H, W)``, floating point.
        weights: ``(N, C_out, C_in)``, same dtype and device as ``x``.

    Returns:
        ``(N, C_out, H, W)``.

    Raises:
        HyperNetworkInputError: on wrong ranks, batch or channel mismatch, or different dtypes.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise HyperNetworkInputError(f"x must be a floating-point tensor (N, C_in, H, W), got {got}")
    if not isinstance(weights, torch.Tensor) or weights.dim() != 3:
        got = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise HyperNetworkInputError(f"weights must be a tensor (N, C_out, C_in), got {got}")
    n, c_in, height, width = x.shape
    if weights.shape[0] != n or weights.shape[2] != c_in:
        raise HyperNetworkInputError(
            f"weights {tuple(weights.shape)} do not fit x {tuple(x.shape)}: expected ({n}, C_out, {c_in})")
    if weights.dtype != x.dtype or weights.device != x.device:
        raise HyperNetworkInputError(f"weights ({weights.dtype}, {weights.device}) must have the dtype and device "
                                     f"of x ({x.dtype}, {x.device})")
    return torch.bmm(weights, x.reshape(n, c_in, height * width)).reshape(n, weights.shape[1], height, width)
