"""The forward march kernel: line integrals ``delta · Σ_s trilinear(volume, p_s)`` of a block of rays, from the
volume (any strides, fp16/bf16 read as stored) or its packed corner layout, with empty space skipping."""

from __future__ import annotations

import triton
import triton.language as tl

from xraysyn.projector.empty_space import WALK_MAX_STRIDE, WALK_ROUNDING_VOXELS
from xraysyn.projector.triton.kernels.common import _corner_tiles, _program_rays, _sample_cell

__all__ = ["march_forward_kernel"]


@triton.jit
def _gather(vol, offset, chan_off, mask, ACC: tl.constexpr, VEC: tl.constexpr):
    """Load the ``(BLOCK_R, BLOCK_C)`` channel values at voxel offsets ``(BLOCK_R,)``, converted to ``ACC``.

    Offsets and strides are in units of ``VEC`` elements: with ``VEC = C`` (channels-last, ``C`` a
    power of two) the element offset ``offset * VEC`` is provably aligned, so the ``C`` channels of
    a corner load as one vector instruction.
    """
    return tl.load(vol + (offset * VEC)[:, None] + chan_off, mask=mask, other=0.0).to(ACC)


@triton.jit
def _sample(vol, oz, oy, ox, dz, dy, dx, t0, dt, ns, ray_ok, chan_ok, chan_off, s, size_d, size_h, size_w,
            s_vd, s_vh, s_vw, ACC: tl.constexpr, VEC: tl.constexpr):
    """Trilinear value ``(BLOCK_R, BLOCK_C)`` of sample ``s`` of each ray (0 where ``s >= n_samples``)."""
    iz, fz, iy, fy, ix, fx = _sample_cell(oz, oy, ox, dz, dy, dx, t0, dt, s, size_d, size_h, size_w, ACC)
    live_ray = (s < ns) & ray_ok
    if VEC > 1:
        live = live_ray[:, None]  # BLOCK_C == C: a per-ray mask keeps each corner's vector whole
    else:
        live = live_ray[:, None] & chan_ok[None, :]
    base = iz * s_vd + iy * s_vh + ix * s_vw
    v000 = _gather(vol, base, chan_off, live, ACC, VEC)
    v001 = _gather(vol, base + s_vw, chan_off, live, ACC, VEC)
    v010 = _gather(vol, base + s_vh, chan_off, live, ACC, VEC)
    v011 = _gather(vol, base + s_vh + s_vw, chan_off, live, ACC, VEC)
    v100 = _gather(vol, base + s_vd, chan_off, live, ACC, VEC)
    v101 = _gather(vol, base + s_vd + s_vw, chan_off, live, ACC, VEC)
    v110 = _gather(vol, base + s_vd + s_vh, chan_off, live, ACC, VEC)
    v111 = _gather(vol, base + s_vd + s_vh + s_vw, chan_off, live, ACC, VEC)
    return _trilinear(v000, v001, v010, v011, v100, v101, v110, v111, fz, fy, fx)


@triton.jit
def _trilinear(v000, v001, v010, v011, v100, v101, v110, v111, fz, fy, fx):
    """Trilinear interpolation ``(BLOCK_R, BLOCK_C)`` of a cell's corner values at fractions ``(BLOCK_R,)``."""
    fx2 = fx[:, None]
    fy2 = fy[:, None]
    x00 = v000 + (v001 - v000) * fx2
    x01 = v010 + (v011 - v010) * fx2
    x10 = v100 + (v101 - v100) * fx2
    x11 = v110 + (v111 - v110) * fx2
    y0 = x00 + (x01 - x00) * fy2
    y1 = x10 + (x11 - x10) * fy2
    return y0 + (y1 - y0) * fz[:, None]


