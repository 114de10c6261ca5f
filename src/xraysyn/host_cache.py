"""Exact memo of the projector's host-side set-up, keyed by the values it depends on.

Each projector call validates its poses and affines and, on the Triton backend, derives a few
numbers per view from them (source position, camera-to-voxel map) in float64 numpy: ~100 µs of
Python per call, paid while the GPU waits. These are pure functions of a few hundred bytes of
host data, so their results are kept under a key made of exactly those bytes (plus shapes,
dtypes and the geometry's numbers): a call with the same poses as a recent one — a benchmark, a
fixed set of training views, a DRR sweep over the same angles — skips the work; any other call
computes it as before. Nothing on a device is kept, only small numpy arrays; failed validations are
never kept, so bad input raises every time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

__all__ = ["HostMemo", "array_key"]


def array_key(array: np.ndarray | None) -> tuple | None:
    """A hashable key equal for two arrays exactly when their dtype, shape and bytes are equal."""
    if array is None:
        return None
    return array.dtype.str, array.shape, np.ascontiguousarray(array).tobytes()


class HostMemo:
    """A small least-recently-used map (thread-safe) from hashable keys to host-side results."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.max_entries = int(max_entries)
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        """The value stored under ``key`` (now the most recently used), or None."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        """Store ``value`` (not None) under ``key``, dropping the least recently used entry when full."""
        if value is None:
            raise ValueError("HostMemo cannot store None (it means 'not found')")
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
