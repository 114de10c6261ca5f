"""``ForwardProjector``: the projector as an ``nn.Module`` for networks and training loops.

It keeps the C-arm geometry in its state dict (as extra state: plain numbers that ``.to(dtype)``
cannot round, so a checkpoint carries the geometry it was trained with) and calls the public functional API
(:func:`~xraysyn.projector.forward_project`, :func:`~xraysyn.projector.forward_project_adjoint`,
:func:`~xraysyn.projector.backproject`) with fixed sampling and backend settings.
"""

from __future__ import annotations

import torch
from torch import nn

from xraysyn.geometry import ConeBeamGeometry
from xraysyn.projector.api import BACKENDS, backproject, forward_project, forward_project_adjoint

__all__ = ["ForwardProjector"]


class ForwardProjector(nn.Module):
    """Cone-beam forward projection FP (paper eq. 1) with its adjoint and BP (eq. 7).

    Args:
        geometry: the C-arm (SDD, SID mm; detector ``(rows, cols)``; pixel spacing mm; principal point px).
        step_mm: sample spacing along each ray (mm); or
        num_samples: samples per ray across the volume (exclusive with ``step_mm``; default: the
            functional API's default).
        backend: one of :data:`~xraysyn.projector.BACKENDS`.

    State dict: ``_extra_state`` = the geometry's fields (``sdd``, ``sid`` mm, ``detector_shape``,
    ``pixel_spacing`` mm, ``principal_point`` px or None = centre); loading one replaces the geometry.
    """

    def __init__(self, geometry: ConeBeamGeometry, *, step_mm: float | None = None, num_samples: int | None = None,
                 backend: str = "auto"):
        super().__init__()
        if not isinstance(geometry, ConeBeamGeometry):
            raise TypeError(f"geometry must be a ConeBeamGeometry, got {type(geometry).__name__}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.step_mm = step_mm
        self.num_samples = num_samples
        self.backend = backend
        self.geometry = geometry

    def get_extra_state(self) -> dict:
        g = self.geometry
        return {"sdd": float(g.sdd), "sid": float(g.sid), "detector_shape": list(g.detector_shape),
                "pixel_spacing": list(g.pixel_spacing), "principal_point": None if g.principal_point is None else list(g.principal_point)}

    def set_extra_state(self, state: dict) -> None:
        self.geometry = ConeBeamGeometry(sdd=state["sdd"], sid=state["sid"],
                                         detector_shape=tuple(state["detector_shape"]),
                                         pixel_spacing=tuple(state["pixel_spacing"]),
                                         principal_point=None if state["principal_point"] is None
                                         else tuple(state["principal_point"]))

    def _sampling(self) -> dict:
        return {"step_mm": self.step_mm, "num_samples": self.num_samples, "backend": self.backend}

    def forward(self, volume: torch.Tensor, world_from_voxel: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` volumes (value u), ``(B, 4, 4)`` or ``(4, 4)`` voxel→world mm affines and
        ``(B·V, 4, 4)`` camera_from_isocenter poses → ``(B·V, C, rows, cols)`` line integrals (u × mm)."""
        return forward_project(volume, world_from_voxel, poses, self.geometry, **self._sampling())

    def adjoint(self, images: torch.Tensor, world_from_voxel: torch.Tensor, poses: torch.Tensor,
                volume_shape: tuple[int, int, int], *, num_volumes: int | None = None) -> torch.Tensor:
        """FPᵀ of ``(B·V, C, rows, cols)`` images → ``(B, C, D, H, W)`` (same rays as :meth:`forward`)."""
        return forward_project_adjoint(images, world_from_voxel, poses, self.geometry, volume_shape,
                                       num_volumes=num_volumes, **self._sampling())

    def backproject(self, images: torch.Tensor, world_from_voxel: torch.Tensor, poses: torch.Tensor,
                    volume_shape: tuple[int, int, int]) -> torch.Tensor:
        """Single-image BP (eq. 7) of ``(B, C, rows, cols)`` images → ``(B, C, D, H, W)``."""
        return backproject(images, world_from_voxel, poses, self.geometry, volume_shape, backend=self.backend)

    def extra_repr(self) -> str:
        g = self.geometry
        return (f"sdd={g.sdd}, sid={g.sid}, detector_shape={g.detector_shape}, pixel_spacing={g.pixel_spacing}, "
                f"step_mm={self.step_mm}, num_samples={self.num_samples}, backend={self.backend!r}")
