"""Ray sets for the backend tests: a :class:`~xraysyn.projector.rays.RaySet` moved to another device or with
its float tensors in another dtype (``dataclasses.replace`` swaps single tensors)."""

from __future__ import annotations

import dataclasses

import torch

from xraysyn.projector.rays import RaySet


def converted(rays: RaySet, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> RaySet:
    """``rays`` with every tensor on ``device`` and the floating-point ones (origin, direction, t_near, delta,
    length) in ``dtype`` (None: as they are); the integer tensors keep their dtype."""

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None)

    return RaySet(**{field.name: convert(getattr(rays, field.name)) for field in dataclasses.fields(rays)})
