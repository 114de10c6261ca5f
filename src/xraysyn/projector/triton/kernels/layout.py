"""Kernels of the volume layouts the marches read and write: packing corner slots (with the fused NaN/inf scan
and empty space skipping's brick marks), summing the adjoint's slots back, marking occupied bricks of an
unpacked volume, and dilating the marks."""

from __future__ import annotations

import triton
import triton.language as tl

from xraysyn.projector.triton.kernels.common import _corner_tiles, _voxel_indices

__all__ = ["pack_corners_kernel", "unpack_corners_kernel", "mark_occupied_kernel", "dilate_occupancy_kernel"]


# Largest finite float32: a value above it in magnitude (after conversion to float32) is inf.
_FLOAT32_MAX = tl.constexpr(3.4028234663852886e38)


@triton.jit
def pack_corners_kernel(src_ptr, dst_ptr, probe_ptr, occ_ptr, n_voxels, size_h, size_w, s_b, s_c, s_d, s_h, s_w,
                        BLOCK_V: tl.constexpr, PACK: tl.constexpr, K: tl.constexpr, CHECK_FINITE: tl.constexpr,
                        BRICK: tl.constexpr = 0):
    """The packed-corner layout of :func:`.march._sample_packed` in one pass: ``dst (B, D, H, W, K)``, slot
    ``c · PACK + 2 · yo + xo`` of voxel ``(z, y, x)`` = ``src[b, c, z, y + yo, x + xo]`` (indices clamped to
    the last row / column, which is never a cell's base). ``src`` has any strides (in elements); each
    voxel's ``K`` slots are written as one vector store.

    ``CHECK_FINITE``: also the volume's NaN/inf scan, for free in the same pass — a program that read a
    non-finite value writes +inf to ``probe_ptr[0]`` (float32, zeroed by the caller; every voxel is read
    as slot 0 of itself, and only voxels of the volume are read), so the probe stays finite exactly when
    the volume is. One plain store per offending program, no atomics.

    ``BRICK > 0``: also marks, in ``occ_ptr`` (zeroed by the caller), the bricks holding a non-zero voxel
    (:func:`_mark_bricks`), for the empty space skipping of the forward march."""
    item = tl.program_id(1).to(tl.int64)
    vox = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
    ok = vox < n_voxels
    z, y, x = _voxel_indices(vox, size_h, size_w)
    kk = tl.arange(0, K)
    yo, xo = _corner_tiles(kk, PACK)
    yy = tl.minimum(y[:, None] + yo, size_h - 1)
    xx = tl.minimum(x[:, None] + xo, size_w - 1)
    src = src_ptr + item * s_b + ((kk // PACK) * s_c)[None, :] + (z * s_d)[:, None] + yy * s_h + xx * s_w
    values = tl.load(src, mask=ok[:, None], other=0.0)
    dst = dst_ptr + (item * n_voxels + vox)[:, None] * K + kk[None, :]
    tl.store(dst, values, mask=ok[:, None])
    if CHECK_FINITE:
        v = values.to(tl.float32)  # fp16 / bf16 inf stays inf
        bad = ((v != v) | (tl.abs(v) > _FLOAT32_MAX)).to(tl.int32)  # noqa: PLR0124 (v != v: NaN)
        any_bad = tl.max(tl.max(bad, axis=1), axis=0)
        tl.store(probe_ptr, float("inf"), mask=any_bad > 0)
    if BRICK > 0:  # the voxel's own slots (xo = yo = 0) of every channel
        own = ((kk % PACK) == 0)[None, :]
        nonzero = tl.max(tl.where(own & (values != 0), 1, 0), axis=1) > 0
        _mark_bricks(occ_ptr, item, z, y, x, nonzero & ok, n_voxels // (size_h * size_w), size_h, size_w, BRICK)


@triton.jit
def _voxel_block(n_voxels, size_h, size_w, n_channels, BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr):
    """What a pass over voxels starts with (grid ``(voxel blocks, items)``): the item, this program's
    ``BLOCK_V`` flat voxel indices and their ``(z, y, x)``, the channels, and the ``(BLOCK_V, BLOCK_C)`` mask of
    voxels and channels that exist."""
    item = tl.program_id(1).to(tl.int64)
    vox = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
    z, y, x = _voxel_indices(vox, size_h, size_w)
    chan = tl.arange(0, BLOCK_C)
    both = (vox < n_voxels)[:, None] & (chan < n_channels)[None, :]
    return item, vox, z, y, x, chan, both


@triton.jit
def unpack_corners_kernel(src_ptr, dst_ptr, n_voxels, size_h, size_w, n_channels,
                          BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr, PACK: tl.constexpr, PLANE: tl.constexpr = 0):
    """The gradient from the packed adjoint's slots, one pass: ``dst (B, C, D, H, W)`` contiguous, voxel
    ``p`` = slot ``2 · uo + vo`` of voxel ``p − uo · e_u − vo · e_v`` summed over the slots that exist
    (``src (B, D, H, W, C · PACK)``, slot ``c · PACK + 2 · uo + vo``; ``PACK = 2``: ``v = x``, ``uo = 0``;
    ``PACK = 4``: ``(u, v)`` the two axes other than ``PLANE`` in ``(z, y, x)`` order, see
    :func:`.adjoint._scatter_cell_packed`)."""
    item, vox, z, y, x, chan, both = _voxel_block(n_voxels, size_h, size_w, n_channels, BLOCK_V, BLOCK_C)
    k = n_channels * PACK
    slots = src_ptr + item * n_voxels * k + (chan * PACK)[None, :]
    here = (vox * k)[:, None]
    if PACK == 4 and PLANE == 1:
        u_ok, v_ok, u_step, v_step = z >= 1, x >= 1, size_h * size_w, 1
    elif PACK == 4 and PLANE == 2:
        u_ok, v_ok, u_step, v_step = z >= 1, y >= 1, size_h * size_w, size_w
    else:
        u_ok, v_ok, u_step, v_step = y >= 1, x >= 1, size_w, 1
    total = tl.load(slots + here, mask=both, other=0.0)
    total += tl.load(slots + here - v_step * k + 1, mask=both & v_ok[:, None], other=0.0)
    if PACK == 4:
        total += tl.load(slots + here - u_step * k + 2, mask=both & u_ok[:, None], other=0.0)
        total += tl.load(slots + here - (u_step + v_step) * k + 3, mask=both & (u_ok & v_ok)[:, None], other=0.0)
    dst = dst_ptr + item * n_channels * n_voxels + (chan * n_voxels)[None, :] + vox[:, None]
    tl.store(dst, total, mask=both)


@triton.jit
def _mark_bricks(occ_ptr, item, z, y, x, nonzero, size_d, size_h, size_w, BRICK: tl.constexpr):
    """Store 1 at the brick ``(z, y, x) // BRICK`` of item ``item`` in the marks for each voxel with
    ``nonzero``. ``occ_ptr``: the uint8 buffer of :func:`.march._occupied_range` — per item a flag byte and the
    dilated grid — followed by the marks, per item a ``(⌈D/BRICK⌉, ⌈H/BRICK⌉, ⌈W/BRICK⌉)`` grid (zeroed by
    the caller); the items are the launch grid's second axis. Many voxels store the same value to one
    brick: plain stores, no atomics needed."""
    size_bh = (size_h + BRICK - 1) // BRICK
    size_bw = (size_w + BRICK - 1) // BRICK
    per_item = ((size_d + BRICK - 1) // BRICK) * size_bh * size_bw
    marks = occ_ptr + tl.num_programs(1).to(tl.int64) * (per_item + 1) + item * per_item
    brick = ((z // BRICK) * size_bh + y // BRICK) * size_bw + x // BRICK
    tl.store(marks + brick, tl.full(brick.shape, 1, tl.uint8), mask=nonzero)


@triton.jit
def mark_occupied_kernel(src_ptr, occ_ptr, n_voxels, size_h, size_w, n_channels, s_b, s_c, s_d, s_h, s_w,
                         BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr, BRICK: tl.constexpr):
    """The brick marking of ``pack_corners_kernel`` on its own, for volumes the forward reads unpacked:
    ``src (B, C, D, H, W)`` with any strides (elements), ``occ_ptr`` as in :func:`_mark_bricks`."""
    item, vox, z, y, x, chan, both = _voxel_block(n_voxels, size_h, size_w, n_channels, BLOCK_V, BLOCK_C)
    src = src_ptr + item * s_b + (chan * s_c)[None, :] + (z * s_d + y * s_h + x * s_w)[:, None]
    values = tl.load(src, mask=both, other=0.0)
    nonzero = tl.max(tl.where(both & (values != 0), 1, 0), axis=1) > 0
    _mark_bricks(occ_ptr, item, z, y, x, nonzero, n_voxels // (size_h * size_w), size_h, size_w, BRICK)


@triton.jit
def dilate_occupancy_kernel(occ_ptr, size_bd, size_bh, size_bw, BLOCK: tl.constexpr):
    """The grid :func:`.march._occupied_range` walks, from the marks (``occ_ptr`` as in :func:`_mark_bricks`; the launch
    grid's second axis the items): per item ``(size_bd, size_bh, size_bw)`` bricks set to 1 where the brick or
    any of its 26 neighbours is marked, and the item's flag byte (zeroed by the caller) set to 1 when some
    brick is not (plain stores of the same value, no atomics)."""
    item = tl.program_id(1).to(tl.int64)
    per_item = size_bd * size_bh * size_bw
    brick = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = brick < per_item
    bz, by, bx = _voxel_indices(brick, size_bh, size_bw)
    src = occ_ptr + tl.num_programs(1).to(tl.int64) * (per_item + 1) + item * per_item
    marked = tl.zeros([BLOCK], dtype=tl.int32)
    for oz in tl.static_range(3):
        nz = bz + (oz - 1)
        for oy in tl.static_range(3):
            ny = by + (oy - 1)
            for ox in tl.static_range(3):
                nx = bx + (ox - 1)
                inside = ok & (nz >= 0) & (nz < size_bd) & (ny >= 0) & (ny < size_bh) & (nx >= 0) & (nx < size_bw)
                here = tl.load(src + (nz * size_bh + ny) * size_bw + nx, mask=inside, other=0)
                marked = tl.maximum(marked, here.to(tl.int32))
    dst = occ_ptr + item * (per_item + 1)
    tl.store(dst + 1 + brick, (marked > 0).to(tl.uint8), mask=ok)
    some_unmarked = tl.max((ok & (marked == 0)).to(tl.int32), axis=0)
    tl.store(dst, tl.full([], 1, tl.uint8), mask=some_unmarked > 0)
