"""Triton backend of the ray march: fused forward line integrals and their exact adjoint.

Same contract and signatures as :class:`xraysyn.projector.cpu_numba.NumbaBackend` (the sampling
model of :mod:`xraysyn.projector.rays`); the torch reference in :mod:`xraysyn.projector.reference`
stays the ground truth (``tests/projector/test_triton.py``). Selected automatically by
:func:`xraysyn.projector.forward_project` for CUDA tensors when :func:`available` is true, or with
``backend="triton"``. On a machine without a GPU the kernels run on CPU tensors through Triton's
interpreter when ``TRITON_INTERPRET=1`` is set before the first use (slow; for tests only).

Memory: no per-sample temporaries; the forward allocates its output ``(N, R, C)``, the adjoint
one gradient volume, plus a channels-last copy of the volume when ``C > 1`` and the input is
channels-first (one cache line per trilinear corner instead of ``C``).

Precision: float32 accumulation for float32/float16/bfloat16 volumes (low-precision volumes are
read as stored and converted in registers; the output is float32), float64 throughout for float64
inputs.

Importing this module never fails: without ``triton`` :func:`available` returns False.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
from typing import Callable, NamedTuple

import numpy as np
import torch

from xraysyn.projector import frames, kept_rays, static_volume
from xraysyn.projector.empty_space import brick_grid
from xraysyn.host_cache import HostMemo, array_key

__all__ = ["PreparedVolume", "TritonBackend", "TritonBackendInputError", "available", "backproject", "build_rays", "checked_launch", "interpreting"]

_INT32_LIMIT = 2**31 - 1
# Attribute that build_rays sets on the volume_index tensors it makes: their exclusive upper bound, so
# the backend can skip re-checking them on the device (a synchronisation) before each launch.
_INDEX_BOUND_ATTR = "_xraysyn_index_bound"
# Attribute that build_rays sets on the direction tensors it makes: the voxel axis the rays cross most cells
# along (dominant_axis), computed on the host from the views' geometry.
_DOMINANT_AXIS_ATTR = "_xraysyn_dominant_axis"
# Attribute that build_rays sets on the direction tensors it makes: the detector's columns, the width of the
# raster the rays come from (row-major), so the marches tile non-square detectors too (see _ray_tiling).
_DETECTOR_COLS_ATTR = "_xraysyn_detector_cols"
# Rays per program and warps per program when not autotuning (the interpreter, or a forced config).
_DEFAULT_BLOCK_R = 128
_DEFAULT_NUM_WARPS = 4
# Voxels per program of the backprojection gather kernel.
_BP_BLOCK_V = 256
# Widest vector load / atomic (16 bytes, sm_90) the packed corner layouts build.
_VECTOR_BYTES = 16
# Voxels per program of the corner-packing kernel.
_PACK_BLOCK_V = 256
# Bricks per program of the occupancy's dilation.
_DILATE_BLOCK = 256
# Brick edges (voxels) SKIP_EMPTY_BRICK accepts (0 = off); the walk's exactness bound needs at least 2.
_SKIP_BRICKS = (0, 2, 4, 8, 16, 32)
# Rays per program of the ray set-up kernel.
_SETUP_BLOCK_R = 256
# The ray set-up's host-side numbers for recently met frames and geometries, and the per-volume terms
# (isocenter, inverse affine) of recently met affines (small numpy arrays).
_RAY_SETUP_PARAMS = HostMemo(max_entries=64)
_VOLUME_TERMS = HostMemo(max_entries=64)
# Ray sets (device tensors) of recently met geometries, within TritonBackend.KEEP_RAYS_MIB (see kept_rays.py).
_KEPT_RAYS = kept_rays.KeptRays()
# Launch configurations tried once per (rays, channels) on the GPU: (rays per program, warps), and for
# the forward march also the samples per loop iteration (1, 2 or 4: more gathers in flight per thread).
_TUNING_CONFIGS = ((64, 2), (64, 4), (128, 4), (128, 8), (256, 8))
_FORWARD_TUNING_CONFIGS = ((64, 2, 1), (128, 4, 1), (256, 8, 1), (64, 2, 2), (128, 4, 2), (256, 8, 2), (128, 4, 4))
# What adjoint_switches puts for CARRY when the autotuner chooses it (TritonBackend.TUNE_PLANE_CARRY): the
# launch then goes through the adjoint kernel object whose configurations include CARRY on and off.
CARRY_TUNED = "tuned"


class TritonBackendInputError(ValueError):
    """Malformed inputs to the Triton backend (shape, device or size beyond 32-bit indexing)."""


@functools.cache
def _triton_importable() -> bool:
    """Whether the triton package is installed (looked up once: an import-path search costs ~10 µs a call)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def available() -> bool:
    """Triton is importable and can run here: a CUDA device, or the CPU interpreter."""
    if not _triton_importable():
        return False
    return torch.cuda.is_available() or interpreting()


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


def _kernels() -> _Kernels:
    """The compiled kernel objects (imported on first use so ``TRITON_INTERPRET`` is read then)."""
    global _KERNELS
    if _KERNELS is None:
        from xraysyn.projector import triton_kernels as k

        tuned = not interpreting()
        fwd = autotuned_march(k.march_forward_kernel, forward=True) if tuned else k.march_forward_kernel
        adj = autotuned_march(k.march_adjoint_kernel, forward=False) if tuned else k.march_adjoint_kernel
        adj_carry = autotuned_march(k.march_adjoint_kernel, forward=False, tune_carry=True) if tuned else None
        _KERNELS = _Kernels(fwd, adj, tuned, k.backproject_gather_kernel, k.ray_setup_kernel, k.pack_corners_kernel,
                            k.unpack_corners_kernel, k.mark_occupied_kernel, k.dilate_occupancy_kernel, adj_carry)
    return _KERNELS


def autotuned_march(kernel, *, forward: bool, extra_key: tuple[str, ...] = (), tune_carry: bool = False):
    """``kernel`` (a forward or an adjoint march kernel, here or fused with CT2Xray) wrapped in Triton's
    autotuner: rays per program and warps (and, forward, samples per loop iteration) tuned once per
    (rays, channels, layout and scheme switches, ``extra_key``); the adjoint's gradient buffer is reset
    between trials. ``tune_carry`` (adjoint): each launch configuration also with the corner carry on and
    off (``CARRY`` is then the autotuner's, not the caller's; see ``TritonBackend.TUNE_PLANE_CARRY``)."""
    import triton

    if forward:
        configs = [triton.Config({"BLOCK_R": r, "UNROLL": u}, num_warps=w) for r, w, u in _FORWARD_TUNING_CONFIGS]
        return triton.autotune(configs, key=["n_rays", "n_channels", "TILE_W", "PACK", "REUSE", "BRICK", *extra_key])(
            kernel)
    if tune_carry:
        configs = [triton.Config({"BLOCK_R": r, "CARRY": carry}, num_warps=w)
                   for carry in (False, True) for r, w in _TUNING_CONFIGS]
        key = ["n_rays", "n_channels", "TILE_W", "PACK", "MERGE_RUNS", "PLANE", *extra_key]
    else:
        configs = [triton.Config({"BLOCK_R": r}, num_warps=w) for r, w in _TUNING_CONFIGS]
        key = ["n_rays", "n_channels", "TILE_W", "PACK", "MERGE_RUNS", "CARRY", "PLANE", *extra_key]
    return triton.autotune(configs, key=key, reset_to_zero=["grad_ptr"])(kernel)


def forward_switches(tuned: bool) -> dict:
    """The forward march's constexprs that follow ``TritonBackend``'s switches (UNROLL is autotuned on a GPU)."""
    meta = {"REUSE": bool(TritonBackend.REUSE_CORNERS)}
    if not tuned:
        meta["UNROLL"] = int(TritonBackend.FORWARD_UNROLL)
    return meta


def adjoint_switches(pack: int, direction: torch.Tensor | None = None, *, tuned: bool = False) -> dict:
    """The adjoint's constexprs that follow ``TritonBackend``'s switches, for ``pack`` corner slots per channel
    and rays of ``direction (N, R, 3)`` (``PLANE``: the axis the 4-slot packing packs across, see
    ``ADJOINT_PLANE_AXIS``; 0 when ``direction`` is not given). ``tuned``: the launch is autotuned (a GPU);
    ``CARRY`` is then :data:`CARRY_TUNED` where ``TUNE_PLANE_CARRY`` leaves the plane carry to the autotuner
    (launch with :func:`adjoint_kernel`)."""
    merge = bool(TritonBackend.MERGE_RUNS)
    allowed = merge and bool(TritonBackend.CARRY_CORNERS)
    carry = allowed and pack <= int(TritonBackend.CARRY_MAX_PACK)
    if TritonBackend.TUNE_PLANE_CARRY not in (True, False):  # 1 and 0 too (the benchmarks' switches)
        raise TritonBackendInputError(
            f"TritonBackend.TUNE_PLANE_CARRY must be True or False, got {TritonBackend.TUNE_PLANE_CARRY!r}")
    if (allowed and not carry and pack == 4 and bool(TritonBackend.TUNE_PLANE_CARRY) and tuned
            and pinned_launch(forward=False) is None):
        return {"MERGE_RUNS": merge, "CARRY": CARRY_TUNED, "PLANE": _adjoint_plane(pack, True, direction)}
    return {"MERGE_RUNS": merge, "CARRY": carry, "PLANE": _adjoint_plane(pack, carry, direction)}


