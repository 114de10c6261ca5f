"""Opt-in reuse of per-volume preparation across projector calls, for a volume that stays fixed while
many poses are rendered (2D/3D registration, DRR sweeps).

Every ``forward_project`` call scans the volume for NaN/inf (one pass over it) and, on the Triton
backend, copies it into the layout the march reads (the packed corner slots, or channels-last): one
more pass, 2–4× the volume's memory. :func:`mark_static_volume` keeps both results with the tensor
and reuses them while the tensor is unchanged, which is decided by its version counter: every
in-place torch operation on it or on a view of it bumps the counter, so the copies are redone
after ``volume.mul_(2)`` or an optimiser step. Writes that bypass the counter — through
``volume.data``, or through a numpy array sharing the memory of a CPU tensor — are not seen: after
such a write, call :func:`unmark_static_volume` (or mark again). Nothing is reused for unmarked
tensors, nor for inference-mode tensors (they have no version counter).
"""

from __future__ import annotations

import torch

__all__ = ["mark_static_volume", "unmark_static_volume"]

_ATTR = "_xraysyn_static_volume"


class _Kept:
    """What is kept with a marked tensor: the version key its values were checked finite at, and the
    marched layouts made from it, each with the version key it was made at."""

    def __init__(self) -> None:
        self.finite_at: tuple | None = None
        self.layouts: dict[tuple, tuple[tuple, torch.Tensor]] = {}


def mark_static_volume(volume: torch.Tensor) -> torch.Tensor:
    """Let the projector keep this volume's finite-values check and marched copy between calls (see the
    module's docstring for what counts as a change). Returns ``volume`` itself. The kept copy costs
    the memory of the layout the Triton backend marches (up to 4× the volume, within the call's
    ``memory_budget_mib``) for as long as the tensor lives or stays marked."""
    if not isinstance(volume, torch.Tensor):
        raise TypeError(f"mark_static_volume needs a tensor, got {type(volume).__name__}")
    if getattr(volume, _ATTR, None) is None:
        setattr(volume, _ATTR, _Kept())
    return volume


def unmark_static_volume(volume: torch.Tensor) -> torch.Tensor:
    """Forget what was kept for ``volume`` (frees its marched copy); later calls prepare it afresh. Returns
    ``volume``."""
    if getattr(volume, _ATTR, None) is not None:
        delattr(volume, _ATTR)
    return volume


def _version_key(volume: torch.Tensor) -> tuple | None:
    try:
        version = volume._version
    except RuntimeError:  # inference-mode tensors track no version
        return None
    return version, volume.data_ptr(), volume.dtype, tuple(volume.shape), volume.stride()


def _kept(volume) -> tuple[_Kept | None, tuple | None]:
    kept = getattr(volume, _ATTR, None)
    if kept is None:
        return None, None
    return kept, _version_key(volume)


def known_finite(volume: torch.Tensor) -> bool:
    """True when ``volume`` is marked and was checked finite at its present version."""
    kept, key = _kept(volume)
    return key is not None and kept.finite_at == key


def remember_finite(volume: torch.Tensor) -> None:
    """Record that a marked ``volume`` was checked finite at its present version (no-op when unmarked)."""
    kept, key = _kept(volume)
    if key is not None:
        kept.finite_at = key


def layout_copy(volume: torch.Tensor, layout: tuple, make) -> torch.Tensor:
    """``make()``, the copy of ``volume`` in ``layout`` (a hashable tag); for a marked volume the copy made at
    its present version is kept and returned again until the volume changes (one layout kept at a time)."""
    kept, key = _kept(volume)
    if key is not None:
        entry = kept.layouts.get(layout)
        if entry is not None and entry[0] == key:
            return entry[1]
    copy = make()
    if key is not None:
        kept.layouts = {layout: (key, copy)}
    return copy
