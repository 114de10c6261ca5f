"""Triton backend of the projector: the ray march's forward and exact adjoint, the ray set-up and BP as GPU
kernels (run on CPU tensors through Triton's interpreter when ``TRITON_INTERPRET=1``; tests only).

Public here:

* :func:`available` (``device``) — can the kernels run for tensors on that device (triton installed, and a
  CUDA device or the CPU interpreter)?; :func:`interpreting` — is Triton's CPU interpreter on?
* :class:`TritonConfig` — how the kernels organise the work (tiles, packed layouts, corner carry, empty
  space skipping, kept rays, pinned launches), frozen; :data:`DEFAULT_CONFIG` is what every call uses
  unless a :func:`use_config` block says otherwise; :func:`active_config` returns the one in force.
* :class:`TritonBackend` — the backend :func:`xraysyn.projector.forward_project` selects (its protocol:
  :class:`xraysyn.projector.backend.ProjectorBackend`); :func:`build_rays` (one-launch ray set-up) and
  :func:`backproject` (BP gather kernel) beside it.
* For benchmarks and tools: :func:`march_autotuners`, :func:`launch_choice` and
  :func:`forget_launch_choices` — the GPU autotuners of the marches and what they chose.

Modules: :mod:`.config`, :mod:`.runtime` (availability), :mod:`.backend`, :mod:`.launch` (kernel objects,
autotuning, grids), :mod:`.layout` (marched volume and scatter buffer layouts), :mod:`.rays` (ray set-up),
:mod:`.backprojection`, :mod:`.checks`; the kernels themselves in :mod:`.kernels` (the only modules that import
``triton``; loaded on first use). Importing this package never imports ``triton`` itself.
"""

from xraysyn.projector.triton.config import (
    DEFAULT_CONFIG,
    TritonConfig,
    TritonConfigError,
    active_config,
    use_config,
)
from xraysyn.projector.triton.runtime import available, interpreting
from xraysyn.projector.triton.backend import TritonBackend, TritonBackendInputError
from xraysyn.projector.triton.backprojection import backproject
from xraysyn.projector.triton.launch import forget_launch_choices, launch_choice, march_autotuners
from xraysyn.projector.triton.rays import build_rays

__all__ = ["DEFAULT_CONFIG", "TritonBackend", "TritonBackendInputError", "TritonConfig", "TritonConfigError",
           "active_config", "available", "backproject", "build_rays", "forget_launch_choices", "interpreting",
           "launch_choice", "march_autotuners", "use_config"]
