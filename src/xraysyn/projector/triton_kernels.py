"""Triton kernels of the ray march (forward line integrals and their exact adjoint).

Importing this module needs ``triton``; :mod:`xraysyn.projector.triton_backend` imports it lazily
and is the only caller. The kernels implement exactly the sampling model of
:mod:`xraysyn.projector.rays`:

* sample ``s < n_samples`` at ``t = t_near + (s + 0.5) * delta`` mm, position
  ``p = origin + t * direction`` in voxel index coordinates ``(i, j, k) = (z, y, x)``;
* ``p`` clamped to ``[0, n - 1]`` per axis, cell ``floor(p)`` clamped to ``n - 2``, trilinear
  weights from the fractions; each sample contributes ``value * delta``.

Organisation (see ``benchmarks/gpu_kernels.md``):

* grid ``(programs per view, N)``: one program marches ``BLOCK_R`` neighbouring detector pixels of
  one view (a 2-D tile of the detector when its width is known, else a run of a row), all ``C`` channels at once (a ``(BLOCK_R, BLOCK_C)`` register tile), up to the largest
  ``n_samples`` of its rays with per-ray masks. Nothing per sample is stored: extra memory is the
  output only, O(rays).
* The volume is addressed through its element strides, so channels-first, channels-last (one
  cache line per trilinear corner for small ``C``) and non-contiguous views all work; fp16/bf16
  volumes are read as stored and converted to the accumulator type in registers.
* The adjoint (``MERGE_RUNS=True``) accumulates the 8 trilinear weights of consecutive samples
  of a ray that fall in the same cell in registers and issues the ``8 * C`` atomic adds only when
  the ray leaves the cell (and once at the end). This is the same sum, reassociated, so it stays
  the exact transpose; it removes the atomics of every sample after the first in a cell
  (≈ half of them at the default half-voxel step). ``MERGE_RUNS=False`` is the naive
  per-sample scatter, kept for benchmarking and as a second check.
"""

from __future__ import annotations

import triton
import triton.language as tl

from xraysyn.projector.empty_space import WALK_MAX_STRIDE, WALK_ROUNDING_VOXELS

__all__ = ["backproject_gather_kernel", "dilate_occupancy_kernel", "march_adjoint_kernel", "march_forward_kernel",
           "mark_occupied_kernel", "pack_corners_kernel", "ray_setup_kernel", "unpack_corners_kernel"]

