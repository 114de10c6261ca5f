"""Evaluation metrics for images and volumes: PSNR, SSIM, Dice and mean absolute error.

Every metric takes a batch ``prediction`` and ``target`` of the same shape ``(N, ...)`` and returns
one value per item, a ``(N,)`` float64 tensor on the inputs' device. Used by the trainers'
validation (issue 25) and by the evaluation of the paper's tables (PSNR/SSIM, Dice of the bone
mask).

Precision: inputs of any floating dtype are converted once; the arithmetic runs in float64 on the
CPU and in float32 on CUDA (float64 is slow on most GPUs; float32 keeps PSNR to ~1e-5 dB and SSIM
to ~1e-6 on [0, 1] data, and SSIM's (co)variances are computed on mean-centred values to avoid
cancellation). The result is cast to float64 either way. No gradients are recorded: these are
evaluation metrics, not losses.

Non-finite values in ``prediction`` or ``target`` are not an error (a diverged network is data to
report): they propagate, giving NaN (or ±inf) for the affected items.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F

__all__ = [
    "MetricInputError",
    "SSIM_K1",
    "SSIM_K2",
    "SSIM_SIGMA",
    "SSIM_WINDOW_SIZE",
    "dice",
    "gaussian_window_1d",
    "mean_absolute_error",
    "psnr",
    "ssim",
]

#: Wang et al. 2004 (IEEE TIP 13(4)), section III-C: an 11×11 circular-symmetric Gaussian window
#: with standard deviation 1.5 samples, and the stabilising constants K1 = 0.01, K2 = 0.03.
SSIM_WINDOW_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

#: Spatial dimensions SSIM supports: images ``(N, C, H, W)`` and volumes ``(N, C, D, H, W)``.
_SSIM_SPATIAL_DIMS = (2, 3)
#: Dimensions before the spatial ones in SSIM inputs: batch and channel.
_SSIM_LEADING_DIMS = 2


class MetricInputError(ValueError):
    """A bad argument to a metric: wrong type, shape, device or parameter value."""


# --------------------------------------------------------------------------------------------
# Input checks and precision
# --------------------------------------------------------------------------------------------

def _compute_dtype(device: torch.device) -> torch.dtype:
    """float64 on the CPU, float32 on accelerators (see the module docstring)."""
    return torch.float64 if device.type == "cpu" else torch.float32


def _check_pair(prediction, target, *, min_dims: int = 2, allow_non_float: bool = False) -> None:
    """One clear error naming the argument that is wrong; nothing is computed before this passes."""
    for name, value in (("prediction", prediction), ("target", target)):
        if not isinstance(value, torch.Tensor):
            raise MetricInputError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        ok_dtype = value.is_floating_point() or (allow_non_float and not value.is_complex())
        if not ok_dtype:
            expected = "a floating, integer or bool" if allow_non_float else "a floating-point"
            raise MetricInputError(f"{name} must have {expected} dtype, got {value.dtype}")
        if value.ndim < min_dims:
            raise MetricInputError(
                f"{name} must have shape (N, ...) with at least {min_dims} dims (batch first), "
                f"got shape {tuple(value.shape)}")
        if value.shape[0] == 0:
            raise MetricInputError(f"{name} has an empty batch (N = 0), shape {tuple(value.shape)}")
        if value.numel() == 0:
            raise MetricInputError(f"{name} has no elements per item, shape {tuple(value.shape)}")
    if target.shape != prediction.shape:
        raise MetricInputError(f"target shape {tuple(target.shape)} differs from prediction shape "
                               f"{tuple(prediction.shape)}")
    if target.device != prediction.device:
        raise MetricInputError(f"target is on {target.device} but prediction is on {prediction.device}")


def _check_data_range(data_range, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``data_range`` as a ``(N,)`` tensor of the compute dtype; positive and finite everywhere."""
    if isinstance(data_range, torch.Tensor):
        if data_range.is_complex() or data_range.dtype == torch.bool:
            raise MetricInputError(f"data_range must be a real number or a (N,) tensor, got dtype {data_range.dtype}")
        if data_range.ndim == 0:
            values = data_range.reshape(1).expand(batch)
        elif data_range.shape == (batch,):
            values = data_range
        else:
            raise MetricInputError(
                f"data_range tensor must have shape ({batch},) (one range per item) or be a scalar, "
                f"got shape {tuple(data_range.shape)}")
        values = values.detach().to(device=device, dtype=dtype)
    elif isinstance(data_range, Real) and not isinstance(data_range, bool):
        values = torch.full((batch,), float(data_range), device=device, dtype=dtype)
    else:
        raise MetricInputError(f"data_range must be a positive number or a ({batch},) tensor, got {data_range!r}")
    if not bool(torch.all(torch.isfinite(values) & (values > 0))):
        raise MetricInputError(f"data_range must be finite and > 0, got {data_range!r}")
    return values