@triton.jit
def _sample_packed(vol, oz, oy, ox, dz, dy, dx, t0, dt, ns, ray_ok, kk, s, size_d, size_h, size_w,
                   s_vd, s_vh, ACC: tl.constexpr, PACK: tl.constexpr, K: tl.constexpr):
    """Weighted corner values ``(BLOCK_R, K)`` of sample ``s`` from the packed volume (see :func:`xraysyn.projector.triton.layout.pack_corners`).

    Each voxel of the packed volume holds ``K = C · PACK`` values: slot ``c · PACK + 2 · yo + xo`` is
    channel ``c`` of the neighbour ``(z, y + yo, x + xo)``. A sample reads its cell with ``8 / PACK``
    vector loads of ``K`` values (``PACK = 4``: two, the near and far ``z`` planes) instead of 8; the
    slots of one channel are summed once per ray, after the march.
    """
    iz, fz, iy, fy, ix, fx = _sample_cell(oz, oy, ox, dz, dy, dx, t0, dt, s, size_d, size_h, size_w, ACC)
    live = ((s < ns) & ray_ok)[:, None]
    yo, xo = _corner_tiles(kk, PACK)
    wx = tl.where(xo == 0, 1.0 - fx[:, None], fx[:, None])
    gz = (1.0 - fz)[:, None]
    fz2 = fz[:, None]
    cell = ((iz * s_vd + iy * s_vh + ix) * K)[:, None] + kk[None, :]
    if PACK == 4:
        wyx = tl.where(yo == 0, 1.0 - fy[:, None], fy[:, None]) * wx
        near = tl.load(vol + cell, mask=live, other=0.0).to(ACC)
        far = tl.load(vol + cell + s_vd * K, mask=live, other=0.0).to(ACC)
        return wyx * (gz * near + fz2 * far)
    else:
        gy = (1.0 - fy)[:, None]
        fy2 = fy[:, None]
        q00 = tl.load(vol + cell, mask=live, other=0.0).to(ACC)
        q01 = tl.load(vol + cell + s_vh * K, mask=live, other=0.0).to(ACC)
        q10 = tl.load(vol + cell + s_vd * K, mask=live, other=0.0).to(ACC)
        q11 = tl.load(vol + cell + (s_vd + s_vh) * K, mask=live, other=0.0).to(ACC)
        return wx * (gz * (gy * q00 + fy2 * q01) + fz2 * (gy * q10 + fy2 * q11))


# Empty space skipping (``march_forward_kernel``'s ``BRICK``; the rule and why it is exact:
# :mod:`xraysyn.projector.empty_space`).
_WALK_ROUNDING_VOXELS = tl.constexpr(WALK_ROUNDING_VOXELS)
_WALK_MAX_STRIDE = tl.constexpr(WALK_MAX_STRIDE)


