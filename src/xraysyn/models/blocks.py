"""Convolution building blocks parametrised by the number of spatial dimensions.

The 3D PriorNet (volumes ``(B, C, D, H, W)``) and the 2D RefineNet (images ``(B, C, H, W)``) are built
from the same pieces; ``spatial_dims`` (2 or 3) picks ``Conv2d``/``Conv3d``, the matching normalisation
and the bi-/trilinear upsampling, so one block definition serves both networks.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

__all__ = ["NORMS", "SPATIAL_DIMS", "ConvBlock", "conv", "norm_layer", "upsample"]

#: Normalisation layers a block can name.
NORMS = ("batch", "instance", "none")
#: Supported numbers of spatial dimensions.
SPATIAL_DIMS = (2, 3)

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCE_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_INTERPOLATION = {2: "bilinear", 3: "trilinear"}


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in SPATIAL_DIMS:
        raise ValueError(f"spatial_dims must be one of {SPATIAL_DIMS}, got {spatial_dims!r}")


def conv(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
         padding: int | None = None, bias: bool = True) -> nn.Module:
    """``Conv{spatial_dims}d``; ``padding`` defaults to ``kernel_size // 2`` (same size at stride 1)."""
    _check_dims(spatial_dims)
    padding = kernel_size // 2 if padding is None else padding
    return _CONV[spatial_dims](in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)


def norm_layer(spatial_dims: int, norm: str, channels: int) -> nn.Module | None:
    """Batch norm, affine instance norm, or ``None`` for ``norm="none"``."""
    _check_dims(spatial_dims)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm == "batch":
        return _BATCH_NORM[spatial_dims](channels)
    if norm == "instance":
        return _INSTANCE_NORM[spatial_dims](channels, affine=True)
    return None


def upsample(spatial_dims: int, scale_factor: int) -> nn.Upsample:
    """Bilinear (2-D) or trilinear (3-D) upsampling by an integer factor (``align_corners=False``)."""
    _check_dims(spatial_dims)
    return nn.Upsample(scale_factor=scale_factor, mode=_INTERPOLATION[spatial_dims], align_corners=False)


class ConvBlock(nn.Sequential):
    """``[upsample] → conv → [norm] → [activation]`` with named children (``upsample``, ``conv``,
    ``norm``, ``act``); absent parts leave no child, so state-dict keys read ``conv.weight``, ``norm.bias``.

    Args:
        spatial_dims: 2 (images) or 3 (volumes).
        in_channels, out_channels: channels in and out.
        kernel_size, stride, padding: of the convolution (padding default ``kernel_size // 2``).
        norm: ``"batch"``, ``"instance"`` or ``"none"``.
        activation: an ``nn.Module`` or ``None``.
        bias: the convolution's bias; default: only when no normalisation follows (a norm's shift
            makes a bias redundant).
        upsample_factor: integer factor of an interpolation before the convolution (``None``: none).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3, *,
                 stride: int = 1, padding: int | None = None, norm: str = "none",
                 activation: nn.Module | None = None, bias: bool | None = None,
                 upsample_factor: int | None = None):
        normalisation = norm_layer(spatial_dims, norm, out_channels)
        layers = [
            ("upsample", upsample(spatial_dims, upsample_factor) if upsample_factor else None),
            ("conv", conv(spatial_dims, in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                          bias=normalisation is None if bias is None else bias)),
            ("norm", normalisation),
            ("act", activation),
        ]
        super().__init__(OrderedDict((name, layer) for name, layer in layers if layer is not None))
