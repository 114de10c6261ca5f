"""The compiled kernel objects and how a march is launched: the GPU's autotuners (and what they chose), the
constexprs that follow the :class:`~xraysyn.projector.triton.config.TritonConfig`, the ray tiling and the grid."""

from __future__ import annotations

import contextlib
import functools
import math
from typing import NamedTuple

import numpy as np
import torch

from xraysyn.projector.triton.checks import TritonBackendInputError
from xraysyn.projector.triton.config import TritonConfig
from xraysyn.projector.triton.runtime import interpreting

__all__ = ["CARRY_TUNED", "DETECTOR_COLS_ATTR", "DOMINANT_AXIS_ATTR", "accumulator", "adjoint_kernel", "adjoint_switches",
           "autotuned_march", "dominant_axis", "forget_launch_choices", "forward_switches", "kernel_objects", "launch",
           "launch_choice", "march_autotuners", "next_power_of_two", "on_device", "program_count", "ray_tiling",
           "tuner_choice"]

# Rays per program and warps per program when not autotuning (the interpreter, or a forced config).
_DEFAULT_BLOCK_R = 128


_DEFAULT_NUM_WARPS = 4


# Launch configurations tried once per (rays, channels) on the GPU: (rays per program, warps), and for
# the forward march also the samples per loop iteration (1, 2 or 4: more gathers in flight per thread).
_TUNING_CONFIGS = ((64, 2), (64, 4), (128, 4), (128, 8), (256, 8))


_FORWARD_TUNING_CONFIGS = ((64, 2, 1), (128, 4, 1), (256, 8, 1), (64, 2, 2), (128, 4, 2), (256, 8, 2), (128, 4, 4))


# What adjoint_switches puts for CARRY when the autotuner chooses it (TritonConfig.tune_plane_carry): the
# launch then goes through the adjoint kernel object whose configurations include CARRY on and off.
CARRY_TUNED = "tuned"


# Attribute that build_rays sets on the direction tensors it makes: the voxel axis the rays cross most cells
# along (dominant_axis), computed on the host from the views' geometry.
DOMINANT_AXIS_ATTR = "_xraysyn_dominant_axis"


# Attribute that build_rays sets on the direction tensors it makes: the detector's columns, the width of the
# raster the rays come from (row-major), so the marches tile non-square detectors too (see ray_tiling).
DETECTOR_COLS_ATTR = "_xraysyn_detector_cols"


class _Kernels(NamedTuple):
    """The kernel objects this backend launches; ``tuned``: the march kernels are autotuned (the GPU)."""

    forward: object
    adjoint: object
    tuned: bool
    backproject: object
    ray_setup: object
    pack_corners: object
    unpack_corners: object
    mark_occupied: object
    dilate_occupancy: object
    adjoint_carry_tuned: object = None  # the adjoint autotuned over the corner carry too (None: not tuned)


_KERNELS: _Kernels | None = None


def kernel_objects() -> _Kernels:
    """The compiled kernel objects (imported on first use so ``TRITON_INTERPRET`` is read then)."""
    global _KERNELS
    if _KERNELS is None:
        from xraysyn.projector.triton.kernels import adjoint, backproject, layout, march, ray_setup

        tuned = not interpreting()
        forward, adjoint_kernel_ = march.march_forward_kernel, adjoint.march_adjoint_kernel
        fwd = autotuned_march(forward, forward=True) if tuned else forward
        adj = autotuned_march(adjoint_kernel_, forward=False) if tuned else adjoint_kernel_
        adj_carry = autotuned_march(adjoint_kernel_, forward=False, tune_carry=True) if tuned else None
        _KERNELS = _Kernels(fwd, adj, tuned, backproject.backproject_gather_kernel, ray_setup.ray_setup_kernel,
                            layout.pack_corners_kernel, layout.unpack_corners_kernel, layout.mark_occupied_kernel,
                            layout.dilate_occupancy_kernel, adj_carry)
    return _KERNELS


def autotuned_march(kernel, *, forward: bool, tune_carry: bool = False):
    """``kernel`` (the forward or the adjoint march kernel) wrapped in Triton's autotuner: rays per program and
    warps (and, forward, samples per loop iteration) tuned once per (rays, channels, layout switches); the
    adjoint's gradient buffer is reset between trials. ``tune_carry`` (adjoint): each launch configuration
    also with the corner carry on and off (``CARRY`` is then the autotuner's, not the caller's; see
    ``TritonConfig.tune_plane_carry``)."""
    import triton

    if forward:
        configs = [triton.Config({"BLOCK_R": r, "UNROLL": u}, num_warps=w) for r, w, u in _FORWARD_TUNING_CONFIGS]
        return triton.autotune(configs, key=["n_rays", "n_channels", "TILE_W", "PACK", "BRICK"])(kernel)
    if tune_carry:
        configs = [triton.Config({"BLOCK_R": r, "CARRY": carry}, num_warps=w)
                   for carry in (False, True) for r, w in _TUNING_CONFIGS]
        key = ["n_rays", "n_channels", "TILE_W", "PACK", "PLANE"]
    else:
        configs = [triton.Config({"BLOCK_R": r}, num_warps=w) for r, w in _TUNING_CONFIGS]
        key = ["n_rays", "n_channels", "TILE_W", "PACK", "CARRY", "PLANE"]
    return triton.autotune(configs, key=key, reset_to_zero=["grad_ptr"])(kernel)


