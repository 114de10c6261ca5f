"""Differentiable cone-beam projector: FP (paper eq. 1-2), its exact adjoint, and BP (eq. 7).

Backends: the chunked torch reference (any device, the ground truth, differentiable w.r.t. poses
too), a numba-compiled CPU kernel selected automatically for CPU volume gradients, and fused Triton
kernels for CUDA tensors. ``mark_static_volume`` lets a fixed volume keep its per-call preparation.
"""

from xraysyn.projector.api import (
    BACKENDS,
    ProjectorInputError,
    backproject,
    chord_lengths,
    forward_project,
    forward_project_adjoint,
)
from xraysyn.projector.rays import RaySet, build_rays
from xraysyn.projector.static_volume import mark_static_volume, unmark_static_volume

__all__ = [
    "BACKENDS",
    "ProjectorInputError",
    "RaySet",
    "backproject",
    "build_rays",
    "chord_lengths",
    "forward_project",
    "forward_project_adjoint",
    "mark_static_volume",
    "unmark_static_volume",
]
