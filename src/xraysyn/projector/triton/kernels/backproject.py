"""The voxel-driven single-image backprojector BP (paper eq. 7) as one gather kernel."""

from __future__ import annotations

import triton
import triton.language as tl

from xraysyn.projector.triton.kernels.common import _detector, _slab, _voxel_indices

__all__ = ["backproject_gather_kernel"]


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