def adjoint_kernel(fixed, carry_tuned, switches: dict) -> tuple[object, dict]:
    """``(kernel, constexprs)`` to launch an adjoint march with ``switches`` (:func:`adjoint_switches`):
    ``fixed`` with every switch, or, when the autotuner chooses the carry, ``carry_tuned`` (the kernel
    wrapped by ``autotuned_march(..., tune_carry=True)``) without ``CARRY``."""
    if switches["CARRY"] == CARRY_TUNED:
        if carry_tuned is None:
            raise TritonBackendInputError("the corner carry is left to the autotuner, but the kernels are not tuned")
        return carry_tuned, {name: value for name, value in switches.items() if name != "CARRY"}
    return fixed, switches


def _adjoint_plane(pack: int, carry: bool, direction: torch.Tensor | None) -> int:
    """The axis (0 = z, 1 = y, 2 = x) across which the 4-slot packed adjoint groups a cell's corners:
    ``ADJOINT_PLANE_AXIS``, or with -1 (auto) the rays' dominant axis when the plane carry may run (on, or
    left to the autotuner: a step along that axis then keeps half the cell in registers), else 0."""
    axis = TritonBackend.ADJOINT_PLANE_AXIS
    if axis not in (-1, 0, 1, 2):
        raise TritonBackendInputError(
            f"TritonBackend.ADJOINT_PLANE_AXIS must be -1 (auto), 0 (z), 1 (y) or 2 (x), got {axis!r}")
    if pack != 4:
        return 0
    if axis >= 0:
        return axis
    return dominant_axis(direction) if carry and direction is not None else 0


