"""A reference kernel with the forward march's memory access pattern and none of its arithmetic.

Same rays, same program-to-ray mapping and 2-D detector tiles, same 8 corner loads per sample
(channels-last vectors) as ``xraysyn.projector.triton.kernels.march.march_forward_kernel``, but the corners
are summed without trilinear weights. Its samples/s is the gather throughput this access pattern can
reach on the GPU: the "limit" ``tools/gpu/gpu_kernels.py`` compares the forward march to.
Imported lazily (after ``TRITON_INTERPRET`` is decided), like the library's own kernels.
"""

import triton
import triton.language as tl

from xraysyn.projector.triton.kernels.common import _program_rays, _sample_cell
from xraysyn.projector.triton.kernels.march import _gather


@triton.jit
def _contiguous_program_rays(vol_ptr, origin_ptr, dir_ptr, tnear_ptr, delta_ptr, nsamp_ptr, vidx_ptr, n_rays, width,
                             s_vb, BLOCK_R: tl.constexpr, VEC: tl.constexpr, TILE_W: tl.constexpr):
    """The march kernels' preamble (``_program_rays``) for contiguous float32 ray tensors, ``VEC`` values per voxel."""
    return _program_rays(vol_ptr, origin_ptr, dir_ptr, tnear_ptr, delta_ptr, nsamp_ptr, vidx_ptr, n_rays, width, VEC,
                         s_vb, 3, 1, n_rays * 3, 3, 1, n_rays, 1, n_rays, 1, n_rays, 1, BLOCK_R, VEC, tl.float32, VEC,
                         TILE_W)


@triton.jit
def gather_only_kernel(vol_ptr, out_ptr, origin_ptr, dir_ptr, tnear_ptr, delta_ptr, nsamp_ptr, vidx_ptr,
                       n_rays, width, size_d, size_h, size_w, s_vb, s_vd, s_vh, s_vw,
                       BLOCK_R: tl.constexpr, C: tl.constexpr, TILE_W: tl.constexpr):
    """``out[n, r, c] = Σ_s Σ_corners volume[c, corner(p_s)]`` for contiguous ray tensors."""
    view, rays, ray_ok, chan, _chan_ok, vol, oz, oy, ox, dz, dy, dx, t0, dt, ns, n_max = _contiguous_program_rays(
        vol_ptr, origin_ptr, dir_ptr, tnear_ptr, delta_ptr, nsamp_ptr, vidx_ptr, n_rays, width, s_vb, BLOCK_R, C,
        TILE_W)
    chan = chan[None, :]
    acc = tl.zeros([BLOCK_R, C], dtype=tl.float32)
    for s in range(n_max):
        iz, _fz, iy, _fy, ix, _fx = _sample_cell(oz, oy, ox, dz, dy, dx, t0, dt, s, size_d, size_h, size_w, tl.float32)
        live = ((s < ns) & ray_ok)[:, None]
        base = iz * s_vd + iy * s_vh + ix * s_vw
        acc += _gather(vol, base, chan, live, tl.float32, C)
        acc += _gather(vol, base + s_vw, chan, live, tl.float32, C)
        acc += _gather(vol, base + s_vh, chan, live, tl.float32, C)
        acc += _gather(vol, base + s_vh + s_vw, chan, live, tl.float32, C)
        acc += _gather(vol, base + s_vd, chan, live, tl.float32, C)
        acc += _gather(vol, base + s_vd + s_vw, chan, live, tl.float32, C)
        acc += _gather(vol, base + s_vd + s_vh, chan, live, tl.float32, C)
        acc += _gather(vol, base + s_vd + s_vh + s_vw, chan, live, tl.float32, C)
    tl.store(out_ptr + (view * n_rays + rays)[:, None] * C + chan, acc, mask=ray_ok[:, None])


@triton.jit
def gather_only_packed_kernel(vol_ptr, out_ptr, origin_ptr, dir_ptr, tnear_ptr, delta_ptr, nsamp_ptr, vidx_ptr,
                              n_rays, width, size_d, size_h, size_w, s_vb, s_vd, s_vh,
                              BLOCK_R: tl.constexpr, K: tl.constexpr, PACK: tl.constexpr, TILE_W: tl.constexpr):
    """The packed-corner forward's accesses (``8 / PACK`` vector loads of ``K`` values per sample), summed
    without weights: the gather limit of ``march_forward_kernel`` with ``PACK > 1``."""
    view, rays, ray_ok, kk, _slot_ok, vol, oz, oy, ox, dz, dy, dx, t0, dt, ns, n_max = _contiguous_program_rays(
        vol_ptr, origin_ptr, dir_ptr, tnear_ptr, delta_ptr, nsamp_ptr, vidx_ptr, n_rays, width, s_vb, BLOCK_R, K,
        TILE_W)
    kk = kk[None, :]
    acc = tl.zeros([BLOCK_R, K], dtype=tl.float32)
    for s in range(n_max):
        iz, _fz, iy, _fy, ix, _fx = _sample_cell(oz, oy, ox, dz, dy, dx, t0, dt, s, size_d, size_h, size_w, tl.float32)
        live = ((s < ns) & ray_ok)[:, None]
        cell = ((iz * s_vd + iy * s_vh + ix) * K)[:, None] + kk
        acc += tl.load(vol + cell, mask=live, other=0.0)
        acc += tl.load(vol + cell + s_vd * K, mask=live, other=0.0)
        if PACK == 2:
            acc += tl.load(vol + cell + s_vh * K, mask=live, other=0.0)
            acc += tl.load(vol + cell + (s_vd + s_vh) * K, mask=live, other=0.0)
    tl.store(out_ptr + (view * n_rays + rays)[:, None] * K + kk, acc, mask=ray_ok[:, None])
