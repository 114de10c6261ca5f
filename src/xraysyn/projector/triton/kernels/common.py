"""Jit helpers every march and set-up kernel shares: the sampling model of :mod:`xraysyn.projector.rays` (cell
and fraction of a midpoint sample), the ray blocks and 2-D detector tiles a program takes, the packed corner
slots' neighbour offsets, and the box slabs and detector numbers of the ray set-up and BP."""

from __future__ import annotations

import triton
import triton.language as tl



@triton.jit
def _cell(p, size, ACC: tl.constexpr):
    """Clamp a voxel coordinate to ``[0, size - 1]``; return ``(cell index int32, fraction)``."""
    upper = (size - 1).to(ACC)
    pc = tl.minimum(tl.maximum(p, 0.0), upper)
    idx = tl.minimum(pc.to(tl.int32), size - 2)  # pc >= 0, so truncation is floor
    return idx, pc - idx.to(ACC)


@triton.jit
def _sample_cell(oz, oy, ox, dz, dy, dx, t0, dt, s, size_d, size_h, size_w, ACC: tl.constexpr):
    """Cell indices and fractions ``(iz, fz, iy, fy, ix, fx)`` of midpoint sample ``s`` of a block of rays."""
    t = t0 + (s + 0.5) * dt
    iz, fz = _cell(oz + t * dz, size_d, ACC)
    iy, fy = _cell(oy + t * dy, size_h, ACC)
    ix, fx = _cell(ox + t * dx, size_w, ACC)
    return iz, fz, iy, fy, ix, fx


@triton.jit
def _ray_block(tile, n_rays, width, BLOCK_R: tl.constexpr, TILE_W: tl.constexpr):
    """Ray indices ``(BLOCK_R,)`` of ray block ``tile`` of a view and their validity mask.

    ``TILE_W = 0``: ``BLOCK_R`` consecutive rays. Otherwise rays are read as a raster of rows of
    ``width`` (the detector columns) and each program takes a ``(BLOCK_R // TILE_W) × TILE_W``
    tile of it, so that neighbouring lanes march neighbouring rays in 2-D and share cache lines
    of the volume. Either way the blocks cover each ray index in ``[0, n_rays)`` exactly once.
    """
    lane = tl.arange(0, BLOCK_R)
    if TILE_W == 0:
        rays = tile * BLOCK_R + lane
        ok = rays < n_rays
    else:
        tiles_per_row = (width + TILE_W - 1) // TILE_W
        tile_row = tile // tiles_per_row
        row = tile_row * (BLOCK_R // TILE_W) + lane // TILE_W
        col = (tile - tile_row * tiles_per_row) * TILE_W + lane % TILE_W
        rays = row * width + col
        ok = (col < width) & (rays < n_rays)
    return rays, ok


@triton.jit
def _load_rays(origin_ptr, dir_ptr, tnear_ptr, delta_ptr, nsamp_ptr, view, rays, ray_ok,
               s_on, s_oa, s_dn, s_dr, s_da, s_tn, s_tr, s_en, s_er, s_nn, s_nr, ACC: tl.constexpr):
    """Source (voxel coords), per-mm directions, entry distances, steps and sample counts of a ray block."""
    oz = tl.load(origin_ptr + view * s_on).to(ACC)
    oy = tl.load(origin_ptr + view * s_on + s_oa).to(ACC)
    ox = tl.load(origin_ptr + view * s_on + 2 * s_oa).to(ACC)
    dir_row = dir_ptr + view * s_dn + rays * s_dr
    dz = tl.load(dir_row, mask=ray_ok, other=0.0).to(ACC)
    dy = tl.load(dir_row + s_da, mask=ray_ok, other=0.0).to(ACC)
    dx = tl.load(dir_row + 2 * s_da, mask=ray_ok, other=0.0).to(ACC)
    t0 = tl.load(tnear_ptr + view * s_tn + rays * s_tr, mask=ray_ok, other=0.0).to(ACC)
    dt = tl.load(delta_ptr + view * s_en + rays * s_er, mask=ray_ok, other=0.0).to(ACC)
    ns = tl.load(nsamp_ptr + view * s_nn + rays * s_nr, mask=ray_ok, other=0)
    return oz, oy, ox, dz, dy, dx, t0, dt, ns


@triton.jit
def _program_rays(base_ptr, origin_ptr, dir_ptr, tnear_ptr, delta_ptr, nsamp_ptr, vidx_ptr, n_rays, width, n_channels,
                  s_vb, s_on, s_oa, s_dn, s_dr, s_da, s_tn, s_tr, s_en, s_er, s_nn, s_nr,
                  BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr, VEC: tl.constexpr,
                  TILE_W: tl.constexpr):
    """What every march kernel starts with: this program's view, rays and channels, the pointer to its
    item's volume (or gradient) and the rays' parameters, and the largest sample count among them."""
    view = tl.program_id(1)
    rays, ray_ok = _ray_block(tl.program_id(0), n_rays, width, BLOCK_R, TILE_W)
    chan = tl.arange(0, BLOCK_C)
    chan_ok = chan < n_channels
    item = tl.load(vidx_ptr + view).to(tl.int64)
    base = base_ptr + item * s_vb * VEC
    oz, oy, ox, dz, dy, dx, t0, dt, ns = _load_rays(
        origin_ptr, dir_ptr, tnear_ptr, delta_ptr, nsamp_ptr, view, rays, ray_ok,
        s_on, s_oa, s_dn, s_dr, s_da, s_tn, s_tr, s_en, s_er, s_nn, s_nr, ACC)
    return view, rays, ray_ok, chan, chan_ok, base, oz, oy, ox, dz, dy, dx, t0, dt, ns, tl.max(ns, axis=0)


@triton.jit
def _voxel_indices(vox, size_h, size_w):
    """``(z, y, x)`` of flat voxel indices of a ``(D, H, W)`` grid."""
    plane = size_h * size_w
    z = vox // plane
    rest = vox - z * plane
    y = rest // size_w
    return z, y, rest - y * size_w


@triton.jit
def _corner_tiles(kk, PACK: tl.constexpr):
    """Which neighbour ``(yo, xo)`` each packed slot ``kk`` holds, as ``(1, K)`` rows (``yo = 0`` for ``PACK = 2``)."""
    xo = (kk % 2)[None, :]
    if PACK == 4:
        yo = ((kk // 2) % 2)[None, :]
    else:
        yo = tl.zeros_like(xo)
    return yo, xo


@triton.jit
def _slab(o, d, size, tiny):
    """Entry and exit ``t`` of the ray ``o + t d`` through the slab ``[-0.5, size - 0.5]`` (as rays.clip_to_box)."""
    safe = tl.where(tl.abs(d) < tiny, tiny, d)
    t1 = (-0.5 - o) / safe
    t2 = (size.to(o.dtype) - 0.5 - o) / safe
    return tl.minimum(t1, t2), tl.maximum(t1, t2)


@triton.jit
def _detector(ptr, ACC: tl.constexpr):
    """``(sdd mm, principal row, principal col, row spacing mm, col spacing mm, tiny)`` stored at ``ptr``."""
    return (tl.load(ptr + 0).to(ACC), tl.load(ptr + 1).to(ACC), tl.load(ptr + 2).to(ACC),
            tl.load(ptr + 3).to(ACC), tl.load(ptr + 4).to(ACC), tl.load(ptr + 5).to(ACC))
