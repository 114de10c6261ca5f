"""Input checks shared by the Triton backend's entry points (one clear error each), and the accumulator dtype."""

from __future__ import annotations

import torch

from xraysyn.projector.rays import RaySet
from xraysyn.projector.triton.runtime import interpreting

__all__ = ["INDEX_BOUND_ATTR", "INT32_LIMIT", "TritonBackendInputError", "acc_torch_dtype", "check_device",
           "check_rays", "check_volume_size"]

INT32_LIMIT = 2**31 - 1


# Attribute that build_rays sets on the volume_index tensors it makes: their exclusive upper bound, so
# the backend can skip re-checking them on the device (a synchronisation) before each launch.
INDEX_BOUND_ATTR = "_xraysyn_index_bound"


class TritonBackendInputError(ValueError):
    """Malformed inputs to the Triton backend (shape, device or size beyond 32-bit indexing)."""


def acc_torch_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_device(*tensors: torch.Tensor) -> torch.device:
    device = tensors[0].device
    for t in tensors:
        if t.device != device:
            raise TritonBackendInputError(f"all inputs must be on one device, got {device} and {t.device}")
    if device.type == "cuda":
        return device
    if device.type == "cpu" and interpreting():
        return device
    raise TritonBackendInputError(
        f"the Triton backend needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got device {device}")


def check_rays(rays: RaySet, num_volumes: int, channels: int) -> tuple[int, int]:
    """``(N, R)`` of ``rays`` after checking the shapes of its marched tensors against each other, its sample
    counts' dtype, 32-bit indexing of ``N · R · max(3, channels)`` and ``volume_index`` within ``[0,
    num_volumes)`` (read on the device unless ``build_rays`` of this package recorded its bound)."""
    origin, direction, t_near, delta, n_samples, volume_index = rays.march_tensors()
    if direction.dim() != 3 or direction.shape[-1] != 3:
        raise TritonBackendInputError(f"direction must have shape (N, R, 3), got {tuple(direction.shape)}")
    n, r = direction.shape[:2]
    expected = {"origin": (n, 3), "t_near": (n, r), "delta": (n, r), "n_samples": (n, r), "volume_index": (n,)}
    for name, t in zip(expected, (origin, t_near, delta, n_samples, volume_index)):
        if tuple(t.shape) != expected[name]:
            raise TritonBackendInputError(f"{name} must have shape {expected[name]}, got {tuple(t.shape)}")
    if n_samples.dtype not in (torch.int32, torch.int64):
        raise TritonBackendInputError(f"n_samples must be an integer tensor, got {n_samples.dtype}")
    if n * r * max(3, channels) > INT32_LIMIT:
        raise TritonBackendInputError(
            f"{n} views × {r} rays × {channels} channels exceed 32-bit indexing; split the views into batches")
    known_bound = getattr(volume_index, INDEX_BOUND_ATTR, None)  # set by this module's build_rays
    if n and num_volumes and (known_bound is None or known_bound > num_volumes):
        lo, hi = (int(x) for x in torch.aminmax(volume_index.detach()))  # one device sync
        if lo < 0 or hi >= num_volumes:
            raise TritonBackendInputError(f"volume_index must lie in [0, {num_volumes}), got [{lo}, {hi}]")
    return n, r


def check_volume_size(channels: int, spatial) -> None:
    d, h, w = (int(s) for s in spatial)
    if min(d, h, w) < 2:
        raise TritonBackendInputError(f"volume spatial shape must be at least 2 along each axis, got {(d, h, w)}")
    if channels * d * h * w > INT32_LIMIT:
        raise TritonBackendInputError(
            f"one volume of {channels} × {d} × {h} × {w} voxels exceeds 32-bit indexing")
