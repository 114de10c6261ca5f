"""The Triton backend's settings: one frozen :class:`TritonConfig`, and :func:`use_config` to run a block
with another one.

Every field only changes how the work is organised (memory layout, launch shape, which rays or samples a
program skips), never the values beyond float rounding order; the defaults are the fastest settings
measured on an H200 (the measurements and their history: ``docs/gpu_kernels.md``). The backend reads the
active configuration (:func:`active_config`) on every call, so a benchmark or a test can pin a launch
configuration or force the unpacked layouts for a block of code::

    from dataclasses import replace
    from xraysyn.projector.triton import DEFAULT_CONFIG, use_config

    with use_config(replace(DEFAULT_CONFIG, forward_pack=1, adjoint_pack=1)):
        ...  # forward_project / forward_project_adjoint on CUDA tensors use the unpacked layouts

The active configuration is a context variable: a :func:`use_config` block applies to its own thread
(and asyncio task) only.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator

__all__ = ["DEFAULT_CONFIG", "SKIP_BRICK_EDGES", "TritonConfig", "TritonConfigError", "active_config", "use_config"]

# Corner slots per channel the packed layouts support: 1 (no packing), the x neighbour, the x and y neighbours.
_PACKS = (1, 2, 4)
# Brick edges (voxels) empty space skipping accepts (0 = off); the walk's exactness bound needs at least 2.
SKIP_BRICK_EDGES = (0, 2, 4, 8, 16, 32)
# Samples per loop iteration the forward march supports.
_UNROLLS = (1, 2, 4)
# Bounds of a pinned launch configuration: rays per program (a power of two) and warps per program.
_MIN_BLOCK_R, _MAX_BLOCK_R = 16, 1024
_MAX_WARPS = 16


class TritonConfigError(ValueError):
    """A :class:`TritonConfig` field out of its documented range."""


def _power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _check_launch(name: str, launch) -> None:
    if launch is None:
        return
    if not isinstance(launch, tuple) or len(launch) != 2:
        raise TritonConfigError(f"{name} must be None (autotuned) or (rays per program, warps), got {launch!r}")
    block_r, warps = launch
    if not isinstance(block_r, int) or not _power_of_two(block_r) or not _MIN_BLOCK_R <= block_r <= _MAX_BLOCK_R:
        raise TritonConfigError(f"{name}: rays per program must be a power of two in [{_MIN_BLOCK_R}, "
                                f"{_MAX_BLOCK_R}], got {block_r!r}")
    if not isinstance(warps, int) or not _power_of_two(warps) or warps > _MAX_WARPS:
        raise TritonConfigError(f"{name}: warps must be a power of two up to {_MAX_WARPS}, got {warps!r}")


@dataclass(frozen=True)
class TritonConfig:
    """How the Triton kernels organise the march (results are the same for every valid value up to float
    rounding order; validated on construction).

    Attributes:
        forward_tile_width: width (pixels) of the 2-D detector tiles one program of the forward march takes
            (a tile 4 wide makes a 32-lane warp an 8 × 4 patch); 0 = runs of consecutive rays.
        adjoint_tile_width: the same for the adjoint march.
        forward_pack: corner slots per voxel and channel of the volume copy the forward march reads: 1 = the
            volume itself (8 loads per sample), 2 or 4 = a packed copy holding each voxel's x (and y)
            neighbours too (4 or 2 vector loads per sample). Lowered until ``C · pack`` values fit 16 bytes;
            1 when the copy would exceed the call's ``memory_budget_mib``.
        adjoint_pack: corner slots per voxel and channel of the adjoint's scatter buffer (1 = scatter into the
            gradient, 8 atomics per cell; 2 or 4 = vector atomics covering a corner's x (and y) neighbours,
            summed afterwards in one pass). float32 only; ``C · pack`` at most 4 floats; within the budget.
        carry_max_pack: the adjoint keeps the corners a ray's next cell shares in registers (the same sum,
            reassociated, fewer atomics) when its buffer has at most this many slots per channel; 0 = never.
            With 4 slots the carry is the plane carry (the shared quad of a step across
            ``adjoint_plane_axis``).
        adjoint_plane_axis: the axis across which the 4-slot adjoint packs a cell's corners into two 2 × 2
            vectors (0 = z, 1 = y, 2 = x); -1 = the rays' dominant axis where the plane carry may run, else z.
        tune_plane_carry: with 4 slots and the carry not forced (``carry_max_pack < 4``), the GPU's autotuner
            times every launch configuration with the plane carry on and off and keeps the faster; False =
            off at 4 slots. No effect on pinned launches or the interpreter.
        skip_empty_brick: empty space skipping in the forward march: brick edge in voxels (one of
            :data:`SKIP_BRICK_EDGES`; 0 = off). Exact: skipped samples have eight zero corners.
        keep_rays_mib: device memory (MiB) for ray sets kept for geometries met again (exact key); 0 = none.
        forward_launch: None = the launch configuration is autotuned on the GPU; else pinned ``(rays per
            program, warps)`` (a power of two in [16, 1024], a power of two up to 16). Pinning skips the first
            call's autotuning and lets a benchmark time one configuration.
        adjoint_launch: the same for the adjoint march.
        forward_unroll: samples per loop iteration of the forward march where it is not autotuned (the
            interpreter, a pinned launch): 1, 2 or 4.
    """

    forward_tile_width: int = 4
    adjoint_tile_width: int = 4
    forward_pack: int = 4
    adjoint_pack: int = 4
    carry_max_pack: int = 2
    adjoint_plane_axis: int = -1
    tune_plane_carry: bool = True
    skip_empty_brick: int = 4
    keep_rays_mib: float = 64.0
    forward_launch: tuple[int, int] | None = None
    adjoint_launch: tuple[int, int] | None = None
    forward_unroll: int = 1

    def __post_init__(self) -> None:
        for name in ("forward_tile_width", "adjoint_tile_width"):
            width = getattr(self, name)
            if not isinstance(width, int) or width < 0 or (width and not _power_of_two(width)):
                raise TritonConfigError(f"{name} must be 0 or a power of two, got {width!r}")
        for name in ("forward_pack", "adjoint_pack"):
            if getattr(self, name) not in _PACKS:
                raise TritonConfigError(f"{name} must be one of {_PACKS}, got {getattr(self, name)!r}")
        if self.carry_max_pack not in (0, *_PACKS):
            raise TritonConfigError(f"carry_max_pack must be one of {(0, *_PACKS)}, got {self.carry_max_pack!r}")
        if self.adjoint_plane_axis not in (-1, 0, 1, 2):
            raise TritonConfigError(
                f"adjoint_plane_axis must be -1 (auto), 0 (z), 1 (y) or 2 (x), got {self.adjoint_plane_axis!r}")
        if not isinstance(self.tune_plane_carry, bool):
            raise TritonConfigError(f"tune_plane_carry must be True or False, got {self.tune_plane_carry!r}")
        if self.skip_empty_brick not in SKIP_BRICK_EDGES:
            raise TritonConfigError(
                f"skip_empty_brick must be one of {SKIP_BRICK_EDGES}, got {self.skip_empty_brick!r}")
        if not isinstance(self.keep_rays_mib, (int, float)) or not self.keep_rays_mib >= 0:
            raise TritonConfigError(f"keep_rays_mib must be a non-negative number of MiB, got {self.keep_rays_mib!r}")
        _check_launch("forward_launch", self.forward_launch)
        _check_launch("adjoint_launch", self.adjoint_launch)
        if self.forward_unroll not in _UNROLLS:
            raise TritonConfigError(f"forward_unroll must be one of {_UNROLLS}, got {self.forward_unroll!r}")


DEFAULT_CONFIG = TritonConfig()
_ACTIVE: contextvars.ContextVar[TritonConfig] = contextvars.ContextVar("xraysyn_triton_config",
                                                                       default=DEFAULT_CONFIG)


def active_config() -> TritonConfig:
    """The configuration the Triton backend uses now: :data:`DEFAULT_CONFIG` outside :func:`use_config`."""
    return _ACTIVE.get()


@contextlib.contextmanager
def use_config(config: TritonConfig) -> Iterator[TritonConfig]:
    """Run the block with ``config`` as the Triton backend's configuration (restored afterwards)."""
    if not isinstance(config, TritonConfig):
        raise TritonConfigError(f"use_config takes a TritonConfig, got {type(config).__name__}")
    token = _ACTIVE.set(config)
    try:
        yield config
    finally:
        _ACTIVE.reset(token)
