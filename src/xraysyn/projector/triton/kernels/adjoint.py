"""The adjoint march kernel: the exact transpose of the forward march, scattering ``g · delta · w_corner`` with
atomics into the gradient volume or its packed corner slots.

The 8 trilinear weights of consecutive samples of a ray that fall in the same cell are summed in registers
and added only when the ray leaves the cell (and once at the end): the same sum, reassociated, so still the
exact transpose, without the atomics of every sample after the first in a cell. With ``CARRY`` the corners the
next cell shares keep accumulating too (with 4 packed slots: the plane carry across ``PLANE``)."""

from __future__ import annotations

import triton
import triton.language as tl

from xraysyn.projector.triton.kernels.common import _corner_tiles, _program_rays, _sample_cell

__all__ = ["march_adjoint_kernel"]


@triton.jit
def _kept(step, can):
    """Whether a cell's corners 0 and 1 along one axis are also corners of the next cell, ``step`` cells on."""
    return can & ((step == 0) | (step == -1)), can & ((step == 0) | (step == 1))


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
    shared with the neighbouring cell (the per-axis flags come from :func:`_kept`)."""
    return (rows & ~(z0 & y0 & x0), rows & ~(z0 & y0 & x1), rows & ~(z0 & y1 & x0), rows & ~(z0 & y1 & x1),
            rows & ~(z1 & y0 & x0), rows & ~(z1 & y0 & x1), rows & ~(z1 & y1 & x0), rows & ~(z1 & y1 & x1))


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
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
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
                  size_w, s_vc, s_vd, s_vh, s_vw, BLOCK_R, BLOCK_C, ACC, VEC, PACK, CARRY, PLANE)


@triton.jit
def _scatter_rays(grad, g, gk, oz, oy, ox, dz, dy, dx, t0, dt, ns, n_max, ray_ok, chan, chan_ok, size_d, size_h,
                  size_w, s_vc, s_vd, s_vh, s_vw, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
                  VEC: tl.constexpr, PACK: tl.constexpr, CARRY: tl.constexpr,
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
    last = prev >= 0
    _add_cell(grad, prev, chan_off, g, chan_mask, kk, gk, slot_mask, s_vd, s_vh, s_vw,
              a000, a001, a010, a011, a100, a101, a110, a111,
              last, last, last, last, last, last, last, last, VEC, PACK, BLOCK_C * PACK, PLANE)
