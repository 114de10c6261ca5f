"""The volume layouts the march kernels read and write: the forward's marched volume (packed corner slots, a
channels-last copy, or the volume itself, with empty space skipping's brick occupancy), the adjoint's scatter
buffer and its summing back, and the one-pass packing that also scans for NaN/inf."""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, NamedTuple

import torch

from xraysyn.projector import static_volume
from xraysyn.projector.empty_space import brick_grid
from xraysyn.projector.triton.checks import INT32_LIMIT
from xraysyn.projector.triton.config import TritonConfig
from xraysyn.projector.triton.launch import kernel_objects, next_power_of_two, on_device

__all__ = ["MarchedVolume", "PreparedVolume", "checked_launch", "finish_gradient", "gradient_buffer",
           "marched_layout", "marched_volume", "pack_corners", "volume_strides"]

# Widest vector load / atomic (16 bytes, sm_90) the packed corner layouts build.
_VECTOR_BYTES = 16


# Voxels per program of the corner-packing kernel.
_PACK_BLOCK_V = 256


# Bricks per program of the occupancy's dilation.
_DILATE_BLOCK = 256


def _is_channels_last(volume: torch.Tensor) -> bool:
    return volume.shape[1] == 1 or volume.stride(1) == 1


def _channels_last(volume: torch.Tensor) -> torch.Tensor:
    """A ``(B, C, D, H, W)`` view whose channel stride is 1 (copy only when needed)."""
    if _is_channels_last(volume):
        return volume
    return volume.permute(0, 2, 3, 4, 1).contiguous().permute(0, 4, 1, 2, 3)


def volume_strides(volume: torch.Tensor) -> tuple[int, tuple[int, ...]]:
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
    packed = (c > 1 and c == next_power_of_two(c) and sc == 1 and all(st % c == 0 for st in others)
              and volume.data_ptr() % (c * volume.element_size()) == 0)
    if not packed:
        return 1, (sb, sc, sd, sh, sw)
    return c, (sb // c, sc, sd // c, sh // c, sw // c)


class MarchedVolume(NamedTuple):
    """The volume as the forward march kernels read it: ``tensor`` (the packed corner layout, strides in
    voxels, or the volume / its channels-last copy), ``vec`` (elements per addressing unit), ``strides``
    (batch, channel, z, y, x in units of ``vec``), ``pack`` (corner slots per channel, 1 = unpacked) and, for
    empty space skipping (``brick`` > 0, see ``TritonConfig.skip_empty_brick``), ``occupancy``: flat uint8,
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
    ``marched`` layout the kernels read (a :class:`MarchedVolume`, as :func:`marched_volume`) and,
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


def marched_layout(volume: torch.Tensor, memory_budget_mib: float, config: TritonConfig,
                    finite_probe: torch.Tensor | None = None) -> tuple[MarchedVolume, bool]:
    """``(MarchedVolume, scanned)``: the layout the forward march kernels read for ``volume (B, C, D, H, W)`` —
    the packed corner layout (strides in voxels) when ``config.forward_pack`` applies, else the volume or its
    channels-last copy (one vector load per corner) — with its brick occupancy when
    ``config.skip_empty_brick`` is on; copies and occupancy are reused while a volume
    marked static is unchanged (:mod:`xraysyn.projector.static_volume`). ``finite_probe`` (a zeroed
    one-element float32 tensor): the packing pass also scans the volume into it; ``scanned`` says whether it
    did (False when no packing pass ran: unpacked layout, or a kept copy)."""
    pack = forward_pack(volume, memory_budget_mib, config)
    brick = config.skip_empty_brick

    def occupancy() -> torch.Tensor | None:
        """The occupancy of a volume no packing pass marks (a marking pass, then the dilation)."""
        return _occupancy(volume, brick, _zeroed_occupancy(volume, brick)) if brick else None

    if pack > 1:  # packed corner slots (B, D, H, W, C · pack), strides in voxels
        d, h, w = volume.shape[2:]
        ran = []

        def pack_now():
            ran.append(True)
            if not brick:
                return pack_corners(volume.detach(), pack, finite_probe), None
            occ = _zeroed_occupancy(volume, brick)
            return pack_corners(volume.detach(), pack, finite_probe, occ, brick), occ

        packed, occ = static_volume.layout_copy(volume, ("packed", pack, brick), pack_now)
        marched = MarchedVolume(packed, volume.shape[1] * pack, (d * h * w, 1, h * w, w, 1), pack, occ, brick)
        return marched, bool(ran and finite_probe is not None)
    vol = volume.detach()
    if not _is_channels_last(volume):  # a copy (a view is never kept)
        vol, occ = static_volume.layout_copy(volume, ("channels_last", brick),
                                             lambda: (_channels_last(vol), occupancy()))
    else:
        occ = static_volume.layout_copy(volume, ("occupancy", brick), occupancy) if brick else None
    vec, strides = volume_strides(vol)
    return MarchedVolume(vol, vec, strides, 1, occ, brick), False


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
    kernel_objects().dilate_occupancy[(-(-math.prod(grid) // _DILATE_BLOCK), items)](
        occupancy, *grid, BLOCK=_DILATE_BLOCK, num_warps=4)


def _occupancy(volume: torch.Tensor, brick: int, occupancy: torch.Tensor) -> torch.Tensor:
    """``occupancy`` (zeroed, :func:`_zeroed_occupancy`; see :class:`MarchedVolume`) made for ``volume (B, C, D,
    H, W)`` by a marking pass (for layouts no packing pass marks) and the dilation: per volume the flag and the
    dilated marks — 1 where the brick or a neighbour holds a non-zero voxel — that the forward's empty space
    skipping walks."""
    b, c, d, h, w = volume.shape
    n_voxels = d * h * w
    with on_device(volume.device):
        kernel_objects().mark_occupied[(-(-n_voxels // _PACK_BLOCK_V), b)](
            volume.detach(), occupancy, n_voxels, h, w, c, *volume.stride(), BLOCK_V=_PACK_BLOCK_V,
            BLOCK_C=next_power_of_two(c), BRICK=brick, num_warps=4)
        _dilate(occupancy, b, brick_grid((d, h, w), brick))
    return occupancy


def marched_volume(volume: torch.Tensor, memory_budget_mib: float, prepared: PreparedVolume | None,
                    config: TritonConfig) -> MarchedVolume:
    """The :class:`MarchedVolume` the forward march kernels read for ``volume`` (see :func:`marched_layout`):
    the one :meth:`TritonBackend.prepare_volume` made when ``prepared`` is for this tensor, else made now."""
    if prepared is not None and _same_tensor(prepared.source, volume):
        return prepared.marched
    return marched_layout(volume, memory_budget_mib, config)[0]


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a`` and ``b`` are the same tensor, or views of the same memory with the same shape, strides and dtype."""
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
                      and a.dtype == b.dtype and a.device == b.device)