def forward_switches(config: TritonConfig, tuned: bool) -> dict:
    """The forward march's constexprs that follow ``config`` (none when autotuned: UNROLL is the autotuner's)."""
    return {} if tuned else {"UNROLL": config.forward_unroll}


def adjoint_switches(config: TritonConfig, pack: int, direction: torch.Tensor | None = None, *,
                     tuned: bool = False) -> dict:
    """The adjoint's constexprs ``CARRY`` and ``PLANE`` under ``config``, for ``pack`` corner slots per channel
    and rays of ``direction (N, R, 3)`` (``PLANE``: the axis the 4-slot packing packs across, see
    ``TritonConfig.adjoint_plane_axis``; 0 when ``direction`` is not given). ``tuned``: the launch is autotuned
    (a GPU); ``CARRY`` is then :data:`CARRY_TUNED` where ``config.tune_plane_carry`` leaves the plane carry to
    the autotuner (launch with :func:`adjoint_kernel`)."""
    carry = pack <= config.carry_max_pack
    if not carry and pack == 4 and config.tune_plane_carry and tuned and config.adjoint_launch is None:
        return {"CARRY": CARRY_TUNED, "PLANE": _adjoint_plane(config, pack, True, direction)}
    return {"CARRY": carry, "PLANE": _adjoint_plane(config, pack, carry, direction)}


def adjoint_kernel(fixed, carry_tuned, switches: dict) -> tuple[object, dict]:
    """``(kernel, constexprs)`` to launch an adjoint march with ``switches`` (:func:`adjoint_switches`):
    ``fixed`` with every switch, or, when the autotuner chooses the carry, ``carry_tuned`` (the kernel
    wrapped by ``autotuned_march(..., tune_carry=True)``) without ``CARRY``."""
    if switches["CARRY"] == CARRY_TUNED:
        if carry_tuned is None:
            raise TritonBackendInputError("the corner carry is left to the autotuner, but the kernels are not tuned")
        return carry_tuned, {name: value for name, value in switches.items() if name != "CARRY"}
    return fixed, switches


def _adjoint_plane(config: TritonConfig, pack: int, carry: bool, direction: torch.Tensor | None) -> int:
    """The axis (0 = z, 1 = y, 2 = x) across which the 4-slot packed adjoint groups a cell's corners:
    ``config.adjoint_plane_axis``, or with -1 (auto) the rays' dominant axis when the plane carry may run (on,
    or left to the autotuner: a step along that axis then keeps half the cell in registers), else 0."""
    if pack != 4:
        return 0
    if config.adjoint_plane_axis >= 0:
        return config.adjoint_plane_axis
    return dominant_axis(direction) if carry and direction is not None else 0


