"""Whether the Triton kernels can run: the ``triton`` package, a CUDA device or Triton's CPU interpreter.

Importing this module never imports ``triton`` (looking it up is enough), so it is safe without it.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

__all__ = ["available", "interpreting"]


@functools.cache
def _triton_importable() -> bool:
    """Whether the triton package is installed (looked up once: an import-path search costs ~10 µs a call)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (``TRITON_INTERPRET=1``, which must be
    set before the first kernel is used)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def available(device: torch.device | str | None = None) -> bool:
    """Whether the Triton kernels can run for tensors on ``device``: triton installed and a CUDA device, or a
    CPU device under the interpreter. ``device`` None: on some device of this machine (a CUDA GPU is present,
    or the interpreter is on)."""
    if not _triton_importable():
        return False
    if device is None:
        return torch.cuda.is_available() or interpreting()
    kind = torch.device(device).type
    return kind == "cuda" or (kind == "cpu" and interpreting())