def _per_item_mean(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(values.shape[0], -1).mean(dim=1)


# --------------------------------------------------------------------------------------------
# PSNR, MAE
# --------------------------------------------------------------------------------------------

def psnr(prediction: torch.Tensor, target: torch.Tensor, data_range) -> torch.Tensor:
    """Peak signal-to-noise ratio per item, in dB: ``10·log10(data_range² / MSE)``.

    Args:
        prediction: ``(N, ...)`` floating tensor, any number of non-batch dims (images
            ``(N, C, H, W)``, volumes ``(N, C, D, H, W)``), in the same units as ``target``.
        target: reference of the same shape and device.
        data_range: the span of the values (max − min possible, in the data's units): a positive
            number or a ``(N,)`` tensor with one range per item.

    Returns:
        ``(N,)`` float64 tensor on the inputs' device; ``+inf`` where the item's MSE is 0.
    """
    _check_pair(prediction, target)
    with torch.no_grad():
        dtype = _compute_dtype(prediction.device)
        ranges = _check_data_range(data_range, prediction.shape[0], prediction.device, dtype)
        difference = prediction.detach().to(dtype) - target.detach().to(dtype)
        mse = _per_item_mean(difference * difference)
        # 20·log10(range) − 10·log10(mse) keeps the ratio from overflowing float32 for tiny MSE.
        result = 20.0 * torch.log10(ranges) - 10.0 * torch.log10(mse)
        return result.to(torch.float64)


def mean_absolute_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of ``|prediction − target|`` per item over all non-batch dims.

    Args:
        prediction, target: ``(N, ...)`` floating tensors of the same shape and device.

    Returns:
        ``(N,)`` float64 tensor, in the units of the inputs.
    """
    _check_pair(prediction, target)
    with torch.no_grad():
        dtype = _compute_dtype(prediction.device)
        difference = prediction.detach().to(dtype) - target.detach().to(dtype)
        return _per_item_mean(difference.abs()).to(torch.float64)


# --------------------------------------------------------------------------------------------
# Dice
# --------------------------------------------------------------------------------------------

def dice(prediction: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Dice coefficient ``2|A∩B| / (|A| + |B|)`` of the binary masks ``A = prediction > threshold``
    and ``B = target > threshold``, per item.

    Args:
        prediction, target: ``(N, ...)`` tensors of the same shape and device: probabilities or
            soft masks (floating), labels (integer) or masks (bool; True counts as 1).
        threshold: a finite number; a value counts as foreground when strictly above it. For masks
            in tanh space ([-1, 1]) pass 0.

    Returns:
        ``(N,)`` float64 tensor in [0, 1]; 1 where both masks are empty (perfect agreement on
        "no foreground"). NaN entries count as background.
    """
    _check_pair(prediction, target, allow_non_float=True)
    if not isinstance(threshold, Real) or isinstance(threshold, bool) or not math.isfinite(threshold):
        raise MetricInputError(f"threshold must be a finite number, got {threshold!r}")
    with torch.no_grad():
        batch = prediction.shape[0]
        a = (prediction.detach() > threshold).reshape(batch, -1)
        b = (target.detach() > threshold).reshape(batch, -1)
        # Counts are exact in int64 whatever the device.
        intersection = (a & b).sum(dim=1, dtype=torch.int64)
        total = a.sum(dim=1, dtype=torch.int64) + b.sum(dim=1, dtype=torch.int64)
        intersection = intersection.to(torch.float64)
        total = total.to(torch.float64)
        both_empty = total == 0
        score = 2.0 * intersection / torch.where(both_empty, torch.ones_like(total), total)
        return torch.where(both_empty, torch.ones_like(score), score)


# --------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------

def gaussian_window_1d(window_size: int, sigma: float, *, device=None, dtype=torch.float64) -> torch.Tensor:
    """Sampled Gaussian ``exp(-x²/(2σ²))`` at ``x = -(w-1)/2 … (w-1)/2`` samples, normalised to sum 1.

    Returns a ``(window_size,)`` tensor; the 2-D/3-D SSIM window is its separable outer product.
    """
    _check_ssim_parameters(window_size, sigma, SSIM_K1, SSIM_K2)
    offsets = torch.arange(window_size, device=device, dtype=dtype) - (window_size - 1) / 2
    weights = torch.exp(-(offsets * offsets) / (2.0 * sigma * sigma))
    return weights / weights.sum()


def _check_ssim_parameters(window_size, sigma, k1, k2) -> None:
    if not isinstance(window_size, int) or isinstance(window_size, bool) or window_size < 1 or window_size % 2 == 0:
        raise MetricInputError(f"window_size must be an odd integer >= 1, got {window_size!r}")
    for name, value in (("sigma", sigma), ("k1", k1), ("k2", k2)):
        if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise MetricInputError(f"{name} must be a finite number > 0, got {value!r}")


def _separable_filter(stack: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Valid (unpadded) correlation of ``(B, 1, *spatial)`` with the separable window along every
    spatial axis; each axis shrinks by ``len(kernel) - 1``."""
    spatial = stack.ndim - _SSIM_LEADING_DIMS
    conv = F.conv2d if spatial == 2 else F.conv3d
    size = kernel.numel()
    for axis in range(spatial):
        shape = [1] * spatial
        shape[axis] = size
        stack = conv(stack, kernel.reshape(1, 1, *shape))
    return stack


def ssim(prediction: torch.Tensor, target: torch.Tensor, data_range, *, window_size: int = SSIM_WINDOW_SIZE,
         sigma: float = SSIM_SIGMA, k1: float = SSIM_K1, k2: float = SSIM_K2) -> torch.Tensor:
    """Structural similarity (Wang, Bovik, Sheikh, Simoncelli 2004, IEEE TIP) per item.

    At every window position with local Gaussian-weighted means μ, variances σ² and covariance
    σ_xy (population moments: weights sum to 1)::

        SSIM = (2 μ_x μ_y + C1)(2 σ_xy + C2) / ((μ_x² + μ_y² + C1)(σ_x² + σ_y² + C2)),
        C1 = (k1 · data_range)²,  C2 = (k2 · data_range)²

    averaged over the valid positions (the window entirely inside the image: no padding) and over
    the channels. This equals ``skimage.metrics.structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=...)`` for the default window.

    Args:
        prediction: images ``(N, C, H, W)`` or volumes ``(N, C, D, H, W)``, floating.
        target: reference of the same shape and device.
        data_range: span of the values (data units): a positive number or a ``(N,)`` tensor.
        window_size: odd side of the window in samples (pixels/voxels); every spatial size must be
            at least this.
        sigma: standard deviation of the Gaussian window in samples; the window is separable
            (a product of 1-D Gaussians, also in 3-D) and normalised to sum 1.
        k1, k2: stabilising constants of the luminance and contrast-structure terms.

    Returns:
        ``(N,)`` float64 tensor, at most 1 (1 for identical inputs).
    """
    _check_pair(prediction, target)
    spatial = prediction.ndim - _SSIM_LEADING_DIMS
    if spatial not in _SSIM_SPATIAL_DIMS:
        raise MetricInputError(
            f"prediction must be (N, C, H, W) images or (N, C, D, H, W) volumes, got shape {tuple(prediction.shape)}")
    _check_ssim_parameters(window_size, sigma, k1, k2)
    if min(prediction.shape[_SSIM_LEADING_DIMS:]) < window_size:
        raise MetricInputError(
            f"prediction spatial size {tuple(prediction.shape[_SSIM_LEADING_DIMS:])} is smaller than the SSIM "
            f"window ({window_size} samples per axis); use larger images or a smaller window_size")
    with torch.no_grad():
        device = prediction.device
        dtype = _compute_dtype(device)
        batch, channels = prediction.shape[:_SSIM_LEADING_DIMS]
        ranges = _check_data_range(data_range, batch, device, dtype)
        x = prediction.detach().to(dtype)
        y = target.detach().to(dtype)
        # Variances and the covariance are shift invariant: computing them on values centred by
        # their per-(item, channel) mean avoids cancellation in E[x²] − E[x]² (matters in float32).
        reduce_dims = tuple(range(_SSIM_LEADING_DIMS, x.ndim))
        x_centre = x.mean(dim=reduce_dims, keepdim=True)
        y_centre = y.mean(dim=reduce_dims, keepdim=True)
        xc = x - x_centre
        yc = y - y_centre
        maps = torch.stack((xc, yc, xc * xc, yc * yc, xc * yc), dim=0)  # (5, N, C, *spatial)
        flat = maps.reshape(-1, 1, *x.shape[_SSIM_LEADING_DIMS:])
        kernel = gaussian_window_1d(window_size, float(sigma), device=device, dtype=dtype)
        filtered = _separable_filter(flat, kernel).reshape(5, batch, channels, *(
            size - window_size + 1 for size in x.shape[_SSIM_LEADING_DIMS:]))
        mu_xc, mu_yc, e_xx, e_yy, e_xy = filtered
        var_x = e_xx - mu_xc * mu_xc
        var_y = e_yy - mu_yc * mu_yc
        cov_xy = e_xy - mu_xc * mu_yc
        mu_x = mu_xc + x_centre
        mu_y = mu_yc + y_centre
        shape = (batch,) + (1,) * (x.ndim - 1)
        c1 = ((k1 * ranges) ** 2).reshape(shape)
        c2 = ((k2 * ranges) ** 2).reshape(shape)
        numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
        denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
        return _per_item_mean(numerator / denominator).to(torch.float64)
