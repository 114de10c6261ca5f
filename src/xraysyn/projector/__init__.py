"""Differentiable cone-beam projector: FP (paper eq. 1-2), its exact adjoint, and BP (eq. 7).

Backends: the chunked torch reference (any device, the ground truth, differentiable w.r.t. poses
too) and a numba-compiled CPU kernel selected automatically for CPU volume gradients.
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

__all__ = [
    "BACKENDS",
    "ProjectorInputError",
    "RaySet",
    "backproject",
    "build_rays",
    "chord_lengths",
    "forward_project",
    "forward_project_adjoint",
]