@triton.jit
def _occupied_range(occ_ptr, vidx_ptr, view, oz, oy, ox, dz, dy, dx, t0, dt, ns, n_max, ray_ok, size_d, size_h,
                    size_w, ACC: tl.constexpr, BRICK: tl.constexpr):
    """``(first, end, n_max)``: the samples ``first .. end - 1`` (int32 ``(BLOCK_R,)``) of each ray that may
    have a non-zero trilinear corner, and the block's largest ``end - first``; every other sample's 8 corners
    are zero in every channel, so skipping it leaves the line integral bit-for-bit the same.

    ``occ_ptr``: per volume a flag byte, non-zero when some brick is unmarked, then a ``(⌈D/BRICK⌉,
    ⌈H/BRICK⌉, ⌈W/BRICK⌉)`` uint8 grid, non-zero for a brick with a non-zero voxel or a neighbour that has
    one (``pack_corners_kernel`` / ``mark_occupied_kernel`` and ``dilate_occupancy_kernel``). A volume without
    unmarked bricks has nothing to skip: its rays keep ``0 .. ns - 1`` without a walk. Otherwise the walk looks
    up the brick of the cell of every ``stride``-th sample; ``first`` is the first marked look-up's sample,
    ``end`` one stride after the last (at most ``ns``); no marked look-up: ``first = end = 0``.
    :func:`xraysyn.projector.empty_space.occupied_range` is the same rule in torch, with the argument why no
    non-zero sample is missed."""
    item = tl.load(vidx_ptr + view).to(tl.int64)
    size_bh = (size_h + BRICK - 1) // BRICK
    size_bw = (size_w + BRICK - 1) // BRICK
    occ = occ_ptr + item * (((size_d + BRICK - 1) // BRICK) * size_bh * size_bw + 1)
    first = tl.zeros_like(ns)
    end = ns
    if tl.load(occ) != 0:
        step = dt * tl.maximum(tl.maximum(tl.abs(dz), tl.abs(dy)), tl.abs(dx))  # voxels per sample, largest axis
        reach = BRICK - 1.0 - _WALK_ROUNDING_VOXELS
        stride = (reach / tl.maximum(step, reach / _WALK_MAX_STRIDE)).to(tl.int32) + 1
        walks = tl.where(ray_ok, (ns + stride - 1) // stride, 0)
        none = tl.zeros_like(ns) - 1
        first_walk = none
        last_walk = none
        for j in range(tl.max(walks, axis=0)):
            iz, _, iy, _, ix, _ = _sample_cell(oz, oy, ox, dz, dy, dx, t0, dt, j * stride, size_d, size_h, size_w,
                                               ACC)
            brick = ((iz // BRICK) * size_bh + iy // BRICK) * size_bw + ix // BRICK
            marked = tl.load(occ + 1 + brick, mask=j < walks, other=0) != 0
            first_walk = tl.where(marked & (first_walk < 0), j, first_walk)
            last_walk = tl.where(marked, j, last_walk)
        found = first_walk >= 0
        first = tl.where(found, first_walk * stride, 0)
        end = tl.where(found, tl.minimum(ns, (last_walk + 1) * stride), 0)
        n_max = tl.max(end - first, axis=0)
    return first, end, n_max


@triton.jit
def _integrate(vol, oz, oy, ox, dz, dy, dx, t0, dt, first, ns, n_max, ray_ok, chan, chan_ok, size_d, size_h,
               size_w, s_vc, s_vd, s_vh, s_vw, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
               VEC: tl.constexpr, UNROLL: tl.constexpr, PACK: tl.constexpr):
    """Line integrals ``(BLOCK_R, BLOCK_C)`` (voxel value × mm) of a block of rays through one volume ``vol``:
    the packed layout (``PACK > 1``) or 8 loads per sample.

    Each ray marches its samples ``first .. ns - 1`` (``first``: 0, or per ray from :func:`_occupied_range`,
    whose skipped samples add exact zeros), ``n_max`` (the block's largest ``ns - first``) loop iterations."""
    if VEC > 1 and PACK == 1:
        chan_off = chan[None, :]  # channel stride 1 (the host's condition for VEC > 1)
    else:
        chan_off = (chan * s_vc)[None, :]
    if PACK > 1:
        kk = tl.arange(0, BLOCK_C * PACK)
        slots = tl.zeros([BLOCK_R, BLOCK_C * PACK], dtype=ACC)
        for s0 in range(0, n_max, UNROLL):
            for u in tl.static_range(UNROLL):
                slots += _sample_packed(vol, oz, oy, ox, dz, dy, dx, t0, dt, ns, ray_ok, kk, first + s0 + u,
                                        size_d, size_h, size_w, s_vd, s_vh, ACC, PACK, BLOCK_C * PACK)
        acc = tl.sum(tl.reshape(slots, [BLOCK_R, BLOCK_C, PACK]), axis=2)
    else:
        acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=ACC)
        for s0 in range(0, n_max, UNROLL):  # UNROLL samples per iteration: more independent gathers in flight
            for u in tl.static_range(UNROLL):
                acc += _sample(vol, oz, oy, ox, dz, dy, dx, t0, dt, ns, ray_ok, chan_ok, chan_off, first + s0 + u,
                               size_d, size_h, size_w, s_vd, s_vh, s_vw, ACC, VEC)
    return acc * dt[:, None]


@triton.jit
def march_forward_kernel(
    vol_ptr, occ_ptr, out_ptr, origin_ptr, dir_ptr, tnear_ptr, delta_ptr, nsamp_ptr, vidx_ptr,
    n_rays, width, size_d, size_h, size_w, n_channels,
    s_vb, s_vc, s_vd, s_vh, s_vw,
    s_on, s_oa,
    s_dn, s_dr, s_da,
    s_tn, s_tr,
    s_en, s_er,
    s_nn, s_nr,
    s_gn, s_gr, s_gc,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr, VEC: tl.constexpr, TILE_W: tl.constexpr,
    UNROLL: tl.constexpr, PACK: tl.constexpr = 1, BRICK: tl.constexpr = 0,
):
    """``out[n, r, c] = delta * Σ_s trilinear(volume[volume_index[n], c], p_s)`` for one block of rays.

    ``PACK = 1``: ``vol_ptr`` is the volume (any strides; ``VEC`` as in :func:`_gather`). ``PACK = 2`` or
    ``4``: it is the packed ``(B, D, H, W, C · PACK)`` layout of :func:`_sample_packed` (``BLOCK_C == C``,
    ``VEC = C · PACK``, strides in voxels), read with ``8 / PACK`` vector loads per sample.

    ``BRICK > 0``: empty space skipping: ``occ_ptr`` holds per volume a flag and the dilated brick occupancy
    (uint8, see :func:`_occupied_range`), and each ray marches only the samples it may find non-zero (the same
    sums: the others add exact zeros). ``BRICK = 0``: unused.
    """
    view, rays, ray_ok, chan, chan_ok, vol, oz, oy, ox, dz, dy, dx, t0, dt, ns, n_max = _program_rays(
        vol_ptr, origin_ptr, dir_ptr, tnear_ptr, delta_ptr, nsamp_ptr, vidx_ptr, n_rays, width, n_channels, s_vb,
        s_on, s_oa, s_dn, s_dr, s_da, s_tn, s_tr, s_en, s_er, s_nn, s_nr, BLOCK_R, BLOCK_C, ACC, VEC, TILE_W)
    if BRICK > 0:
        first, ns, n_max = _occupied_range(occ_ptr, vidx_ptr, view, oz, oy, ox, dz, dy, dx, t0, dt, ns, n_max,
                                           ray_ok, size_d, size_h, size_w, ACC, BRICK)
    else:
        first = 0
    acc = _integrate(vol, oz, oy, ox, dz, dy, dx, t0, dt, first, ns, n_max, ray_ok, chan, chan_ok, size_d, size_h,
                     size_w, s_vc, s_vd, s_vh, s_vw, BLOCK_R, BLOCK_C, ACC, VEC, UNROLL, PACK)
    out = out_ptr + view * s_gn + (rays * s_gr)[:, None] + (chan * s_gc)[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=ray_ok[:, None] & chan_ok[None, :])
