"""The protocol every projector backend implements, and what each one declares it can do.

A backend marches the rays of :mod:`xraysyn.projector.rays` (the sampling model shared by all of them)
through a volume: :meth:`ProjectorBackend.forward` gives the line integrals, :meth:`ProjectorBackend.adjoint`
their exact transpose. Both take the rays as one :class:`~xraysyn.projector.rays.RaySet` (a backend reads its
``origin (N, 3)``, ``direction (N, R, 3)``, ``t_near``, ``delta`` ``(N, R)`` mm, ``n_samples (N, R)`` int and
``volume_index (N,)`` int; ``length`` is not marched). What a backend offers beyond that is declared in its
:class:`Capabilities`, which :mod:`xraysyn.projector.api` reads instead of probing the backend for attributes.

Backends: the torch reference (:mod:`xraysyn.projector.reference`, :data:`REFERENCE_CAPABILITIES`), numba
on the CPU (:class:`xraysyn.projector.cpu_numba.NumbaBackend`), Triton on CUDA
(:class:`xraysyn.projector.triton.TritonBackend`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch

from xraysyn.projector.rays import RaySet

__all__ = ["Capabilities", "ProjectorBackend", "REFERENCE_CAPABILITIES", "capabilities_of"]


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do.

    Attributes:
        devices: device types it runs on (``"cpu"``, ``"cuda"``).
        pose_gradients: differentiates with respect to the rays (poses, affines, isocenter), not only the volume.
        low_precision_volumes: reads float16/bfloat16 volumes as stored (float32 accumulation), so the API
            hands them over without an upcast copy.
        prepares_volumes: has ``prepare_volume(volume, memory_budget_mib, check_finite)``, started before the
            rays are set up (its layout copy and NaN/inf scan overlap the host's work), whose result its
            ``forward`` takes as ``prepared=``.
        static_volumes: keeps what it prepares for volumes marked static
            (:func:`xraysyn.projector.mark_static_volume`).
        builds_rays: has its own ``build_rays`` (same arguments and result as
            :func:`xraysyn.projector.rays.build_rays`, plus ``host_frames``), used when no ray gradient is needed.
        backprojects: has its own BP (:func:`xraysyn.projector.backproject` with ``backend=`` its name).
    """

    devices: tuple[str, ...]
    pose_gradients: bool = False
    low_precision_volumes: bool = False
    prepares_volumes: bool = False
    static_volumes: bool = False
    builds_rays: bool = False
    backprojects: bool = False


# The torch reference (reference.march_forward / march_adjoint through autograd): any device, ray gradients too.
REFERENCE_CAPABILITIES = Capabilities(devices=("cpu", "cuda"), pose_gradients=True)


@runtime_checkable
class ProjectorBackend(Protocol):
    """A backend of the ray march (see the module docstring for what it reads of the rays)."""

    capabilities: ClassVar[Capabilities]

    def forward(self, volume: torch.Tensor, rays: RaySet, memory_budget_mib: float = 512.0) -> torch.Tensor:
        """Line integrals ``(N, R, C)`` in voxel value × mm of ``volume (B, C, D, H, W)`` along ``rays``."""
        ...

    def adjoint(self, grad_out: torch.Tensor, volume_shape, rays: RaySet,
                memory_budget_mib: float = 512.0) -> torch.Tensor:
        """The exact transpose of :meth:`forward`: ``grad_out (N, R, C)`` → ``volume_shape (B, C, D, H, W)``."""
        ...


def capabilities_of(backend: ProjectorBackend | None) -> Capabilities:
    """``backend.capabilities``; :data:`REFERENCE_CAPABILITIES` for None (the torch reference)."""
    return REFERENCE_CAPABILITIES if backend is None else backend.capabilities
