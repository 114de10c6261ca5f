"""The ray set-up kernel: every clipped ray of every view (:func:`xraysyn.projector.rays.build_rays`) in one launch."""

from __future__ import annotations

import triton
import triton.language as tl

from xraysyn.projector.triton.kernels.common import _detector, _slab

__all__ = ["ray_setup_kernel"]


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