# Largest finite float32: a value above it in magnitude (after conversion to float32) is inf.
_FLOAT32_MAX = tl.constexpr(3.4028234663852886e38)


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
def _tiles_per_view(n_rays, width, BLOCK_R: tl.constexpr, TILE_W: tl.constexpr):
    """Programs one view's rays take (``triton_backend._programs`` on the host)."""
    if TILE_W == 0:
        tiles = (n_rays + BLOCK_R - 1) // BLOCK_R
    else:
        rows = (n_rays + width - 1) // width
        tiles = ((width + TILE_W - 1) // TILE_W) * ((rows + BLOCK_R // TILE_W - 1) // (BLOCK_R // TILE_W))
    return tiles


@triton.jit
def _tile_and_view(n_rays, width, BLOCK_R: tl.constexpr, TILE_W: tl.constexpr):
    """``(tile, view)`` of this program. The grid is ``(tiles per view × G, views / G)``, launched in order of
    its first index: consecutive programs take one tile in each of ``G`` consecutive views (the views of one
    volume, whose rays through the same tile of the detector cross the same slab of it), then the next
    tile. ``G = 1``: every tile of one view, then the next view."""
    tiles = _tiles_per_view(n_rays, width, BLOCK_R, TILE_W)
    group = tl.num_programs(0) // tiles
    pid = tl.program_id(0)
    tile = pid // group
    return tile, tl.program_id(1) * group + (pid - tile * group)


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
    tile, view = _tile_and_view(n_rays, width, BLOCK_R, TILE_W)
    rays, ray_ok = _ray_block(tile, n_rays, width, BLOCK_R, TILE_W)
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
def _reload(vol, offset, need, old, chan_off, chan_ok, ACC: tl.constexpr, VEC: tl.constexpr):
    """Corner values at voxel ``offset`` for the rays where ``need`` is true (only those issue a load); ``old``
    for the others."""
    if VEC > 1:
        mask = need[:, None]
    else:
        mask = need[:, None] & chan_ok[None, :]
    return tl.where(need[:, None], _gather(vol, offset, chan_off, mask, ACC, VEC), old)


@triton.jit
def _kept(step, can):
    """Whether a cell's corners 0 and 1 along one axis are also corners of the next cell, ``step`` cells on."""
    return can & ((step == 0) | (step == -1)), can & ((step == 0) | (step == 1))


@triton.jit
def _available(step, can):
    """Whether the next cell's corners 0 and 1 along one axis were corners of the previous cell (``step`` away)."""
    return can & ((step == 0) | (step == 1)), can & ((step == 0) | (step == -1))


@triton.jit
def _carry(lo, hi, step, zero):
    """Accumulators of corners 0 / 1 along one axis once the cell moved ``step`` cells: a shared corner keeps
    its sum (corner 1 becomes corner 0 for ``step = 1`` and vice versa), the others restart from zero."""
    return (tl.where(step == 0, lo, tl.where(step == 1, hi, zero)),
            tl.where(step == 0, hi, tl.where(step == -1, lo, zero)))


@triton.jit
def _cell_step(moved, can, delta):
    """Cells moved along one axis for :func:`_carry`: 0 while in the same cell, ``delta`` after a step whose
    corners can be shared, 2 (nothing shared) otherwise (the first sample, or after the last)."""
    return tl.where(moved, tl.where(can, delta, 2), 0)


@triton.jit
def _carry_cell(c000, c001, c010, c011, c100, c101, c110, c111, step_z, step_y, step_x, zero):
    """The 8 per-corner values of a cell after it moved ``(step_z, step_y, step_x)``: :func:`_carry` per axis."""
    c000, c001, c010, c011, c100, c101, c110, c111 = _carry_plane(c000, c001, c010, c011, c100, c101, c110, c111,
                                                                  step_z, zero, 0)
    c000, c001, c010, c011, c100, c101, c110, c111 = _carry_plane(c000, c001, c010, c011, c100, c101, c110, c111,
                                                                  step_y, zero, 1)
    return _carry_plane(c000, c001, c010, c011, c100, c101, c110, c111, step_x, zero, 2)


@triton.jit
def _plane_quads(c000, c001, c010, c011, c100, c101, c110, c111, PLANE: tl.constexpr):
    """A cell's 8 per-corner values as two quads across the ``PLANE`` axis (0 = z, 1 = y, 2 = x): the near
    corners (index 0 along it), then the far ones, each ordered ``(00, 01, 10, 11)`` by the other two axes
    ``(u, v)`` in ``(z, y, x)`` order."""
    if PLANE == 0:
        return c000, c001, c010, c011, c100, c101, c110, c111
    elif PLANE == 1:
        return c000, c001, c100, c101, c010, c011, c110, c111
    else:
        return c000, c010, c100, c110, c001, c011, c101, c111


@triton.jit
def _plane_masks(near, far, PLANE: tl.constexpr):
    """Per corner ``abc`` (in ``(z, y, x)`` order): ``near`` for the corners with index 0 along ``PLANE``,
    ``far`` for the others."""
    if PLANE == 0:
        return near, near, near, near, far, far, far, far
    elif PLANE == 1:
        return near, near, far, far, near, near, far, far
    else:
        return near, far, near, far, near, far, near, far


@triton.jit
def _plane_step(step_z, step_y, step_x, can, PLANE: tl.constexpr):
    """``(up, down)``: where the ray moved exactly one cell forwards / backwards along ``PLANE`` and none
    along the other axes (rows where ``can``): the new cell then shares one plane of corners."""
    if PLANE == 0:
        along, rest = step_z, (step_y == 0) & (step_x == 0)
    elif PLANE == 1:
        along, rest = step_y, (step_z == 0) & (step_x == 0)
    else:
        along, rest = step_x, (step_z == 0) & (step_y == 0)
    straight = can & rest
    return straight & (along == 1), straight & (along == -1)


@triton.jit
def _carry_plane(c000, c001, c010, c011, c100, c101, c110, c111, step, zero, PLANE: tl.constexpr):
    """The 8 per-corner values after the cell moved ``step`` along ``PLANE`` only (:func:`_carry` on each
    pair of corners across that axis; ``step = 2``: nothing shared)."""
    if PLANE == 0:
        c000, c100 = _carry(c000, c100, step, zero)
        c001, c101 = _carry(c001, c101, step, zero)
        c010, c110 = _carry(c010, c110, step, zero)
        c011, c111 = _carry(c011, c111, step, zero)
    elif PLANE == 1:
        c000, c010 = _carry(c000, c010, step, zero)
        c001, c011 = _carry(c001, c011, step, zero)
        c100, c110 = _carry(c100, c110, step, zero)
        c101, c111 = _carry(c101, c111, step, zero)
    else:
        c000, c001 = _carry(c000, c001, step, zero)
        c010, c011 = _carry(c010, c011, step, zero)
        c100, c101 = _carry(c100, c101, step, zero)
        c110, c111 = _carry(c110, c111, step, zero)
    return c000, c001, c010, c011, c100, c101, c110, c111


@triton.jit
def _corner_masks(rows, z0, z1, y0, y1, x0, x1):
    """Per corner ``abc``: ``rows`` and not (``z_a & y_b & x_c``), i.e. the rows where corner ``abc`` is not
    shared with the neighbouring cell (the per-axis flags come from :func:`_kept` or :func:`_available`)."""
    return (rows & ~(z0 & y0 & x0), rows & ~(z0 & y0 & x1), rows & ~(z0 & y1 & x0), rows & ~(z0 & y1 & x1),
            rows & ~(z1 & y0 & x0), rows & ~(z1 & y0 & x1), rows & ~(z1 & y1 & x0), rows & ~(z1 & y1 & x1))


@triton.jit
def _integrate_reusing(vol, oz, oy, ox, dz, dy, dx, t0, dt, ns, n_max, ray_ok, chan_ok, chan_off, size_d, size_h,
                       size_w, s_vd, s_vh, s_vw, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
                       VEC: tl.constexpr, UNROLL: tl.constexpr):
    """Line integrals of a block of rays keeping each ray's current cell corners in registers: a sample in the
    same cell as the previous one loads nothing, a step into a neighbouring cell loads only the corners it
    does not share (4 of 8 for a step along one axis). Same values and arithmetic as :func:`_sample`."""
    zero = tl.zeros([BLOCK_R, BLOCK_C], dtype=ACC)
    v000 = zero
    v001 = zero
    v010 = zero
    v011 = zero
    v100 = zero
    v101 = zero
    v110 = zero
    v111 = zero
    acc = zero
    prev = tl.full([BLOCK_R], -1, dtype=tl.int32)  # offset of the cell whose corners are held, -1 = none
    pz = tl.zeros([BLOCK_R], dtype=tl.int32)
    py = tl.zeros([BLOCK_R], dtype=tl.int32)
    px = tl.zeros([BLOCK_R], dtype=tl.int32)
    for s0 in range(0, n_max, UNROLL):
        for u in tl.static_range(UNROLL):
            iz, fz, iy, fy, ix, fx = _sample_cell(oz, oy, ox, dz, dy, dx, t0, dt, s0 + u, size_d, size_h, size_w, ACC)
            live = (s0 + u < ns) & ray_ok
            cell = iz * s_vd + iy * s_vh + ix * s_vw
            changed = live & (cell != prev)
            can = changed & (prev >= 0)
            kz0, kz1 = _available(iz - pz, can)
            ky0, ky1 = _available(iy - py, can)
            kx0, kx1 = _available(ix - px, can)
            v000, v001, v010, v011, v100, v101, v110, v111 = _carry_cell(
                v000, v001, v010, v011, v100, v101, v110, v111, _cell_step(changed, can, iz - pz)[:, None],
                _cell_step(changed, can, iy - py)[:, None], _cell_step(changed, can, ix - px)[:, None], zero)
            n000, n001, n010, n011, n100, n101, n110, n111 = _corner_masks(changed, kz0, kz1, ky0, ky1, kx0, kx1)
            v000 = _reload(vol, cell, n000, v000, chan_off, chan_ok, ACC, VEC)
            v001 = _reload(vol, cell + s_vw, n001, v001, chan_off, chan_ok, ACC, VEC)
            v010 = _reload(vol, cell + s_vh, n010, v010, chan_off, chan_ok, ACC, VEC)
            v011 = _reload(vol, cell + s_vh + s_vw, n011, v011, chan_off, chan_ok, ACC, VEC)
            v100 = _reload(vol, cell + s_vd, n100, v100, chan_off, chan_ok, ACC, VEC)
            v101 = _reload(vol, cell + s_vd + s_vw, n101, v101, chan_off, chan_ok, ACC, VEC)
            v110 = _reload(vol, cell + s_vd + s_vh, n110, v110, chan_off, chan_ok, ACC, VEC)
            v111 = _reload(vol, cell + s_vd + s_vh + s_vw, n111, v111, chan_off, chan_ok, ACC, VEC)
            value = _trilinear(v000, v001, v010, v011, v100, v101, v110, v111, fz, fy, fx)
            acc += tl.where(live[:, None], value, zero)
            prev = tl.where(live, cell, prev)
            pz = tl.where(live, iz, pz)
            py = tl.where(live, iy, py)
            px = tl.where(live, ix, px)
    return acc


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
def _sample_packed(vol, oz, oy, ox, dz, dy, dx, t0, dt, ns, ray_ok, kk, s, size_d, size_h, size_w,
                   s_vd, s_vh, ACC: tl.constexpr, PACK: tl.constexpr, K: tl.constexpr):
    """Weighted corner values ``(BLOCK_R, K)`` of sample ``s`` from the packed volume (see ``triton_backend._pack_corners``).

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
               VEC: tl.constexpr, UNROLL: tl.constexpr, PACK: tl.constexpr, REUSE: tl.constexpr):
    """Line integrals ``(BLOCK_R, BLOCK_C)`` (voxel value × mm) of a block of rays through one volume ``vol``:
    the packed layout (``PACK > 1``), corners kept across samples (``REUSE``) or 8 loads per sample.

    Each ray marches its samples ``first .. ns - 1`` (``first``: 0, or per ray from :func:`_occupied_range`,
    whose skipped samples add exact zeros), ``n_max`` (the block's largest ``ns - first``) loop iterations.
    ``REUSE`` marches from sample 0 (the host never combines it with skipping)."""
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
    elif REUSE:
        acc = _integrate_reusing(vol, oz, oy, ox, dz, dy, dx, t0, dt, ns, n_max, ray_ok, chan_ok, chan_off, size_d,
                                 size_h, size_w, s_vd, s_vh, s_vw, BLOCK_R, BLOCK_C, ACC, VEC, UNROLL)
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
    UNROLL: tl.constexpr, PACK: tl.constexpr = 1, REUSE: tl.constexpr = False, BRICK: tl.constexpr = 0,
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
                     size_w, s_vc, s_vd, s_vh, s_vw, BLOCK_R, BLOCK_C, ACC, VEC, UNROLL, PACK, REUSE)
    out = out_ptr + view * s_gn + (rays * s_gr)[:, None] + (chan * s_gc)[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=ray_ok[:, None] & chan_ok[None, :])


@triton.jit
def _scatter(grad_ptr, offset, chan_off, value, mask, VEC: tl.constexpr):
    """Atomic add of ``value (BLOCK_R, BLOCK_C)`` at voxel offsets ``(BLOCK_R,)`` in units of ``VEC`` elements."""
    tl.atomic_add(grad_ptr + (offset * VEC)[:, None] + chan_off, value, mask=mask, sem="relaxed")


@triton.jit
def _scatter_cell(grad_ptr, cell, chan_off, g, chan_mask, s_gd, s_gh, s_gw,
                  w000, w001, w010, w011, w100, w101, w110, w111,
                  m000, m001, m010, m011, m100, m101, m110, m111, VEC: tl.constexpr):
    """Atomically add ``w_corner * g`` to the 8 corners of ``cell`` (offsets ``(BLOCK_R,)``); corner ``abc``
    only for the rays where its mask ``m_abc (BLOCK_R,)`` is true (no memory request for the others)."""
    _scatter(grad_ptr, cell, chan_off, w000[:, None] * g, m000[:, None] & chan_mask, VEC)
    _scatter(grad_ptr, cell + s_gw, chan_off, w001[:, None] * g, m001[:, None] & chan_mask, VEC)
    _scatter(grad_ptr, cell + s_gh, chan_off, w010[:, None] * g, m010[:, None] & chan_mask, VEC)
    _scatter(grad_ptr, cell + s_gh + s_gw, chan_off, w011[:, None] * g, m011[:, None] & chan_mask, VEC)
    _scatter(grad_ptr, cell + s_gd, chan_off, w100[:, None] * g, m100[:, None] & chan_mask, VEC)
    _scatter(grad_ptr, cell + s_gd + s_gw, chan_off, w101[:, None] * g, m101[:, None] & chan_mask, VEC)
    _scatter(grad_ptr, cell + s_gd + s_gh, chan_off, w110[:, None] * g, m110[:, None] & chan_mask, VEC)
    _scatter(grad_ptr, cell + s_gd + s_gh + s_gw, chan_off, w111[:, None] * g, m111[:, None] & chan_mask, VEC)


@triton.jit
def _scatter_cell_packed(grad_ptr, cell, kk, gk, slot_mask, s_gd, s_gh, s_gw,
                         w000, w001, w010, w011, w100, w101, w110, w111,
                         m000, m001, m010, m011, m100, m101, m110, m111, PACK: tl.constexpr, K: tl.constexpr,
                         PLANE: tl.constexpr):
    """Add the 8 corner contributions of ``cell`` with ``8 / PACK`` vector atomics of ``K`` floats.

    Packed gradient layout ``(B, D, H, W, K)``, ``K = C · PACK``. ``PACK = 2``: slot ``k = c · 2 + xo``
    of voxel ``(z, y, x)`` holds what cells based at ``(z, y, x)`` give to voxel ``(z, y, x + xo)``.
    ``PACK = 4``: the 2 × 2 corners of the cell across the ``PLANE`` axis (0 = z: the default, 1 = y,
    2 = x) in one vector, slot ``k = c · 4 + 2 · uo + vo`` for the offsets ``(uo, vo)`` along the other
    two axes in ``(z, y, x)`` order (``PLANE = 0``: ``(y, x)``); the far quad goes to the voxel one step
    along ``PLANE``. The host adds the slots up afterwards; every product ``w · g`` is the same as in the
    plain scatter. A vector goes out for a ray when any of its corners' masks is true (the caller zeroes
    the weights of the others).
    """
    yo, xo = _corner_tiles(kk, PACK)
    if PACK == 2:
        off = (cell * K)[:, None] + kk[None, :]
        tl.atomic_add(grad_ptr + off, tl.where(xo == 0, w000[:, None], w001[:, None]) * gk,
                      mask=(m000 | m001)[:, None] & slot_mask, sem="relaxed")
        tl.atomic_add(grad_ptr + off + s_gh * K, tl.where(xo == 0, w010[:, None], w011[:, None]) * gk,
                      mask=(m010 | m011)[:, None] & slot_mask, sem="relaxed")
        tl.atomic_add(grad_ptr + off + s_gd * K, tl.where(xo == 0, w100[:, None], w101[:, None]) * gk,
                      mask=(m100 | m101)[:, None] & slot_mask, sem="relaxed")
        tl.atomic_add(grad_ptr + off + (s_gd + s_gh) * K, tl.where(xo == 0, w110[:, None], w111[:, None]) * gk,
                      mask=(m110 | m111)[:, None] & slot_mask, sem="relaxed")
    else:
        off = (cell * K)[:, None] + kk[None, :]
        n00, n01, n10, n11, f00, f01, f10, f11 = _plane_quads(w000, w001, w010, w011, w100, w101, w110, w111,
                                                              PLANE)
        mn00, mn01, mn10, mn11, mf00, mf01, mf10, mf11 = _plane_quads(m000, m001, m010, m011, m100, m101, m110,
                                                                      m111, PLANE)
        uo = yo  # the slot's offsets along the two axes other than PLANE
        vo = xo
        near = tl.where(uo == 0, tl.where(vo == 0, n00[:, None], n01[:, None]),
                        tl.where(vo == 0, n10[:, None], n11[:, None]))
        far = tl.where(uo == 0, tl.where(vo == 0, f00[:, None], f01[:, None]),
                       tl.where(vo == 0, f10[:, None], f11[:, None]))
        if PLANE == 0:
            s_across = s_gd
        elif PLANE == 1:
            s_across = s_gh
        else:
            s_across = s_gw
        tl.atomic_add(grad_ptr + off, near * gk, mask=(mn00 | mn01 | mn10 | mn11)[:, None] & slot_mask,
                      sem="relaxed")
        tl.atomic_add(grad_ptr + off + s_across * K, far * gk,
                      mask=(mf00 | mf01 | mf10 | mf11)[:, None] & slot_mask, sem="relaxed")


@triton.jit
def _corner_weights(fz, fy, fx):
    """The 8 trilinear weights ``w[dz dy dx]`` of a cell's corners for fractions ``(fz, fy, fx)``."""
    gz = 1.0 - fz
    gy = 1.0 - fy
    gx = 1.0 - fx
    return (gz * gy * gx, gz * gy * fx, gz * fy * gx, gz * fy * fx,
            fz * gy * gx, fz * gy * fx, fz * fy * gx, fz * fy * fx)


@triton.jit
def _add_cell(grad, cell, chan_off, g, chan_mask, kk, gk, slot_mask, s_vd, s_vh, s_vw,
              w000, w001, w010, w011, w100, w101, w110, w111,
              m000, m001, m010, m011, m100, m101, m110, m111,
              VEC: tl.constexpr, PACK: tl.constexpr, K: tl.constexpr, PLANE: tl.constexpr):
    """Add the weighted gradient of one cell per ray, corner ``abc`` where ``m_abc`` is true; plain or packed."""
    if PACK > 1:
        _scatter_cell_packed(grad, cell, kk, gk, slot_mask, s_vd, s_vh, s_vw,
                             w000, w001, w010, w011, w100, w101, w110, w111,
                             m000, m001, m010, m011, m100, m101, m110, m111, PACK, K, PLANE)
    else:
        _scatter_cell(grad, cell, chan_off, g, chan_mask, s_vd, s_vh, s_vw,
                      w000, w001, w010, w011, w100, w101, w110, w111,
                      m000, m001, m010, m011, m100, m101, m110, m111, VEC)


@triton.jit
def march_adjoint_kernel(
    grad_ptr, gout_ptr, origin_ptr, dir_ptr, tnear_ptr, delta_ptr, nsamp_ptr, vidx_ptr,
    n_rays, width, size_d, size_h, size_w, n_channels,
    s_vb, s_vc, s_vd, s_vh, s_vw,
    s_on, s_oa,
    s_dn, s_dr, s_da,
    s_tn, s_tr,
    s_en, s_er,
    s_nn, s_nr,
    s_gn, s_gr, s_gc,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr, MERGE_RUNS: tl.constexpr,
    VEC: tl.constexpr, TILE_W: tl.constexpr, PACK: tl.constexpr, CARRY: tl.constexpr = False,
    PLANE: tl.constexpr = 0,
):
    """Scatter ``gout[n, r, c] * delta * w_corner`` of every sample into ``grad`` (the exact transpose).

    ``PACK = 1``: ``grad`` is the gradient volume itself. ``PACK = 2`` or ``4``: ``grad`` is the packed
    layout of :func:`_scatter_cell_packed` (``VEC = K = C · PACK`` elements per voxel), which needs
    4 or 2 vector atomics per cell instead of 8; ``PLANE``: the axis across which ``PACK = 4`` packs.
    """
    view, rays, ray_ok, chan, chan_ok, grad, oz, oy, ox, dz, dy, dx, t0, dt, ns, n_max = _program_rays(
        grad_ptr, origin_ptr, dir_ptr, tnear_ptr, delta_ptr, nsamp_ptr, vidx_ptr, n_rays, width, n_channels, s_vb,
        s_on, s_oa, s_dn, s_dr, s_da, s_tn, s_tr, s_en, s_er, s_nn, s_nr, BLOCK_R, BLOCK_C, ACC, VEC, TILE_W)

    g_ptr = gout_ptr + view * s_gn + (rays * s_gr)[:, None]
    g = tl.load(g_ptr + (chan * s_gc)[None, :], mask=ray_ok[:, None] & chan_ok[None, :], other=0.0).to(ACC)
    kk = tl.arange(0, BLOCK_C * PACK)  # packed slots: channel kk // PACK
    if PACK > 1:
        gk = tl.load(g_ptr + ((kk // PACK) * s_gc)[None, :], mask=ray_ok[:, None], other=0.0).to(ACC)  # (BLOCK_R, K)
    else:
        gk = g
    _scatter_rays(grad, g, gk, oz, oy, ox, dz, dy, dx, t0, dt, ns, n_max, ray_ok, chan, chan_ok, size_d, size_h,
                  size_w, s_vc, s_vd, s_vh, s_vw, BLOCK_R, BLOCK_C, ACC, MERGE_RUNS, VEC, PACK, CARRY, PLANE)


@triton.jit
def _scatter_rays(grad, g, gk, oz, oy, ox, dz, dy, dx, t0, dt, ns, n_max, ray_ok, chan, chan_ok, size_d, size_h,
                  size_w, s_vc, s_vd, s_vh, s_vw, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
                  MERGE_RUNS: tl.constexpr, VEC: tl.constexpr, PACK: tl.constexpr, CARRY: tl.constexpr,
                  PLANE: tl.constexpr = 0):
    """Scatter ``g · delta · w_corner`` of every sample of a block of rays into one gradient volume ``grad``.

    ``g (BLOCK_R, BLOCK_C)``: the gradient of each ray's line integrals; ``gk (BLOCK_R, C · PACK)``: the
    same per packed slot (``gk[:, k] = g[:, k // PACK]``; equal to ``g`` for ``PACK = 1``). With ``CARRY``
    and ``PACK = 4`` the carry is the plane carry: a step of one cell along ``PLANE`` (and none along the
    other axes) keeps the shared quad of corners in registers, the only packed vector two cells can share.
    """
    g = g * dt[:, None]
    gk = gk * dt[:, None]
    if VEC > 1 and PACK == 1:
        chan_off = chan[None, :]  # channel stride 1 (the host's condition for VEC > 1)
        chan_mask = tl.full([1, BLOCK_C], 1, tl.int1)  # BLOCK_C == C: a per-ray mask keeps vectors whole
    else:
        chan_off = (chan * s_vc)[None, :]
        chan_mask = chan_ok[None, :]
    kk = tl.arange(0, BLOCK_C * PACK)
    slot_mask = tl.full([1, BLOCK_C * PACK], 1, tl.int1)
    zero = tl.zeros([BLOCK_R], dtype=ACC)
    a000 = zero
    a001 = zero
    a010 = zero
    a011 = zero
    a100 = zero
    a101 = zero
    a110 = zero
    a111 = zero
    prev = tl.full([BLOCK_R], -1, dtype=tl.int32)  # offset of the cell being accumulated, -1 = none
    pz = tl.zeros([BLOCK_R], dtype=tl.int32)  # its index along each axis (CARRY)
    py = tl.zeros([BLOCK_R], dtype=tl.int32)
    px = tl.zeros([BLOCK_R], dtype=tl.int32)
    for s in range(n_max):
        iz, fz, iy, fy, ix, fx = _sample_cell(oz, oy, ox, dz, dy, dx, t0, dt, s, size_d, size_h, size_w, ACC)
        live = (s < ns) & ray_ok
        w000, w001, w010, w011, w100, w101, w110, w111 = _corner_weights(fz, fy, fx)
        cell = iz * s_vd + iy * s_vh + ix * s_vw
        if MERGE_RUNS:
            cell = tl.where(live, cell, -1)
            leaving = cell != prev
            flush = leaving & (prev >= 0)
            if CARRY and PACK == 4:
                up, down = _plane_step(iz - pz, iy - py, ix - px, flush & live, PLANE)
                m000, m001, m010, m011, m100, m101, m110, m111 = _plane_masks(flush & ~down, flush & ~up, PLANE)
                _add_cell(grad, prev, chan_off, g, chan_mask, kk, gk, slot_mask, s_vd, s_vh, s_vw,
                          tl.where(m000, a000, zero), tl.where(m001, a001, zero), tl.where(m010, a010, zero),
                          tl.where(m011, a011, zero), tl.where(m100, a100, zero), tl.where(m101, a101, zero),
                          tl.where(m110, a110, zero), tl.where(m111, a111, zero),
                          m000, m001, m010, m011, m100, m101, m110, m111, VEC, PACK, BLOCK_C * PACK, PLANE)
                step = tl.where(leaving, tl.where(up, 1, tl.where(down, -1, 2)), 0)
                a000, a001, a010, a011, a100, a101, a110, a111 = _carry_plane(
                    a000, a001, a010, a011, a100, a101, a110, a111, step, zero, PLANE)
                a000 += tl.where(live, w000, zero)
                a001 += tl.where(live, w001, zero)
                a010 += tl.where(live, w010, zero)
                a011 += tl.where(live, w011, zero)
                a100 += tl.where(live, w100, zero)
                a101 += tl.where(live, w101, zero)
                a110 += tl.where(live, w110, zero)
                a111 += tl.where(live, w111, zero)
                pz = iz
                py = iy
                px = ix
            elif CARRY:
                # corners the next cell shares (a step along one axis shares 4 of 8) keep accumulating in
                # registers; only the others are flushed
                can = flush & live
                kz0, kz1 = _kept(iz - pz, can)
                ky0, ky1 = _kept(iy - py, can)
                kx0, kx1 = _kept(ix - px, can)
                m000, m001, m010, m011, m100, m101, m110, m111 = _corner_masks(flush, kz0, kz1, ky0, ky1, kx0, kx1)
                _add_cell(grad, prev, chan_off, g, chan_mask, kk, gk, slot_mask, s_vd, s_vh, s_vw,
                          tl.where(m000, a000, zero), tl.where(m001, a001, zero), tl.where(m010, a010, zero),
                          tl.where(m011, a011, zero), tl.where(m100, a100, zero), tl.where(m101, a101, zero),
                          tl.where(m110, a110, zero), tl.where(m111, a111, zero),
                          m000, m001, m010, m011, m100, m101, m110, m111, VEC, PACK, BLOCK_C * PACK, PLANE)
                a000, a001, a010, a011, a100, a101, a110, a111 = _carry_cell(
                    a000, a001, a010, a011, a100, a101, a110, a111, _cell_step(leaving, can, iz - pz),
                    _cell_step(leaving, can, iy - py), _cell_step(leaving, can, ix - px), zero)
                a000 += tl.where(live, w000, zero)
                a001 += tl.where(live, w001, zero)
                a010 += tl.where(live, w010, zero)
                a011 += tl.where(live, w011, zero)
                a100 += tl.where(live, w100, zero)
                a101 += tl.where(live, w101, zero)
                a110 += tl.where(live, w110, zero)
                a111 += tl.where(live, w111, zero)
                pz = iz
                py = iy
                px = ix
            else:
                _add_cell(grad, prev, chan_off, g, chan_mask, kk, gk, slot_mask, s_vd, s_vh, s_vw,
                          a000, a001, a010, a011, a100, a101, a110, a111,
                          flush, flush, flush, flush, flush, flush, flush, flush, VEC, PACK, BLOCK_C * PACK, PLANE)
                a000 = tl.where(leaving, zero, a000) + tl.where(live, w000, zero)
                a001 = tl.where(leaving, zero, a001) + tl.where(live, w001, zero)
                a010 = tl.where(leaving, zero, a010) + tl.where(live, w010, zero)
                a011 = tl.where(leaving, zero, a011) + tl.where(live, w011, zero)
                a100 = tl.where(leaving, zero, a100) + tl.where(live, w100, zero)
                a101 = tl.where(leaving, zero, a101) + tl.where(live, w101, zero)
                a110 = tl.where(leaving, zero, a110) + tl.where(live, w110, zero)
                a111 = tl.where(leaving, zero, a111) + tl.where(live, w111, zero)
            prev = cell
        else:
            _add_cell(grad, cell, chan_off, g, chan_mask, kk, gk, slot_mask, s_vd, s_vh, s_vw,
                      w000, w001, w010, w011, w100, w101, w110, w111,
                      live, live, live, live, live, live, live, live, VEC, PACK, BLOCK_C * PACK, PLANE)
    if MERGE_RUNS:
        last = prev >= 0
        _add_cell(grad, prev, chan_off, g, chan_mask, kk, gk, slot_mask, s_vd, s_vh, s_vw,
                  a000, a001, a010, a011, a100, a101, a110, a111,
                  last, last, last, last, last, last, last, last, VEC, PACK, BLOCK_C * PACK, PLANE)


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


@triton.jit
def backproject_gather_kernel(
    img_ptr, out_ptr, cam_ptr, rel_ptr, src_ptr, geo_ptr,
    n_voxels, size_d, size_h, size_w, n_channels, rows, cols,
    s_ib, s_ic, s_ir, s_iw,
    s_ob, s_oc,
    BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    """Voxel-driven BP (paper eq. 7): each voxel takes the bilinear image value at its projection
    divided by the chord length of the source→voxel ray through the volume box.

    ``cam_ptr`` holds per item a ``(3, 4)`` camera_from_voxel matrix (mm per voxel index),
    ``rel_ptr`` a ``(3, 4)`` matrix giving the world vector source→voxel (its norm is the distance,
    also for poses whose rotation is only orthonormal to round-off), ``src_ptr`` the source position ``(3,)`` in voxel index coordinates, ``geo_ptr`` the detector
    ``(sdd mm, principal row, principal col, row spacing mm, col spacing mm, tiny)`` where ``tiny``
    replaces near-zero direction components exactly as in :func:`xraysyn.projector.rays.clip_to_box`.
    """
    sdd, row0, col0, row_mm, col_mm, tiny = _detector(geo_ptr, ACC)
    item = tl.program_id(1)
    vox = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
    vox_ok = vox < n_voxels
    i, j, k = _voxel_indices(vox, size_h, size_w)
    fi = i.to(ACC)
    fj = j.to(ACC)
    fk = k.to(ACC)

    cam = cam_ptr + item * 12
    cx = tl.load(cam + 0).to(ACC) * fi + tl.load(cam + 1).to(ACC) * fj + tl.load(cam + 2).to(ACC) * fk \
        + tl.load(cam + 3).to(ACC)
    cy = tl.load(cam + 4).to(ACC) * fi + tl.load(cam + 5).to(ACC) * fj + tl.load(cam + 6).to(ACC) * fk \
        + tl.load(cam + 7).to(ACC)
    cz = tl.load(cam + 8).to(ACC) * fi + tl.load(cam + 9).to(ACC) * fj + tl.load(cam + 10).to(ACC) * fk \
        + tl.load(cam + 11).to(ACC)

    # detector position (row, col) in pixels, as ConeBeamGeometry.camera_to_pixel
    in_front = cz > 0
    safe_z = tl.where(in_front, cz, 1.0)
    scale = sdd / safe_z
    row = cy * scale / row_mm + row0
    col = -cx * scale / col_mm + col0
    on_det = in_front & (row >= -0.5) & (row <= rows - 0.5) & (col >= -0.5) & (col <= cols - 0.5)

    # chord of the source→voxel ray inside the volume box, clipped at the detector
    rel = rel_ptr + item * 12
    wx = tl.load(rel + 0).to(ACC) * fi + tl.load(rel + 1).to(ACC) * fj + tl.load(rel + 2).to(ACC) * fk \
        + tl.load(rel + 3).to(ACC)
    wy = tl.load(rel + 4).to(ACC) * fi + tl.load(rel + 5).to(ACC) * fj + tl.load(rel + 6).to(ACC) * fk \
        + tl.load(rel + 7).to(ACC)
    wz = tl.load(rel + 8).to(ACC) * fi + tl.load(rel + 9).to(ACC) * fj + tl.load(rel + 10).to(ACC) * fk \
        + tl.load(rel + 11).to(ACC)
    dist = tl.sqrt(wx * wx + wy * wy + wz * wz)
    safe_dist = tl.where(dist > 0, dist, 1.0)
    oz = tl.load(src_ptr + item * 3 + 0).to(ACC)
    oy = tl.load(src_ptr + item * 3 + 1).to(ACC)
    ox = tl.load(src_ptr + item * 3 + 2).to(ACC)
    ez, xz = _slab(oz, (fi - oz) / safe_dist, size_d, tiny)
    ey, xy = _slab(oy, (fj - oy) / safe_dist, size_h, tiny)
    ex, xx = _slab(ox, (fk - ox) / safe_dist, size_w, tiny)
    t_near = tl.maximum(tl.maximum(tl.maximum(ez, ey), ex), 0.0)
    t_far = tl.minimum(tl.minimum(tl.minimum(xz, xy), xx), dist * sdd / safe_z)
    length = tl.maximum(t_far, t_near) - t_near
    use = on_det & (length > 0) & vox_ok
    inv_length = tl.where(use, 1.0 / tl.where(length > 0, length, 1.0), 0.0)

    # bilinear image value with border clamping (grid_sample, align_corners=True, padding "border")
    rr = tl.minimum(tl.maximum(row, 0.0), (rows - 1).to(ACC))
    cc = tl.minimum(tl.maximum(col, 0.0), (cols - 1).to(ACC))
    r_lo = rr.to(tl.int32)
    c_lo = cc.to(tl.int32)
    fr = (rr - r_lo.to(ACC))[:, None]
    fc = (cc - c_lo.to(ACC))[:, None]
    r_hi = tl.minimum(r_lo + 1, rows - 1)
    c_hi = tl.minimum(c_lo + 1, cols - 1)
    chan = tl.arange(0, BLOCK_C)
    mask = use[:, None] & (chan < n_channels)[None, :]
    img = img_ptr + item * s_ib + (chan * s_ic)[None, :]
    v00 = tl.load(img + (r_lo * s_ir + c_lo * s_iw)[:, None], mask=mask, other=0.0).to(ACC)
    v01 = tl.load(img + (r_lo * s_ir + c_hi * s_iw)[:, None], mask=mask, other=0.0).to(ACC)
    v10 = tl.load(img + (r_hi * s_ir + c_lo * s_iw)[:, None], mask=mask, other=0.0).to(ACC)
    v11 = tl.load(img + (r_hi * s_ir + c_hi * s_iw)[:, None], mask=mask, other=0.0).to(ACC)
    top = v00 + (v01 - v00) * fc
    bottom = v10 + (v11 - v10) * fc
    value = (top + (bottom - top) * fr) * inv_length[:, None]
    out = out_ptr + item.to(tl.int64) * s_ob + (chan * s_oc)[None, :] + vox[:, None]
    tl.store(out, value.to(out_ptr.dtype.element_ty), mask=vox_ok[:, None] & (chan < n_channels)[None, :])


@triton.jit
def ray_setup_kernel(
    param_ptr, dir_ptr, tnear_ptr, delta_ptr, length_ptr, nsamp_ptr,
    n_rays, cols, size_d, size_h, size_w, num_samples,
    BLOCK_R: tl.constexpr, ACC: tl.constexpr, FIXED_SAMPLES: tl.constexpr,
):
    """The clipped rays of :func:`xraysyn.projector.rays.build_rays`, one launch for all views.

    ``param_ptr`` holds the detector ``[sdd, row0, col0, row_mm, col_mm, tiny, step_mm]`` followed
    by 12 numbers per view: the source in voxel coordinates ``(3,)`` and the ``(3, 3)`` map from a
    camera-frame unit vector to voxel displacement per mm (``voxel_from_world · world_from_camera``).
    Writes ``direction (N, R, 3)``, ``t_near``, ``delta``, ``length`` ``(N, R)`` mm and
    ``n_samples (N, R)`` int32 (fixed ``num_samples``, or ``ceil(length / step_mm − 1e-6)``).
    """
    view = tl.program_id(1)
    rays = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    ok = rays < n_rays
    sdd, row0, col0, row_mm, col_mm, tiny = _detector(param_ptr, ACC)
    step = tl.load(param_ptr + 6).to(ACC)
    row = rays // cols
    col = rays - row * cols
    # camera frame: the pixel centre, as ConeBeamGeometry.pixel_directions
    px = -(col.to(ACC) - col0) * col_mm
    py = (row.to(ACC) - row0) * row_mm
    dist = tl.sqrt(px * px + py * py + sdd * sdd)
    ux = px / dist
    uy = py / dist
    uz = sdd / dist
    vp = param_ptr + 7 + view * 12
    oz = tl.load(vp + 0).to(ACC)
    oy = tl.load(vp + 1).to(ACC)
    ox = tl.load(vp + 2).to(ACC)
    dz = tl.load(vp + 3).to(ACC) * ux + tl.load(vp + 4).to(ACC) * uy + tl.load(vp + 5).to(ACC) * uz
    dy = tl.load(vp + 6).to(ACC) * ux + tl.load(vp + 7).to(ACC) * uy + tl.load(vp + 8).to(ACC) * uz
    dx = tl.load(vp + 9).to(ACC) * ux + tl.load(vp + 10).to(ACC) * uy + tl.load(vp + 11).to(ACC) * uz
    ez, xz = _slab(oz, dz, size_d, tiny)
    ey, xy = _slab(oy, dy, size_h, tiny)
    ex, xx = _slab(ox, dx, size_w, tiny)
    t_near = tl.maximum(tl.maximum(tl.maximum(ez, ey), ex), 0.0)
    t_far = tl.maximum(tl.minimum(tl.minimum(tl.minimum(xz, xy), xx), dist), t_near)
    length = t_far - t_near
    hit = length > 0
    if FIXED_SAMPLES:
        n = tl.where(hit, num_samples, 0)
    else:
        n = tl.where(hit, tl.maximum(tl.ceil(length / step - 1e-6), 1.0), 0.0).to(tl.int32)
    delta = length / tl.maximum(n, 1).to(ACC)
    flat = view.to(tl.int64) * n_rays + rays
    tl.store(dir_ptr + flat * 3, dz, mask=ok)
    tl.store(dir_ptr + flat * 3 + 1, dy, mask=ok)
    tl.store(dir_ptr + flat * 3 + 2, dx, mask=ok)
    tl.store(tnear_ptr + flat, t_near, mask=ok)
    tl.store(delta_ptr + flat, delta, mask=ok)
    tl.store(length_ptr + flat, length, mask=ok)
    tl.store(nsamp_ptr + flat, n.to(tl.int32), mask=ok)


@triton.jit
def pack_corners_kernel(src_ptr, dst_ptr, probe_ptr, occ_ptr, n_voxels, size_h, size_w, s_b, s_c, s_d, s_h, s_w,
                        BLOCK_V: tl.constexpr, PACK: tl.constexpr, K: tl.constexpr, CHECK_FINITE: tl.constexpr,
                        BRICK: tl.constexpr = 0):
    """The packed-corner layout of :func:`_sample_packed` in one pass: ``dst (B, D, H, W, K)``, slot
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
    :func:`_scatter_cell_packed`)."""
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
    ``nonzero``. ``occ_ptr``: the uint8 buffer of :func:`_occupied_range` — per item a flag byte and the
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
    """The grid :func:`_occupied_range` walks, from the marks (``occ_ptr`` as in :func:`_mark_bricks`; the launch
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