def gradient_buffer(volume_shape, acc_dtype: torch.dtype, device: torch.device, memory_budget_mib: float,
                     config: TritonConfig):
    """``(zeroed buffer, VEC, strides, PACK)`` the adjoint kernels scatter into for a ``(B, C, D, H, W)``
    volume: packed corner slots when ``config.adjoint_pack`` applies and the packed buffer fits
    ``memory_budget_mib``, else the channels-last gradient."""
    b, c, d, h, w = volume_shape
    pack = adjoint_pack(config, c, acc_dtype, d * h * w)
    if b * c * d * h * w * pack * torch.finfo(acc_dtype).bits // 8 > memory_budget_mib * 2**20:
        pack = 1
    if pack > 1:  # packed corner slots: (B, D, H, W, C · pack), strides in voxels
        buffer = torch.zeros(b, d, h, w, c * pack, dtype=acc_dtype, device=device)
        return buffer, c * pack, (d * h * w, 1, h * w, w, 1), pack
    buffer = torch.zeros(b, d, h, w, c, dtype=acc_dtype, device=device)
    vec, strides = volume_strides(buffer.permute(0, 4, 1, 2, 3))
    return buffer, vec, strides, 1


def finish_gradient(buffer: torch.Tensor, volume_shape, pack: int, plane: int = 0) -> torch.Tensor:
    """The ``(B, C, D, H, W)`` gradient from the adjoint's scatter buffer: the buffer itself as a channels-last
    view, or, from packed slots (packed across axis ``plane`` for 4 slots), a contiguous tensor summed in one
    kernel pass (the layout of a contiguous volume, so autograd need not copy it into the volume's layout)."""
    b, c, d, h, w = volume_shape
    if pack == 1:
        return buffer.permute(0, 4, 1, 2, 3)
    grad = torch.empty(b, c, d, h, w, dtype=buffer.dtype, device=buffer.device)
    n_voxels = d * h * w
    with on_device(buffer.device):
        kernel_objects().unpack_corners[(-(-n_voxels // _PACK_BLOCK_V), b)](
            buffer, grad, n_voxels, h, w, c, BLOCK_V=_PACK_BLOCK_V, BLOCK_C=next_power_of_two(c), PACK=pack,
            PLANE=plane, num_warps=4)
    return grad


def _corner_slots(want: int, channels: int, item_bytes: int, voxels: int) -> int:
    """Corner slots per channel a packed layout can use: ``want`` (1, 2 or 4) lowered until ``C · slots``
    values fit one 16-byte vector, and 1 (no packing) for a channel count that is not a power of two or when
    one item's slots would exceed 32-bit indexing (``voxels`` per item)."""
    if want == 1 or channels & (channels - 1):
        return 1
    while want > 1 and channels * want * item_bytes > _VECTOR_BYTES:
        want //= 2
    return 1 if channels * want * voxels > INT32_LIMIT else want


def adjoint_pack(config: TritonConfig, channels: int, acc_dtype: torch.dtype, voxels: int = 1) -> int:
    """Corner slots per channel of the packed adjoint (1 = plain scatter; float32 only); see
    ``TritonConfig.adjoint_pack``."""
    slots = _corner_slots(config.adjoint_pack, channels, 4, voxels)
    return slots if acc_dtype == torch.float32 else 1


def forward_pack(volume: torch.Tensor, memory_budget_mib: float, config: TritonConfig) -> int:
    """Corner slots per channel of the volume the forward march reads (1 = the volume itself); see
    ``TritonConfig.forward_pack``. 1 also when the packed copy would exceed ``memory_budget_mib``."""
    slots = _corner_slots(config.forward_pack, volume.shape[1], volume.element_size(), math.prod(volume.shape[2:]))
    return 1 if volume.numel() * slots * volume.element_size() > memory_budget_mib * 2**20 else slots


def pack_corners(volume: torch.Tensor, pack: int, finite_probe: torch.Tensor | None = None,
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
    with on_device(volume.device):
        kernel_objects().pack_corners[(-(-n_voxels // _PACK_BLOCK_V), b)](
            volume, packed, finite_probe if finite_probe is not None else packed,
            occupancy if brick else packed, n_voxels, h, w, *volume.stride(),
            BLOCK_V=_PACK_BLOCK_V, PACK=pack, K=c * pack, CHECK_FINITE=finite_probe is not None,
            BRICK=brick, num_warps=4)
        if brick:
            _dilate(occupancy, b, brick_grid((d, h, w), brick))
    return packed
