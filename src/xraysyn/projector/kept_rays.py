"""Ray sets kept on the device for geometries met again (the Triton backend's ray set-up).

A ray set depends only on the geometry of a call: the exact values of its poses, affines and
isocenter, the volume's shape, the detector and the sampling. A call that meets the same geometry as a
recent one — a benchmark, a fixed set of training or rendering views, one view set applied to many
volumes — gets the same tensors back instead of queueing the set-up again: on a GPU that saves the
set-up's launch, its two host→device copies and five allocations (tens of µs of host time per call,
during which an idle GPU waits for the march to be launched), and the set-up kernel itself.

Kept sets cost device memory (W1: 8 views × 256² rays × 28 bytes ≈ 15 MB), so the cache is bounded in
bytes (``TritonConfig.keep_rays_mib``; a set larger than the bound is never kept, 0 keeps none) and drops
the least recently used sets first. The key includes the device and, on CUDA, the stream the set was
queued on (a set made on another stream may still be under way there). The kept tensors are only read by
the marches; nothing in the projector writes to a ray set.
"""

from __future__ import annotations

import torch

from xraysyn.host_cache import HostMemo

__all__ = ["KeptRays", "ray_set_bytes"]


def ray_set_bytes(rays) -> int:
    """Device bytes of a :class:`~xraysyn.projector.rays.RaySet`'s tensors (views of one storage counted once)."""
    seen, total = set(), 0
    for tensor in vars(rays).values():
        if not isinstance(tensor, torch.Tensor):
            continue
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def device_key(device: torch.device) -> tuple:
    """The part of a kept set's key that names where it lives: device, and the current CUDA stream."""
    if device.type == "cuda":
        return device.type, device.index, torch.cuda.current_stream(device).cuda_stream
    return device.type, device.index


class KeptRays(HostMemo):
    """A least-recently-used map (thread-safe) from exact geometry keys to ray sets, bounded in bytes (the
    :class:`~xraysyn.host_cache.HostMemo` lookup, with its own size-bounded ``put``)."""

    def __init__(self) -> None:
        super().__init__(max_entries=1)  # (unused: the bound is in bytes)
        self._sizes: dict = {}
        self._bytes = 0

    def put(self, key, rays, max_bytes: int) -> bool:
        """Keep ``rays`` under ``key`` if it fits ``max_bytes``, dropping the least recently used sets until all
        kept sets fit; returns whether it was kept."""
        size = ray_set_bytes(rays)
        with self._lock:
            if self._entries.pop(key, None) is not None:
                self._bytes -= self._sizes.pop(key)
            kept = size <= max_bytes
            if kept:
                self._entries[key] = rays
                self._sizes[key] = size
                self._bytes += size
            while self._entries and self._bytes > max_bytes:
                old, _ = self._entries.popitem(last=False)
                self._bytes -= self._sizes.pop(old)
            return kept

    def clear(self) -> None:
        """Drop every kept set (their device memory returns to PyTorch's allocator)."""
        with self._lock:
            self._entries.clear()
            self._sizes.clear()
            self._bytes = 0

    @property
    def kept_bytes(self) -> int:
        return self._bytes