def dominant_axis(direction: torch.Tensor) -> int:
    """The voxel axis (0 = z, 1 = y, 2 = x) rays of ``direction (N, R, 3)`` (voxels per mm) cross most cells
    along: the largest summed ``|direction|`` component of each view's middle ray. Known without a device
    read for rays from this module's :func:`build_rays` (computed on the host); otherwise read from the
    tensor (one small device→host copy)."""
    known = getattr(direction, DOMINANT_AXIS_ATTR, None)
    if known is not None:
        return int(known)
    if direction.numel() == 0:
        return 0
    middle = direction[:, direction.shape[1] // 2].detach().abs().sum(0)
    return int(np.argmax(np.asarray(middle.tolist())))


@functools.cache
def accumulator(dtype: torch.dtype):
    """The kernels' accumulator type (``tl.float64`` for float64, else ``tl.float32``); looked up once per
    dtype (the import statement alone costs several µs a call)."""
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def next_power_of_two(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def ray_tiling(tile_w: int, n_rays: int, detector_cols: int | None,
                direction: torch.Tensor | None = None) -> tuple[int, int]:
    """``(width, TILE_W)``: the raster width a march tiles (0 = no tiling) and its tile width (``tile_w``, the
    configuration's ``forward_tile_width`` / ``adjoint_tile_width``; 0 = runs of rays). The width is
    ``detector_cols`` when given, else the detector columns this module's :func:`build_rays` noted on the
    rays' ``direction``, else the side of a square detector; rays of an unknown raster are marched in runs
    (any width gives the same values: it only groups rays into programs for cache locality)."""
    if detector_cols is None:
        detector_cols = getattr(direction, DETECTOR_COLS_ATTR, None)
        if detector_cols is None or n_rays % detector_cols:
            side = math.isqrt(n_rays)  # a square detector is the common case
            detector_cols = side if side * side == n_rays else 0
    if tile_w <= 0 or detector_cols < tile_w:
        return 0, 0
    return int(detector_cols), tile_w


def program_count(n_rays: int, block_r: int, width: int, tile_w: int) -> int:
    if tile_w == 0:
        return -(-n_rays // block_r)
    rows = -(-n_rays // width)
    return -(-width // tile_w) * -(-rows // (block_r // tile_w))


def launch(kernel, tuned: bool, n_views: int, n_rays: int, width: int, tile_w: int, args, meta, *,
            pinned: tuple[int, int] | None, unroll: int | None = None):
    """Launch a march kernel over ``n_views`` views, every tile of one view after the other: autotuned on the
    GPU unless the configuration pins ``(rays per program, warps)`` (``pinned``; the forward's samples per
    loop iteration are then ``unroll``)."""

    def grid(block_r: int) -> tuple[int, int]:
        return program_count(n_rays, block_r, width, tile_w), n_views

    if pinned is not None:
        block_r, warps = max(pinned[0], tile_w), pinned[1]
        if unroll is not None:
            meta = {**meta, "UNROLL": unroll}
        untuned = kernel.fn if tuned else kernel
        untuned[grid(block_r)](*args, BLOCK_R=block_r, num_warps=warps, **meta)
    elif tuned:
        kernel[lambda m: grid(m["BLOCK_R"])](*args, **meta)
    else:
        block_r = max(min(_DEFAULT_BLOCK_R, next_power_of_two(max(n_rays, 1))), tile_w)
        kernel[grid(block_r)](*args, BLOCK_R=block_r, num_warps=_DEFAULT_NUM_WARPS, **meta)


def on_device(device: torch.device):
    """Make ``device`` the current CUDA device for the launch (a no-op on the CPU interpreter)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


# ------------------------------------------------------------------------ what the GPU's autotuners chose
def march_autotuners(forward: bool) -> tuple:
    """The autotuned kernel objects the forward (or adjoint) march may launch on a GPU: one for the forward,
    two for the adjoint (the second also tunes the plane carry, see ``TritonConfig.tune_plane_carry``); empty
    under the interpreter (nothing is tuned)."""
    objects = kernel_objects()
    if not objects.tuned:
        return ()
    return (objects.forward,) if forward else (objects.adjoint, objects.adjoint_carry_tuned)


def forget_launch_choices(tuners=None) -> None:
    """Clear the last choice of ``tuners`` (default: every march autotuner), so that :func:`launch_choice`
    reports only what the calls after this one ran."""
    for tuner in tuners if tuners is not None else (*march_autotuners(True), *march_autotuners(False)):
        if getattr(tuner, "best_config", None) is not None:
            tuner.best_config = None


def tuner_choice(tuners) -> dict:
    """What the first of ``tuners`` that ran since :func:`forget_launch_choices` chose: ``config`` (e.g.
    ``"BLOCK_R=128 warps=4"``) and, when it tuned the plane carry, ``carry_trials_ms``: its trials' best time
    with the carry off and on (the autotuner's own timing: median of its runs, L2 flushed before each);
    ``{}`` when none ran."""
    ran = [t for t in tuners if getattr(t, "best_config", None) is not None]
    if not ran:
        return {}
    best = ran[0].best_config
    choice = {"config": " ".join(f"{k}={v}" for k, v in best.kwargs.items()) + f" warps={best.num_warps}"}
    trials = getattr(ran[0], "configs_timings", None) or {}
    if "CARRY" in best.kwargs and trials:
        best_ms = {}
        for config, ms in trials.items():
            label = "on" if config.kwargs["CARRY"] else "off"
            ms = float(ms[0] if isinstance(ms, (list, tuple)) else ms)
            best_ms[label] = round(min(best_ms.get(label, float("inf")), ms), 3)
        choice["carry_trials_ms"] = best_ms
    return choice


def launch_choice(forward: bool) -> dict:
    """:func:`tuner_choice` of the forward (or adjoint) march's autotuners: what they chose for the calls since
    :func:`forget_launch_choices` (``{}`` when nothing was tuned: a pinned launch, or the interpreter)."""
    return tuner_choice(march_autotuners(forward))