def dominant_axis(direction: torch.Tensor) -> int:
    """The voxel axis (0 = z, 1 = y, 2 = x) rays of ``direction (N, R, 3)`` (voxels per mm) cross most cells
    along: the largest summed ``|direction|`` component of each view's middle ray. Known without a device
    read for rays from this module's :func:`build_rays` (computed on the host); otherwise read from the
    tensor (one small device→host copy)."""
    known = getattr(direction, _DOMINANT_AXIS_ATTR, None)
    if known is not None:
        return int(known)
    if direction.numel() == 0:
        return 0
    middle = direction[:, direction.shape[1] // 2].detach().abs().sum(0)
    return int(np.argmax(np.asarray(middle.tolist())))


@functools.cache
def _accumulator(dtype: torch.dtype):
    """The kernels' accumulator type (``tl.float64`` for float64, else ``tl.float32``); looked up once per
    dtype (the import statement alone costs several µs a call)."""
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def _acc_torch_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_device(*tensors: torch.Tensor) -> torch.device:
    device = tensors[0].device
    for t in tensors:
        if t.device != device:
            raise TritonBackendInputError(f"all inputs must be on one device, got {device} and {t.device}")
    if device.type == "cuda":
        return device
    if device.type == "cpu" and interpreting():
        return device
    raise TritonBackendInputError(
        f"the Triton backend needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got device {device}")


def _check_rays(origin, direction, t_near, delta, n_samples, volume_index, num_volumes: int,
                channels: int) -> tuple[int, int]:
    if direction.dim() != 3 or direction.shape[-1] != 3:
        raise TritonBackendInputError(f"direction must have shape (N, R, 3), got {tuple(direction.shape)}")
    n, r = direction.shape[:2]
    expected = {"origin": (n, 3), "t_near": (n, r), "delta": (n, r), "n_samples": (n, r), "volume_index": (n,)}
    for name, t in zip(expected, (origin, t_near, delta, n_samples, volume_index)):
        if tuple(t.shape) != expected[name]:
            raise TritonBackendInputError(f"{name} must have shape {expected[name]}, got {tuple(t.shape)}")
    if n_samples.dtype not in (torch.int32, torch.int64):
        raise TritonBackendInputError(f"n_samples must be an integer tensor, got {n_samples.dtype}")
    if n * r * max(3, channels) > _INT32_LIMIT:
        raise TritonBackendInputError(
            f"{n} views × {r} rays × {channels} channels exceed 32-bit indexing; split the views into batches")
    known_bound = getattr(volume_index, _INDEX_BOUND_ATTR, None)  # set by this module's build_rays
    if n and num_volumes and (known_bound is None or known_bound > num_volumes):
        lo, hi = (int(x) for x in torch.aminmax(volume_index.detach()))  # one device sync
        if lo < 0 or hi >= num_volumes:
            raise TritonBackendInputError(f"volume_index must lie in [0, {num_volumes}), got [{lo}, {hi}]")
    return n, r


def _check_volume_size(channels: int, spatial) -> None:
    d, h, w = (int(s) for s in spatial)
    if min(d, h, w) < 2:
        raise TritonBackendInputError(f"volume spatial shape must be at least 2 along each axis, got {(d, h, w)}")
    if channels * d * h * w > _INT32_LIMIT:
        raise TritonBackendInputError(
            f"one volume of {channels} × {d} × {h} × {w} voxels exceeds 32-bit indexing")


def _is_channels_last(volume: torch.Tensor) -> bool:
    return volume.shape[1] == 1 or volume.stride(1) == 1


def _channels_last(volume: torch.Tensor) -> torch.Tensor:
    """A ``(B, C, D, H, W)`` view whose channel stride is 1 (copy only when needed)."""
    if _is_channels_last(volume):
        return volume
    return volume.permute(0, 2, 3, 4, 1).contiguous().permute(0, 4, 1, 2, 3)


def _volume_strides(volume: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    """``(VEC, strides)`` for the kernels' volume addressing.

    ``VEC = C`` when each voxel's ``C`` channels form one aligned vector (channel stride 1, ``C`` a
    power of two, every other stride and the start address multiples of ``C``); the batch and
    spatial strides are then given in units of ``C`` elements, so the kernels can prove alignment
    and load or add a corner's channels with one vector instruction. Otherwise ``VEC = 1`` and all
    strides are in elements.
    """
    c = volume.shape[1]
    sb, sc, sd, sh, sw = volume.stride()
    others = (sb, sd, sh, sw)
    packed = (c > 1 and c == _next_power_of_two(c) and sc == 1 and all(st % c == 0 for st in others)
              and volume.data_ptr() % (c * volume.element_size()) == 0)
    if not packed:
        return 1, (sb, sc, sd, sh, sw)
    return c, (sb // c, sc, sd // c, sh // c, sw // c)


def _next_power_of_two(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _ray_tiling(n_rays: int, detector_cols: int | None, *, forward: bool,
                direction: torch.Tensor | None = None) -> tuple[int, int]:
    """``(width, TILE_W)``: the raster width the forward (or adjoint) march tiles (0 = no tiling) and its
    tile width (``TritonBackend.FORWARD_TILE_WIDTH`` / ``ADJOINT_TILE_WIDTH``). The width is
    ``detector_cols`` when given, else the detector columns this module's :func:`build_rays` noted on the
    rays' ``direction``, else the side of a square detector; rays of an unknown raster are marched in runs
    (any width gives the same values: it only groups rays into programs for cache locality)."""
    tile_w = int(TritonBackend.FORWARD_TILE_WIDTH if forward else TritonBackend.ADJOINT_TILE_WIDTH)
    if detector_cols is None:
        detector_cols = getattr(direction, _DETECTOR_COLS_ATTR, None)
        if detector_cols is None or n_rays % detector_cols:
            side = math.isqrt(n_rays)  # a square detector is the common case
            detector_cols = side if side * side == n_rays else 0
    if tile_w <= 0 or detector_cols < tile_w:
        return 0, 0
    return int(detector_cols), tile_w


def _programs(n_rays: int, block_r: int, width: int, tile_w: int) -> int:
    if tile_w == 0:
        return -(-n_rays // block_r)
    rows = -(-n_rays // width)
    return -(-width // tile_w) * -(-rows // (block_r // tile_w))


def pinned_launch(forward: bool) -> tuple[int, int] | None:
    """``(rays per program, warps)`` pinned for the forward (or adjoint) march kernels by
    ``TritonBackend.FORWARD_BLOCK_R/FORWARD_WARPS`` (``ADJOINT_...``), or None: autotuned on the GPU."""
    prefix = "FORWARD" if forward else "ADJOINT"
    block_r, warps = getattr(TritonBackend, f"{prefix}_BLOCK_R"), getattr(TritonBackend, f"{prefix}_WARPS")
    if block_r == 0 and warps == 0:
        return None
    if block_r == 0:
        raise TritonBackendInputError(f"TritonBackend.{prefix}_WARPS pins a launch configuration only together with "
                                      f"TritonBackend.{prefix}_BLOCK_R (0 and 0 = autotuned)")
    if not isinstance(block_r, int) or block_r < 16 or block_r > 1024 or block_r & (block_r - 1):
        raise TritonBackendInputError(
            f"TritonBackend.{prefix}_BLOCK_R must be 0 (autotuned) or a power of two in [16, 1024], got {block_r!r}")
    if not isinstance(warps, int) or warps < 0 or warps > 16 or warps & (warps - 1):
        raise TritonBackendInputError(
            f"TritonBackend.{prefix}_WARPS must be 0 (default {_DEFAULT_NUM_WARPS}) or a power of two up to 16, "
            f"got {warps!r}")
    return block_r, warps or _DEFAULT_NUM_WARPS


def view_group(n_views: int, n_items: int, *, forward: bool) -> int:
    """Views whose programs a march interleaves (``_tile_and_view`` in the kernels): with
    ``TritonBackend.FORWARD_VIEWS_INNER`` / ``ADJOINT_VIEWS_INNER`` the views of one volume (``n_views /
    n_items`` when the views come volume-major, as the public API orders them), else 1 (view after view)."""
    inner = TritonBackend.FORWARD_VIEWS_INNER if forward else TritonBackend.ADJOINT_VIEWS_INNER
    if not inner or n_items <= 0 or n_views % n_items:
        return 1
    return n_views // n_items


def _launch(kernel, tuned: bool, grid_views: int, n_rays: int, width: int, tile_w: int, args, meta, *,
            forward: bool, items: int = 0):
    """Launch a march kernel over ``grid_views`` views of ``items`` volumes: autotuned on the GPU unless
    ``TritonBackend`` pins its configuration (:func:`pinned_launch`; the forward's samples per loop iteration
    are then ``FORWARD_UNROLL``); the programs of each volume's views interleaved tile by tile when
    :func:`view_group` says so."""
    group = view_group(grid_views, items, forward=forward)

    def grid(block_r: int) -> tuple[int, int]:
        return _programs(n_rays, block_r, width, tile_w) * group, grid_views // group

    pinned = pinned_launch(forward)
    if pinned is not None:
        block_r, warps = max(pinned[0], tile_w), pinned[1]
        if forward:
            meta = {**meta, "UNROLL": int(TritonBackend.FORWARD_UNROLL)}
        untuned = kernel.fn if tuned else kernel
        untuned[grid(block_r)](*args, BLOCK_R=block_r, num_warps=warps, **meta)
    elif tuned:
        kernel[lambda m: grid(m["BLOCK_R"])](*args, **meta)
    else:
        block_r = max(min(_DEFAULT_BLOCK_R, _next_power_of_two(max(n_rays, 1))), tile_w)
        kernel[grid(block_r)](*args, BLOCK_R=block_r, num_warps=_DEFAULT_NUM_WARPS, **meta)


def addressing_strides(tensor: torch.Tensor) -> tuple[int, ...]:
    """``tensor``'s strides for a kernel's address arithmetic, with 1 for every dimension of size 1 (whose
    index is always 0, so any stride addresses the same elements). Torch calls a tensor contiguous whatever
    the stride of a size-1 dimension: ``images.reshape(n, 1, -1).permute(0, 2, 1).contiguous()`` (the public
    adjoint's and autograd's one-channel gradient) keeps stride ``rows · cols`` on its channel. Triton
    compiles a kernel specialised on the strides it is given (a stride of 1 becomes a constant). The
    one-channel packed adjoint compiled for the large stride ran 2.2× slower: W2's public adjoint took 22.6
    ms with the strides as given and 10.3 ms with this (H200, same run, 2026-11-27,
    ``benchmarks/results/gpu_h200_2026-11-27_strides.jsonl``), so every such stride is made 1."""
    return tuple(1 if size == 1 else stride for size, stride in zip(tensor.shape, tensor.stride()))


def _as_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` in ``dtype`` (itself when it already is: the kernels read raw memory, no autograd)."""
    return tensor if tensor.dtype == dtype else tensor.detach().to(dtype)


def _ray_args(origin, direction, t_near, delta, n_samples, volume_index, acc_dtype):
    origin, direction, t_near, delta = (_as_dtype(t, acc_dtype) for t in (origin, direction, t_near, delta))
    n_samples, volume_index = _as_dtype(n_samples, torch.int32), _as_dtype(volume_index, torch.int64)
    tensors = (origin, direction, t_near, delta, n_samples, volume_index)
    strides = (*origin.stride(), *direction.stride(), *t_near.stride(), *delta.stride(), *n_samples.stride())
    return tensors, strides


class TritonBackend:
    """Forward and adjoint with the signatures of the reference ``march_forward`` / ``march_adjoint``.

    ``MERGE_RUNS`` (class attribute, default True) selects the adjoint that pre-reduces the
    samples of a ray falling in one cell before its atomic adds; False gives the naive per-sample
    scatter (same result up to float rounding order), for benchmarks. ``FORWARD_TILE_WIDTH`` and
    ``ADJOINT_TILE_WIDTH`` are the widths of the 2-D detector tiles a program of the forward and of the
    adjoint march marches (neighbouring pixels, whose samples share cache sectors whatever the view
    direction); 0 marches runs of consecutive rays instead. None of the switches below changes results
    beyond float rounding order, only memory traffic. On the GPU the launch configuration (rays per
    program, warps, samples per forward loop iteration) is autotuned once per (rays, channels, tile
    width and switches).
    """

    # The defaults below are the fastest settings measured through the public API on one H200 (W1: 8 volumes of
    # 2 × 128³, 256² detector, 256 samples; W2: one 256² × 133 CT, 16 views of 512², 512 samples; the
    # benchmarks/gpu_session.sh "sweep" stage, 2026-11-26; ms, forward / adjoint alone):
    #   tile width 8 → 4            W1 2.97 → 2.00 / 2.23 → 2.15     W2 10.0 → 8.14 / 28.9 → 25.7
    #   + forward pack 2, 4         W1 1.77 (2; C = 2 allows no more) W2 7.04 (2), 6.20 (4)
    #   adjoint pack 1 → 2 or 4     W1 2.15 → 2.28 (2, carry)         W2 25.7 → 24.1 (4, no carry)
    #   carry off → on              W1 4.13 → 2.23 (pack 1), 2.42 → 2.28 (pack 2); W2 pack 4: 24.1 → 29.6
    MERGE_RUNS = True
    # With MERGE_RUNS: when a ray steps into a neighbouring cell, the corners both cells share (4 of 8 for
    # a step along one axis) keep accumulating in registers instead of being flushed. Same sum,
    # reassociated; on the W1 / W2 geometries it removes 47 % of the merged adjoint's atomics (exact count,
    # benchmarks/adjoint_atomics.py). Applied only when the adjoint's corner slots per channel are at most
    # CARRY_MAX_PACK: with 4 slots one vector atomic already covers a corner's x and y neighbours, and the
    # carry measured slower (table above).
    CARRY_CORNERS = True
    CARRY_MAX_PACK = 2
    # The axis across which the 4-slot packed adjoint (ADJOINT_PACK = 4, one channel) puts a cell's corners in
    # two vectors of 2 × 2 (0 = z, 1 = y, 2 = x; -1 = auto: the rays' dominant axis when the carry applies to
    # 4 slots, i.e. CARRY_MAX_PACK >= 4, else z). With 4 slots the carry is the plane carry: a step of one cell
    # along that axis (80 % of the cell changes on W2 for its dominant axis y) keeps the shared quad in
    # registers. Requests counted exactly (benchmarks/adjoint_atomics.py, W2): 0.101 per corner and sample
    # without carry, 0.096 with the plane across z, 0.061 across y; sample-loop instructions (sm_90,
    # benchmarks/kernel_static_cost.py) 95 without carry, 122 with it. Timed on one H200 (2026-11-27, W2,
    # the autotuner's trials at 64 rays and 2 warps): 13.0 ms off, 9.5 ms on, across y; across z (plane=0,
    # forced on) 13.3 ms. Not forced on at 4 slots (CARRY_MAX_PACK = 2) since no other GPU is timed, but left
    # to the autotuner (TUNE_PLANE_CARRY below), which keeps it on there;
    # benchmarks: xraysyn[cmax=4] (forced on, auto plane), xraysyn[cmax=4+plane=0], xraysyn[tpc=0] (off).
    ADJOINT_PLANE_AXIS = -1
    # With 4 slots (one channel), the carry allowed (CARRY_CORNERS, MERGE_RUNS) but not forced on
    # (CARRY_MAX_PACK < 4), and an autotuned launch (a GPU, no pinned ADJOINT_BLOCK_R): True = the autotuner
    # times every launch configuration with the plane carry on and off (packed across the rays' dominant axis
    # either way, so the buffer's layout is the same) and keeps the fastest, once per (rays, channels,
    # switches); the result is the same either way (the same sum, reassociated). False = the carry off at 4
    # slots. The plane carry halves the requests of a step along the plane (W2: 0.101 → 0.061 per corner and
    # sample) for 27 more loop instructions; whether that pays depends on the GPU, so the GPU decides. Costs
    # the first call's autotuning twice the trials (W2: ten adjoint runs of 10-45 ms each, plus warm-up).
    TUNE_PLANE_CARRY = True
    # Width of the 2-D detector tiles of the forward / adjoint march (0 = runs of consecutive rays); a tile
    # 4 wide makes a 32-lane warp an 8 × 4 patch of pixels.
    FORWARD_TILE_WIDTH = 4
    ADJOINT_TILE_WIDTH = 4
    # Corner slots per voxel and channel of the adjoint's atomics: 1 = scatter into the gradient
    # volume (8 atomics per cell); 2 or 4 = a packed buffer taking the x (and y) neighbours of a corner
    # in the same vector atomic (4 or 2 per cell), summed up afterwards (one extra pass). Same values;
    # more memory (C · pack floats per voxel, used only within memory_budget_mib, else 1); float32 only,
    # and capped so that C · pack <= 4 floats (4 gives 4 slots to one channel, 2 to two, none to more).
    ADJOINT_PACK = 4
    # Corner slots per voxel and channel of the volume the forward march reads: 1 = the volume itself
    # (8 loads per sample); 2 or 4 = a packed copy holding each voxel's x (and y) neighbours too (see
    # _pack_corners), read with 4 or 2 vector loads per sample. Same values; PACK times the volume's
    # memory (used only within memory_budget_mib, else 1); C · pack capped at 16 bytes.
    FORWARD_PACK = 4
    # Forward march (unpacked layout): keep each ray's cell corners in registers across samples and load only
    # those a new cell does not share (on the W1 / W2 geometries 21 % of the corner loads of 8 per sample, by
    # the same count as benchmarks/adjoint_atomics.py's merged+carry). Same values; fewer memory requests,
    # more registers and arithmetic per sample: measured slower (H200, tile width 8, public API: W1
    # 2.50 → 3.40 ms, W2 10.1 → 19.6 ms), so off.
    REUSE_CORNERS = False
    # Forward march of a multi-channel volume stored channels-first: True = march a channels-last copy (one
    # vector load per corner; the copy reads and writes the volume once per call); False = read the
    # channels-first volume in place (C loads per corner). Measured (H200, W1, tile width 8): the march in
    # place 2.47 ms against 1.88 ms on the copy. A packed forward (FORWARD_PACK) makes its own copy anyway.
    COPY_CHANNELS_LAST = True
    # forward_project / CT2Xray: True = start the volume's layout copy (with its NaN/inf scan fused into the
    # packing pass) on the GPU before the host validates the frames and sets up the rays, and read the scan's
    # one-value result just before the march (the copy runs while the host works); False = the order measured
    # on 2026-11-26: a separate scan (aminmax) read back with the frames, the copy made just before the march.
    PREPARE_AHEAD = True
    # Launch configuration of the march kernels (the forward's also serves the fused CT2Xray march, the
    # adjoint's its adjoint): 0 and 0 = autotuned on the GPU, tried once per (rays, channels, tile width,
    # switches) among _TUNING_CONFIGS; else pinned: rays per program (a power of two, 16 to 1024) and warps
    # per program (0 = 4). Pinning skips the first call's autotuning (a few seconds) and lets benchmarks
    # time one configuration through the public API.
    FORWARD_BLOCK_R = 0
    FORWARD_WARPS = 0
    ADJOINT_BLOCK_R = 0
    ADJOINT_WARPS = 0
    # Device memory (MiB) for ray sets kept for geometries met again (exact key: the frames' values, volume
    # shape, detector, sampling, dtype, device and stream; see kept_rays.py): a call with a recent geometry
    # skips the ray set-up (its launch, copies and allocations). 0 keeps none. W1's set is 15 MB.
    KEEP_RAYS_MIB = 64
    # Order in which a march's programs run (see view_group): False = every tile of one view, then the next
    # view; True = one tile in each view of a volume, then the next tile. Several views of one volume (W2: 16
    # views of one CT) cross the same slab of it through the same detector tile, so interleaving them keeps
    # the data that programs running at the same time touch to a slab instead of most of the volume — the
    # adjoint's packed 4-slot buffer (W2: 139 MB) and the forward's packed copy exceed the GPU's L2 cache
    # (60 MB on an H200), a slab does not. Same values either way (exact tests); not yet timed, so off.
    FORWARD_VIEWS_INNER = False
    ADJOINT_VIEWS_INNER = False
    # Empty space skipping in the forward march (and the fused CT2Xray march): brick edge in voxels, 0 = off.
    # The volume's work ahead of the march (the packing pass, or a marking pass for unpacked layouts) also
    # marks each brick of BRICK³ voxels that holds a non-zero value, a small pass dilates the marks by one
    # brick, and each ray first walks the marks every few samples (_occupied_range in the kernels) and then
    # marches only from the first to the last sample that may meet a non-zero voxel. Exact: the samples
    # skipped have eight zero corners in every channel, so the results are bit-for-bit those without it.
    # CTs converted to attenuation have exact zeros wherever HU <= -1000 (air, the field of view's padding).
    # CPU replay of the walk (benchmarks/empty_space.py, W1 / W2 volumes and rays): samples the march still
    # runs, per program of 128 rays, 0.94 / 0.87 (brick 8), 0.83 / 0.79 (4), 0.77 / 0.75 (2), for 11 / 24,
    # 25 / 56 and 73 / 164 walk look-ups per ray against 256 / 512 samples. Memory: 2 bytes per brick (the
    # marks and their dilation). A volume with no unmarked brick (no exact zeros, e.g. a network's output) is
    # flagged by the dilation and its rays skip the walk. Timed through the public forward on one H200
    # (2026-11-27, W1 / W2 ms): off 1.44 / 6.48, brick 2 1.40 / 5.95, brick 4 1.37 / 5.34, brick 8 1.69 / 6.00.
    # Off with REUSE_CORNERS (whose loop starts at sample 0).
    SKIP_EMPTY_BRICK = 4
    # Samples per loop iteration of the forward march when it is not autotuned (the interpreter, or a
    # pinned launch configuration).
    FORWARD_UNROLL = 1
    # The kernels read fp16/bf16 volumes as stored (float32 accumulation): no upcast copy needed.
    READS_LOW_PRECISION = True

    @staticmethod
    def clear_kept_rays() -> None:
        """Drop the ray sets kept for recent geometries (``KEEP_RAYS_MIB``), returning their device memory
        to PyTorch's allocator."""
        _KEPT_RAYS.clear()

    @staticmethod
    def build_rays(*args, **kwargs):
        """This backend's ray set-up: the one-launch kernel, :func:`build_rays` of this module (which also
        takes ``host_frames``)."""
        return build_rays(*args, **kwargs)

    @staticmethod
    def forward(volume, origin, direction, t_near, delta, n_samples, volume_index, memory_budget_mib=512.0,
                detector_cols=None, prepared: PreparedVolume | None = None):
        """Line integrals ``(N, R, C)`` in (voxel value × mm) of ``volume (B, C, D, H, W)``.

        ``origin (N, 3)``, ``direction (N, R, 3)``, ``t_near``/``delta (N, R)`` mm, ``n_samples
        (N, R)`` int, ``volume_index (N,)`` as in :class:`xraysyn.projector.rays.RaySet`.
        ``memory_budget_mib`` bounds the packed copy of the volume (``FORWARD_PACK``; without it the
        kernel needs no temporaries beyond its output and, for a channels-first multi-channel volume,
        a channels-last copy). ``detector_cols`` (optional) is the width of the detector
        raster the ``R`` rays come from; it only decides how rays are grouped into 2-D tiles for
        cache locality (default: a square detector when ``R`` is a square). ``prepared``: what
        :meth:`prepare_volume` made for this volume (its layout is then not made again).
        """
        if not isinstance(volume, torch.Tensor) or volume.dim() != 5 or not volume.is_floating_point():
            raise TritonBackendInputError("volume must be a floating-point tensor of shape (B, C, D, H, W)")
        device = _check_device(volume, origin, direction, t_near, delta, n_samples, volume_index)
        b, c = volume.shape[:2]
        _check_volume_size(c, volume.shape[2:])
        n, r = _check_rays(origin, direction, t_near, delta, n_samples, volume_index, b, c)
        acc_dtype = _acc_torch_dtype(volume.dtype)
        if n == 0 or r == 0 or c == 0:
            with checked_launch(prepared):
                pass
            return torch.zeros(n, r, c, dtype=acc_dtype, device=device)
        # channel-major memory, (N, R, C) view: the kernel writes every (ray, channel) through the
        # strides, and the image layout (N, C, rows, cols) the API returns is then a free view
        out = torch.empty(n, c, r, dtype=acc_dtype, device=device).permute(0, 2, 1)
        marched = _marched_volume(volume, memory_budget_mib, prepared)
        rays, ray_strides = _ray_args(origin, direction, t_near, delta, n_samples, volume_index, acc_dtype)
        kernels = _kernels()
        fwd, tuned = kernels.forward, kernels.tuned
        width, tile_w = _ray_tiling(r, detector_cols, forward=True, direction=direction)
        args = (marched.tensor, marched.occupancy_or_any(), out, *rays, r, width, *volume.shape[2:], c,
                *marched.strides, *ray_strides, *out.stride())
        meta = {"BLOCK_C": _next_power_of_two(c), "ACC": _accumulator(acc_dtype), "VEC": marched.vec,
                "TILE_W": tile_w, "PACK": marched.pack, "BRICK": marched.brick, **forward_switches(tuned)}
        with checked_launch(prepared), _on(device):
            _launch(fwd, tuned, n, r, width, tile_w, args, meta, forward=True, items=b)
        return out

    @staticmethod
    def prepare_volume(volume: torch.Tensor, memory_budget_mib: float = 512.0,
                       check_finite: bool = False) -> PreparedVolume:
        """Start, ahead of :meth:`forward`, the work on ``volume (B, C, D, H, W)`` that needs no rays: the
        layout the march reads (packed or channels-last copy, asynchronous on a GPU) and, with
        ``check_finite``, the volume's NaN/inf scan — fused into the packing pass when that runs, else one
        reduction (``aminmax``). Nothing waits for the device here: the caller sets up the rays while the
        GPU copies, then reads ``finite_probe`` once (see :class:`PreparedVolume`)."""
        if not isinstance(volume, torch.Tensor) or volume.dim() != 5 or not volume.is_floating_point():
            raise TritonBackendInputError("volume must be a floating-point tensor of shape (B, C, D, H, W)")
        _check_device(volume)
        _check_volume_size(volume.shape[1], volume.shape[2:])
        probe = torch.zeros(1, dtype=torch.float32, device=volume.device) if check_finite else None
        marched, scanned = _marched_layout(volume, memory_budget_mib, probe)
        if check_finite and not scanned:
            probe = torch.stack(torch.aminmax(volume.detach().reshape(-1))).float()
        return PreparedVolume(volume, marched, probe)

    @staticmethod
    def adjoint(grad_out, volume_shape, origin, direction, t_near, delta, n_samples, volume_index,
                memory_budget_mib=512.0, detector_cols=None):
        """Exact transpose of :meth:`forward`: ``grad_out (N, R, C)`` → ``(B, C, D, H, W)``.

        The result is float32 (float64 for float64 ``grad_out``): in channels-last-3d memory format (a
        permuted view of the ``(B, D, H, W, C)`` buffer the atomics add into), or contiguous when the
        packed adjoint (``ADJOINT_PACK``, used when its buffer fits ``memory_budget_mib``) sums its slots
        into a fresh tensor; values identical either way.
        """
        if not isinstance(grad_out, torch.Tensor) or grad_out.dim() != 3 or not grad_out.is_floating_point():
            raise TritonBackendInputError("grad_out must be a floating-point tensor of shape (N, R, C)")
        try:
            b, c, d, h, w = (int(s) for s in volume_shape)
        except (TypeError, ValueError):
            raise TritonBackendInputError(f"volume_shape must be (B, C, D, H, W), got {volume_shape!r}") from None
        device = _check_device(grad_out, origin, direction, t_near, delta, n_samples, volume_index)
        _check_volume_size(c, (d, h, w))
        n, r = _check_rays(origin, direction, t_near, delta, n_samples, volume_index, b, c)
        if tuple(grad_out.shape) != (n, r, c):
            raise TritonBackendInputError(f"grad_out must have shape {(n, r, c)}, got {tuple(grad_out.shape)}")
        acc_dtype = _acc_torch_dtype(grad_out.dtype)
        if n == 0 or r == 0:
            return torch.zeros(b, d, h, w, c, dtype=acc_dtype, device=device).permute(0, 4, 1, 2, 3)
        rays, ray_strides = _ray_args(origin, direction, t_near, delta, n_samples, volume_index, acc_dtype)
        kernels = _kernels()
        tuned = kernels.tuned
        width, tile_w = _ray_tiling(r, detector_cols, forward=False, direction=direction)
        buffer, vec, grad_strides, pack = _gradient_buffer((b, c, d, h, w), acc_dtype, device, memory_budget_mib)
        args = (buffer, grad_out.detach(), *rays, r, width, d, h, w, c, *grad_strides, *ray_strides,
                *addressing_strides(grad_out))
        switches = adjoint_switches(pack, direction, tuned=tuned)
        adj, launched = adjoint_kernel(kernels.adjoint, kernels.adjoint_carry_tuned, switches)
        meta = {"BLOCK_C": _next_power_of_two(c), "ACC": _accumulator(acc_dtype), "VEC": vec, "TILE_W": tile_w,
                "PACK": pack, **launched}
        with _on(device):
            _launch(adj, tuned, n, r, width, tile_w, args, meta, forward=False, items=b)
        return _finish_gradient(buffer, (b, c, d, h, w), pack, switches["PLANE"])


class MarchedVolume(NamedTuple):
    """The volume as the forward march kernels read it: ``tensor`` (the packed corner layout, strides in
    voxels, or the volume / its channels-last copy), ``vec`` (elements per addressing unit), ``strides``
    (batch, channel, z, y, x in units of ``vec``), ``pack`` (corner slots per channel, 1 = unpacked) and, for
    empty space skipping (``brick`` > 0, see ``TritonBackend.SKIP_EMPTY_BRICK``), ``occupancy``: flat uint8,
    per volume ``1 + Π brick_grid`` bytes — a flag (1: some brick is unmarked, so the walk may skip samples)
    and the dilated brick marks ``(⌈D/brick⌉, ⌈H/brick⌉, ⌈W/brick⌉)`` —, then per volume the undilated marks
    they were made from."""

    tensor: torch.Tensor
    vec: int
    strides: tuple
    pack: int
    occupancy: torch.Tensor | None = None
    brick: int = 0

    def occupancy_or_any(self) -> torch.Tensor:
        """The occupancy grid, or (no skipping, the kernel never reads it) any tensor for the pointer argument."""
        return self.occupancy if self.occupancy is not None else self.tensor


class PreparedVolume(NamedTuple):
    """What :meth:`TritonBackend.prepare_volume` made ahead of a forward march: the ``source`` volume, the
    ``marched`` layout the kernels read (a :class:`MarchedVolume`, as :func:`_marched_volume`) and,
    when asked, ``finite_probe``: a small float32 device tensor whose values are all finite exactly when
    the volume's are (read it with one device→host copy when the result is needed).

    ``before_launch`` (set by the caller, e.g. ``forward_project``): a check of the volume in two steps, run
    around the march's launch by :func:`checked_launch`: called right before the launch it queues the read of
    ``finite_probe`` (a device→host copy behind the packing pass) and returns the rest of the check, which
    runs right after the launch and raises if the volume is not finite. So the GPU packs while the host is
    busy with everything up to the launch, and the march is queued before the host waits for the pass: the
    GPU goes on to the march without waiting for the host to launch it. A march over a volume that fails the
    check has its result dropped."""

    source: torch.Tensor
    marched: tuple
    finite_probe: torch.Tensor | None
    before_launch: Callable[[], Callable[[], None]] | None = None


@contextlib.contextmanager
def checked_launch(prepared: PreparedVolume | None):
    """Context around a march's launch: ``prepared.before_launch``'s read queued before it, its check (which
    may raise) after it (see :class:`PreparedVolume`); nothing without one."""
    finish = prepared.before_launch() if prepared is not None and prepared.before_launch is not None else None
    yield
    if finish is not None:
        finish()


def _marched_layout(volume: torch.Tensor, memory_budget_mib: float,
                    finite_probe: torch.Tensor | None = None) -> tuple[MarchedVolume, bool]:
    """``(MarchedVolume, scanned)``: the layout the forward march kernels read for ``volume (B, C, D, H, W)`` —
    the packed corner layout (strides in voxels) when ``FORWARD_PACK`` applies, else a channels-last view —
    with its brick occupancy when ``SKIP_EMPTY_BRICK`` is on; copies and occupancy are reused while a volume
    marked static is unchanged (:mod:`xraysyn.projector.static_volume`). ``finite_probe`` (a zeroed
    one-element float32 tensor): the packing pass also scans the volume into it; ``scanned`` says whether it
    did (False when no packing pass ran: unpacked layout, or a kept copy)."""
    pack = _forward_pack(volume, memory_budget_mib)
    brick = _skip_brick()

    def occupancy() -> torch.Tensor | None:
        """The occupancy of a volume no packing pass marks (a marking pass, then the dilation)."""
        return _occupancy(volume, brick, _zeroed_occupancy(volume, brick)) if brick else None

    if pack > 1:  # packed corner slots (B, D, H, W, C · pack), strides in voxels
        d, h, w = volume.shape[2:]
        ran = []

        def pack_now():
            ran.append(True)
            if not brick:
                return _pack_corners(volume.detach(), pack, finite_probe), None
            occ = _zeroed_occupancy(volume, brick)
            return _pack_corners(volume.detach(), pack, finite_probe, occ, brick), occ

        packed, occ = static_volume.layout_copy(volume, ("packed", pack, brick), pack_now)
        marched = MarchedVolume(packed, volume.shape[1] * pack, (d * h * w, 1, h * w, w, 1), pack, occ, brick)
        return marched, bool(ran and finite_probe is not None)
    vol = volume.detach()
    if TritonBackend.COPY_CHANNELS_LAST and not _is_channels_last(volume):  # a copy (a view is never kept)
        vol, occ = static_volume.layout_copy(volume, ("channels_last", brick),
                                             lambda: (_channels_last(vol), occupancy()))
    else:
        occ = static_volume.layout_copy(volume, ("occupancy", brick), occupancy) if brick else None
    vec, strides = _volume_strides(vol)
    return MarchedVolume(vol, vec, strides, 1, occ, brick), False


def _skip_brick() -> int:
    """The brick edge (voxels) of the forward's empty space skipping: ``SKIP_EMPTY_BRICK``, or 0 (off) when
    ``REUSE_CORNERS`` is on."""
    brick = TritonBackend.SKIP_EMPTY_BRICK
    if brick not in _SKIP_BRICKS:
        raise TritonBackendInputError(f"TritonBackend.SKIP_EMPTY_BRICK must be one of {_SKIP_BRICKS}, got {brick!r}")
    return 0 if TritonBackend.REUSE_CORNERS else int(brick)


def _zeroed_occupancy(volume: torch.Tensor, brick: int) -> torch.Tensor:
    """The zeroed uint8 buffer of empty space skipping's occupancy and the bricks' marks (see
    :class:`MarchedVolume`): one tensor the kernels address without views (this is on the forward's host
    path)."""
    n_bricks = _bricks(tuple(volume.shape[2:]), brick)
    return torch.zeros(volume.shape[0] * (2 * n_bricks + 1), dtype=torch.uint8, device=volume.device)


@functools.lru_cache(maxsize=64)
def _bricks(spatial_shape: tuple, brick: int) -> int:
    """Bricks of one ``(D, H, W)`` volume (remembered: this is on the forward's host path)."""
    return math.prod(brick_grid(spatial_shape, brick))


def _dilate(occupancy: torch.Tensor, items: int, grid: tuple) -> None:
    """Queue ``dilate_occupancy_kernel`` (inside the caller's device context)."""
    _kernels().dilate_occupancy[(-(-math.prod(grid) // _DILATE_BLOCK), items)](
        occupancy, *grid, BLOCK=_DILATE_BLOCK, num_warps=4)


def _occupancy(volume: torch.Tensor, brick: int, occupancy: torch.Tensor) -> torch.Tensor:
    """``occupancy`` (zeroed, :func:`_zeroed_occupancy`; see :class:`MarchedVolume`) made for ``volume (B, C, D,
    H, W)`` by a marking pass (for layouts no packing pass marks) and the dilation: per volume the flag and the
    dilated marks — 1 where the brick or a neighbour holds a non-zero voxel — that the forward's empty space
    skipping walks."""
    b, c, d, h, w = volume.shape
    n_voxels = d * h * w
    with _on(volume.device):
        _kernels().mark_occupied[(-(-n_voxels // _PACK_BLOCK_V), b)](
            volume.detach(), occupancy, n_voxels, h, w, c, *volume.stride(), BLOCK_V=_PACK_BLOCK_V,
            BLOCK_C=_next_power_of_two(c), BRICK=brick, num_warps=4)
        _dilate(occupancy, b, brick_grid((d, h, w), brick))
    return occupancy


def _marched_volume(volume: torch.Tensor, memory_budget_mib: float,
                    prepared: PreparedVolume | None = None) -> MarchedVolume:
    """The :class:`MarchedVolume` the forward march kernels read for ``volume`` (see :func:`_marched_layout`):
    the one :meth:`TritonBackend.prepare_volume` made when ``prepared`` is for this tensor, else made now."""
    if prepared is not None and _same_tensor(prepared.source, volume):
        return prepared.marched
    return _marched_layout(volume, memory_budget_mib)[0]


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a`` and ``b`` are the same tensor, or views of the same memory with the same shape, strides and dtype."""
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
                      and a.dtype == b.dtype and a.device == b.device)


def _gradient_buffer(volume_shape, acc_dtype: torch.dtype, device: torch.device, memory_budget_mib: float):
    """``(zeroed buffer, VEC, strides, PACK)`` the adjoint kernels scatter into for a ``(B, C, D, H, W)``
    volume: packed corner slots when ``ADJOINT_PACK`` applies and the packed buffer fits
    ``memory_budget_mib``, else the channels-last gradient."""
    b, c, d, h, w = volume_shape
    pack = _adjoint_pack(c, acc_dtype, d * h * w)
    if b * c * d * h * w * pack * torch.finfo(acc_dtype).bits // 8 > memory_budget_mib * 2**20:
        pack = 1
    if pack > 1:  # packed corner slots: (B, D, H, W, C · pack), strides in voxels
        buffer = torch.zeros(b, d, h, w, c * pack, dtype=acc_dtype, device=device)
        return buffer, c * pack, (d * h * w, 1, h * w, w, 1), pack
    buffer = torch.zeros(b, d, h, w, c, dtype=acc_dtype, device=device)
    vec, strides = _volume_strides(buffer.permute(0, 4, 1, 2, 3))
    return buffer, vec, strides, 1


def _finish_gradient(buffer: torch.Tensor, volume_shape, pack: int, plane: int = 0) -> torch.Tensor:
    """The ``(B, C, D, H, W)`` gradient from the adjoint's scatter buffer: the buffer itself as a channels-last
    view, or, from packed slots (packed across axis ``plane`` for 4 slots), a contiguous tensor summed in one
    kernel pass (the layout of a contiguous volume, so autograd need not copy it into the volume's layout)."""
    b, c, d, h, w = volume_shape
    if pack == 1:
        return buffer.permute(0, 4, 1, 2, 3)
    grad = torch.empty(b, c, d, h, w, dtype=buffer.dtype, device=buffer.device)
    n_voxels = d * h * w
    with _on(buffer.device):
        _kernels().unpack_corners[(-(-n_voxels // _PACK_BLOCK_V), b)](
            buffer, grad, n_voxels, h, w, c, BLOCK_V=_PACK_BLOCK_V, BLOCK_C=_next_power_of_two(c), PACK=pack,
            PLANE=plane, num_warps=4)
    return grad


def _corner_slots(want: int, setting: str, channels: int, item_bytes: int, voxels: int) -> int:
    """Corner slots per channel a packed layout can use: ``want`` (1, 2 or 4, the ``setting``) lowered until
    ``C · slots`` values fit one 16-byte vector, and 1 (no packing) for a channel count that is not a power
    of two or when one item's slots would exceed 32-bit indexing (``voxels`` per item)."""
    if want not in (1, 2, 4):
        raise TritonBackendInputError(f"TritonBackend.{setting} must be 1, 2 or 4, got {want!r}")
    if want == 1 or channels & (channels - 1):
        return 1
    while want > 1 and channels * want * item_bytes > _VECTOR_BYTES:
        want //= 2
    return 1 if channels * want * voxels > _INT32_LIMIT else want


def _adjoint_pack(channels: int, acc_dtype: torch.dtype, voxels: int = 1) -> int:
    """Corner slots per channel of the packed adjoint (1 = plain scatter; float32 only); see ``ADJOINT_PACK``."""
    slots = _corner_slots(int(TritonBackend.ADJOINT_PACK), "ADJOINT_PACK", channels, 4, voxels)
    return slots if acc_dtype == torch.float32 else 1


def _forward_pack(volume: torch.Tensor, memory_budget_mib: float) -> int:
    """Corner slots per channel of the volume the forward march reads (1 = the volume itself); see
    ``FORWARD_PACK``. 1 also when the packed copy would exceed ``memory_budget_mib``."""
    slots = _corner_slots(int(TritonBackend.FORWARD_PACK), "FORWARD_PACK", volume.shape[1], volume.element_size(),
                          math.prod(volume.shape[2:]))
    return 1 if volume.numel() * slots * volume.element_size() > memory_budget_mib * 2**20 else slots


def _pack_corners(volume: torch.Tensor, pack: int, finite_probe: torch.Tensor | None = None,
                  occupancy: torch.Tensor | None = None, brick: int = 0) -> torch.Tensor:
    """``(B, C, D, H, W)`` (any strides) → ``(B, D, H, W, C · pack)`` with slot ``c · pack + 2 · yo + xo`` of
    voxel ``(z, y, x)`` = channel ``c`` of voxel ``(z, y + yo, x + xo)`` (``pack`` 2: x neighbours, 4: x
    and y), in one kernel pass.

    The transpose of the unpacking (``unpack_corners_kernel``) on every slot the kernels read: a cell's base voxel is
    at most ``n - 2`` along each axis, so the neighbours exist; the last row / column (never a base)
    repeats its own values.

    ``finite_probe`` (optional, a zeroed float32 tensor of one element on the volume's device): the same
    pass also scans the volume, setting the probe to +inf if any value is NaN or inf (asynchronously).
    ``occupancy`` and ``brick`` (optional, both or neither; :func:`_zeroed_occupancy`): the pass also marks the
    bricks of ``brick³`` voxels holding a non-zero value, and the dilation queued right after it fills the
    occupancy (see :func:`_occupancy`).
    """
    b, c, d, h, w = volume.shape
    packed = torch.empty(b, d, h, w, c * pack, dtype=volume.dtype, device=volume.device)
    n_voxels = d * h * w
    with _on(volume.device):
        _kernels().pack_corners[(-(-n_voxels // _PACK_BLOCK_V), b)](
            volume, packed, finite_probe if finite_probe is not None else packed,
            occupancy if brick else packed, n_voxels, h, w, *volume.stride(),
            BLOCK_V=_PACK_BLOCK_V, PACK=pack, K=c * pack, CHECK_FINITE=finite_probe is not None,
            BRICK=brick, num_warps=4)
        if brick:
            _dilate(occupancy, b, brick_grid((d, h, w), brick))
    return packed


def _on(device: torch.device):
    """Make ``device`` the current CUDA device for the launch (a no-op on the CPU interpreter)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def backproject(images: torch.Tensor, world_from_voxel: torch.Tensor, poses: torch.Tensor, geometry, volume_shape,
                isocenter: torch.Tensor | None = None, host_frames=None) -> torch.Tensor:
    """Voxel-driven single-image backprojector BP (paper eq. 7) in one kernel launch, no gradient.

    Same definition as :func:`xraysyn.projector.backproject` (the torch reference, which is also
    differentiable): each voxel centre is projected onto the detector and takes the bilinear image
    value there (border-clamped) divided by the chord length (mm) of the source→voxel ray inside
    the volume box; voxels projecting off the detector get 0.

    Args:
        images: ``(B, C, rows, cols)`` in ``u × mm`` (any strides; fp16/bf16 read directly).
        world_from_voxel: ``(B, 4, 4)`` voxel index → world mm affines.
        poses: ``(B, 4, 4)`` camera_from_isocenter of each image.
        geometry: the :class:`xraysyn.geometry.ConeBeamGeometry` that took the images.
        volume_shape: ``(D, H, W)``.
        isocenter: ``(B, 3)`` world mm; default each volume's centre.
        host_frames: optional float64 numpy copies ``(poses, affines, isocenter or None)`` of the three
            tensors above (see :func:`build_rays`); otherwise they are copied from the device here.

    Returns:
        ``(B, C, D, H, W)`` in ``u`` per mm, float32 (float64 for float64 images).
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise TritonBackendInputError("images must be a floating-point tensor of shape (B, C, rows, cols)")
    b, c, rows, cols = images.shape
    if (rows, cols) != tuple(geometry.detector_shape):
        raise TritonBackendInputError(f"images are {(rows, cols)} pixels but the detector is {geometry.detector_shape}")
    try:
        d, h, w = (int(s) for s in volume_shape)
    except (TypeError, ValueError):
        raise TritonBackendInputError(f"volume_shape must be (D, H, W), got {volume_shape!r}") from None
    _check_volume_size(c, (d, h, w))
    if images.numel() > _INT32_LIMIT:
        raise TritonBackendInputError(f"{tuple(images.shape)} images exceed 32-bit indexing; split the batch")
    device = _check_device(images, world_from_voxel, poses)
    acc_dtype = _acc_torch_dtype(images.dtype)
    if tuple(world_from_voxel.shape) != (b, 4, 4) or tuple(poses.shape) != (b, 4, 4):
        raise TritonBackendInputError(f"world_from_voxel and poses must be ({b}, 4, 4), got "
                                      f"{tuple(world_from_voxel.shape)} and {tuple(poses.shape)}")
    pose, affines, iso, voxel_from_world = _host_frames(poses, world_from_voxel, isocenter, host_frames, (d, h, w))
    # per item, in float64 on the host: camera_from_voxel (3, 4), the world vector source→voxel as a
    # (3, 4) map of the voxel index, and the source in voxel index coordinates (3,)
    rot = pose[:, :3, :3]
    cam_lin = rot @ affines[:, :3, :3]
    cam_off = (rot @ (affines[:, :3, 3] - iso)[..., None])[..., 0] + pose[:, :3, 3]
    source_world = _source_world(pose, iso)
    source_voxel = (voxel_from_world[:, :3, :3] @ source_world[..., None])[..., 0] + voxel_from_world[:, :3, 3]
    source_to_voxel = np.concatenate([affines[:, :3, :3], (affines[:, :3, 3] - source_world)[..., None]], -1)
    row0, col0 = geometry.center_pixel
    row_mm, col_mm = geometry.pixel_spacing
    tiny = torch.finfo(acc_dtype).tiny ** 0.5  # the same guard as rays.clip_to_box
    host = np.concatenate([[geometry.sdd, row0, col0, row_mm, col_mm, tiny],
                           np.concatenate([cam_lin, cam_off[..., None]], -1).ravel(), source_to_voxel.ravel(),
                           source_voxel.ravel()])
    params = frames.to_device(host, device, acc_dtype)  # one host→device copy, queued without waiting
    detector, camera_from_voxel = params[:6], params[6:6 + 12 * b]
    rel, src = params[6 + 12 * b:6 + 24 * b], params[6 + 24 * b:]
    out = torch.empty(b, c, d, h, w, dtype=acc_dtype, device=device)
    n_voxels = d * h * w
    gather = _kernels().backproject
    with _on(device):
        gather[(-(-n_voxels // _BP_BLOCK_V), b)](
            images.detach(), out, camera_from_voxel, rel, src, detector, n_voxels, d, h, w, c, rows, cols,
            *images.stride(), out.stride(0), out.stride(1),
            BLOCK_V=_BP_BLOCK_V, BLOCK_C=_next_power_of_two(c), ACC=_accumulator(acc_dtype), num_warps=4)
    return out


def _host_frames(poses, world_from_voxel, isocenter, host_frames, spatial_shape):
    """float64 numpy ``(poses (N, 4, 4), affines (B, 4, 4), isocenter (B, 3), voxel_from_world (B, 4, 4))``: the
    given host copies, else copied here; the isocenter defaults to the centre of each volume (as
    :func:`xraysyn.geometry.volume_center`). The last two depend on the affines only and are remembered for
    recent ones (:func:`_volume_terms`)."""
    if host_frames is not None:
        pose, affines, iso = host_frames
    else:
        pose = poses.detach().to("cpu", torch.float64).numpy()
        affines = world_from_voxel.detach().to("cpu", torch.float64).numpy()
        iso = None if isocenter is None else isocenter.detach().to("cpu", torch.float64).numpy()
    if pose.shape != tuple(poses.shape) or affines.shape != tuple(world_from_voxel.shape):
        raise TritonBackendInputError(f"host frames {pose.shape} / {affines.shape} do not match poses "
                                      f"{tuple(poses.shape)} / affines {tuple(world_from_voxel.shape)}")
    return (pose, affines, *_volume_terms(affines, iso, spatial_shape))


def _volume_terms(affines: np.ndarray, isocenter: np.ndarray | None, spatial_shape) -> tuple[np.ndarray, np.ndarray]:
    """``(isocenter (B, 3), voxel_from_world (B, 4, 4))`` float64 of ``affines (B, 4, 4)``: the given isocenter
    (broadcast) or each volume's centre, and the inverse affines; remembered for recent affines (read-only:
    a training loop draws new poses every step, rarely new affines)."""
    key = (array_key(affines), array_key(isocenter), tuple(int(s) for s in spatial_shape))
    kept = _VOLUME_TERMS.get(key)
    if kept is not None:
        return kept
    if isocenter is None:
        d, h, w = spatial_shape
        isocenter = (affines @ np.array([(d - 1) / 2, (h - 1) / 2, (w - 1) / 2, 1.0]))[:, :3]
    iso = np.array(np.broadcast_to(isocenter, (affines.shape[0], 3)))
    voxel_from_world = np.linalg.inv(affines)
    iso.flags.writeable = voxel_from_world.flags.writeable = False
    _VOLUME_TERMS.put(key, (iso, voxel_from_world))
    return iso, voxel_from_world


def _source_world(pose: np.ndarray, iso: np.ndarray) -> np.ndarray:
    """Source positions (world mm) of ``camera_from_isocenter`` poses ``(N, 4, 4)`` about isocenters ``(N, 3)``
    (numpy :func:`xraysyn.geometry.pose_source_position` + isocenter)."""
    return -(np.swapaxes(pose[:, :3, :3], -1, -2) @ pose[:, :3, 3:])[..., 0] + iso


def _ray_setup_params(poses, world_from_voxel, isocenter, host_frames, spatial_shape, geometry, step_mm, num_samples,
                      acc_dtype):
    """``((params, volume_index, dominant axis), key)``: what the ray set-up kernel reads (float64 numpy) —
    the detector numbers, then per view the source in voxel coordinates (3) and the camera-to-voxel map (9) —,
    each view's volume (int64 numpy) and the voxel axis the views' optical axes run along most
    (:func:`dominant_axis`); ``key``: everything the rays depend on, exactly (frames' bytes, shape,
    detector, sampling, dtype). A handful of 4 × 4 operations in float64 numpy (each ~1 µs; torch pays ~10 µs a
    call), skipped for frames and geometry met recently (:mod:`~xraysyn.host_cache`)."""
    pose, affines, iso, voxel_from_world = _host_frames(poses, world_from_voxel, isocenter, host_frames,
                                                        spatial_shape)
    key = (array_key(pose), array_key(affines), array_key(iso), tuple(spatial_shape), geometry.sdd,
           tuple(geometry.detector_shape), tuple(geometry.center_pixel), tuple(geometry.pixel_spacing), step_mm,
           num_samples, acc_dtype)
    kept = _RAY_SETUP_PARAMS.get(key)
    if kept is not None:
        return kept, key
    n_views, n_vol = pose.shape[0], affines.shape[0]
    volume_index = np.repeat(np.arange(n_vol), n_views // n_vol)
    if step_mm is None and num_samples is None:
        step_mm = float(np.linalg.norm(affines[:, :3, :3], axis=-2).min()) / 2.0
    voxel_from_world = voxel_from_world[volume_index]
    lin = voxel_from_world[:, :3, :3]
    source_world = _source_world(pose, iso[volume_index])  # (N, 3) mm
    origin = (lin @ source_world[..., None])[..., 0] + voxel_from_world[:, :3, 3]  # (N, 3) voxel coords
    camera_to_voxel = lin @ np.swapaxes(pose[:, :3, :3], -1, -2)  # (N, 3, 3): camera unit vector → voxel per mm
    row0, col0 = geometry.center_pixel
    row_mm, col_mm = geometry.pixel_spacing
    tiny = torch.finfo(acc_dtype).tiny ** 0.5  # the same guard as rays.clip_to_box
    detector = np.array([geometry.sdd, row0, col0, row_mm, col_mm, tiny, step_mm or 1.0])
    params = np.concatenate([detector, np.concatenate([origin, camera_to_voxel.reshape(n_views, 9)], 1).ravel()])
    params.flags.writeable = volume_index.flags.writeable = False  # shared by later calls with the same key
    # the middle ray's direction is the camera's optical axis: column 2 of each view's camera→voxel map
    dominant = int(np.argmax(np.abs(camera_to_voxel[:, :, 2]).sum(0))) if n_views else 0
    _RAY_SETUP_PARAMS.put(key, (params, volume_index, dominant))
    return (params, volume_index, dominant), key


def build_rays(poses: torch.Tensor, world_from_voxel: torch.Tensor, spatial_shape, geometry, *,
               step_mm: float | None = None, num_samples: int | None = None,
               isocenter: torch.Tensor | None = None, host_frames=None):
    """:func:`xraysyn.projector.rays.build_rays` in one kernel launch (no gradients).

    Same arguments, same :class:`~xraysyn.projector.rays.RaySet` (the contract of every backend).
    The few numbers per view (source in voxel coordinates, camera-to-voxel direction map) are
    computed on the host in float64 numpy from the small pose/affine tensors; the kernel then builds,
    clips and counts the samples of every ray of every view. This replaces a few hundred small
    torch operations (launch-bound on a GPU) by one launch. ``n_samples`` follows the same rule
    (``ceil(length / step_mm − 1e-6)``); where ``length / step_mm`` lies within float rounding of
    that threshold the two implementations may count one sample apart.

    ``host_frames`` (optional): float64 numpy copies ``(poses, affines, isocenter or None)`` of the same
    three tensors (:class:`xraysyn.projector.frames.HostFrames`, made while validating them), which saves
    copying them back from the GPU again.
    """
    from xraysyn.projector.rays import RaySet

    device = poses.device
    _check_device(poses, world_from_voxel)
    acc_dtype = _acc_torch_dtype(poses.dtype)
    n_views, n_vol = poses.shape[0], world_from_voxel.shape[0]
    d, h, w = (int(s) for s in spatial_shape)
    rows, cols = geometry.detector_shape
    n_rays = rows * cols
    if n_views * n_rays * 3 > _INT32_LIMIT:
        raise TritonBackendInputError(f"{n_views} views × {n_rays} rays exceed 32-bit indexing; split the views")
    (host, volume_index, dominant), key = _ray_setup_params(poses, world_from_voxel, isocenter, host_frames,
                                                            (d, h, w), geometry, step_mm, num_samples, acc_dtype)
    keep_bytes = int(TritonBackend.KEEP_RAYS_MIB * 2**20)
    if keep_bytes > 0:
        key = (key, kept_rays.device_key(device))
        kept = _KEPT_RAYS.get(key)
        if kept is not None:
            return kept
    # copies: the memo's read-only arrays must not become the storage of tensors a caller could write to
    params = frames.to_device(host, device, acc_dtype)  # queued without waiting for the packing pass
    direction = torch.empty(n_views, n_rays, 3, dtype=acc_dtype, device=device)
    t_near = torch.empty(n_views, n_rays, dtype=acc_dtype, device=device)
    delta = torch.empty_like(t_near)
    length = torch.empty_like(t_near)
    n_samples = torch.empty(n_views, n_rays, dtype=torch.int32, device=device)
    setup = _kernels().ray_setup
    with _on(device):
        setup[(-(-n_rays // _SETUP_BLOCK_R), n_views)](
            params, direction, t_near, delta, length, n_samples, n_rays, cols, d, h, w, int(num_samples or 0),
            BLOCK_R=_SETUP_BLOCK_R, ACC=_accumulator(acc_dtype), FIXED_SAMPLES=num_samples is not None, num_warps=4)
    # the sources (voxel coordinates): the first 3 of each view's 12 numbers after the 7 shared ones (one view op)
    origin_dev = params.as_strided((n_views, 3), (12, 1), params.storage_offset() + 7)
    index = frames.to_device(volume_index, device)
    setattr(index, _INDEX_BOUND_ATTR, n_vol)
    setattr(direction, _DOMINANT_AXIS_ATTR, dominant)
    setattr(direction, _DETECTOR_COLS_ATTR, int(cols))
    rays = RaySet(origin=origin_dev, direction=direction, t_near=t_near, delta=delta, n_samples=n_samples,
                  volume_index=index, length=length)
    if keep_bytes > 0:
        _KEPT_RAYS.put(key, rays, keep_bytes)
    return rays
