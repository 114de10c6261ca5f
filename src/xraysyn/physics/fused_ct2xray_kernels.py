"""Triton kernels of CT2Xray fused into the ray march (see :mod:`xraysyn.physics.fused_ct2xray`).

Importing this module needs ``triton``. The forward kernel marches a block of rays through the
per-material density volumes exactly as ``march_forward_kernel`` does (same helpers, so the same
samples), then, still in registers, turns each ray's material line integrals into thicknesses
``t_m`` (g/cm²) and runs the online log-sum-exp over the spectrum:

    L = logsumexp_E (log w_E − Σ_m μ/ρ(m, E) t_m),   I_atten = exp(L),   line_integral = −L.

The adjoint kernel computes, per ray and again in registers, the thickness gradient
``∂ℓ/∂t_m = ∂ℓ/∂t_m|direct + (∂ℓ/∂line − I_atten ∂ℓ/∂I_atten) · Σ_E softmax_E μ/ρ(m, E)`` from the saved
``t`` and ``L``, and scatters it along the ray with ``march_adjoint_kernel``'s loop (the exact
transpose). Neither pass reads or writes an image-sized intermediate beyond its outputs.
Tiles stay two-dimensional (rays × materials, rays × energies); float32 throughout.
"""

from __future__ import annotations

import triton
import triton.language as tl

from xraysyn.projector.triton_kernels import (
    _integrate,
    _occupied_range,
    _program_rays,
    _scatter_rays,
)

__all__ = ["march_attenuate_adjoint_kernel", "march_attenuate_kernel"]


@triton.jit
def _column(tile, chan, m):
    """Column ``m`` of a ``(BLOCK_R, BLOCK_C)`` register tile, as a ``(BLOCK_R,)`` vector."""
    return tl.sum(tl.where(chan[None, :] == m, tile, 0.0), axis=1)


@triton.jit
def _exponents(thick, chan, mu_ptr, logw_ptr, e0, n_energies, s_mm, s_me,
               N_MAT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr):
    """``a[r, e] = log w_e − Σ_m μ/ρ[m, e] t[r, m]`` for energies ``e0 .. e0 + BLOCK_E`` (masked: −inf)."""
    energy = e0 + tl.arange(0, BLOCK_E)
    e_ok = energy < n_energies
    log_w = tl.load(logw_ptr + energy, mask=e_ok, other=float("-inf"))
    a = tl.zeros([BLOCK_R, BLOCK_E], tl.float32) + log_w[None, :]
    for m in tl.static_range(N_MAT):
        mu_m = tl.load(mu_ptr + m * s_mm + energy * s_me, mask=e_ok, other=0.0)
        a -= _column(thick, chan, m)[:, None] * mu_m[None, :]
    return a


@triton.jit
def march_attenuate_kernel(
    vol_ptr, occ_ptr, thick_ptr, lse_ptr, i_ptr, line_ptr, mu_ptr, logw_ptr,
    origin_ptr, dir_ptr, tnear_ptr, delta_ptr, nsamp_ptr, vidx_ptr,
    n_rays, width, size_d, size_h, size_w, n_channels, n_energies, scale,
    s_vb, s_vc, s_vd, s_vh, s_vw,
    s_on, s_oa,
    s_dn, s_dr, s_da,
    s_tn, s_tr,
    s_en, s_er,
    s_nn, s_nr,
    s_gn, s_gr, s_gc,
    s_mm, s_me,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr, VEC: tl.constexpr, TILE_W: tl.constexpr,
    UNROLL: tl.constexpr, PACK: tl.constexpr, N_MAT: tl.constexpr, BLOCK_E: tl.constexpr, N_CHUNKS: tl.constexpr,
    REUSE: tl.constexpr = False, BRICK: tl.constexpr = 0,
):
    """Per ray: thicknesses ``t[n, r, m] = scale · ∫ density_m`` (g/cm²) and ``L``, ``I_atten``, ``−L`` ``(N, R)``.
    ``occ_ptr`` / ``BRICK``: empty space skipping, as in ``march_forward_kernel``."""
    view, rays, ray_ok, chan, chan_ok, vol, oz, oy, ox, dz, dy, dx, t0, dt, ns, n_max = _program_rays(
        vol_ptr, origin_ptr, dir_ptr, tnear_ptr, delta_ptr, nsamp_ptr, vidx_ptr, n_rays, width, n_channels, s_vb,
        s_on, s_oa, s_dn, s_dr, s_da, s_tn, s_tr, s_en, s_er, s_nn, s_nr, BLOCK_R, BLOCK_C, ACC, VEC, TILE_W)
    if BRICK > 0:
        first, ns, n_max = _occupied_range(occ_ptr, vidx_ptr, view, oz, oy, ox, dz, dy, dx, t0, dt, ns, n_max,
                                           ray_ok, size_d, size_h, size_w, ACC, BRICK)
    else:
        first = 0
    integral = _integrate(vol, oz, oy, ox, dz, dy, dx, t0, dt, first, ns, n_max, ray_ok, chan, chan_ok, size_d,
                          size_h, size_w, s_vc, s_vd, s_vh, s_vw, BLOCK_R, BLOCK_C, ACC, VEC, UNROLL, PACK, REUSE)
    thick = integral.to(tl.float32) * scale
    run_max = tl.full([BLOCK_R], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_R], tl.float32)
    for chunk in tl.static_range(N_CHUNKS):
        a = _exponents(thick, chan, mu_ptr, logw_ptr, chunk * BLOCK_E, n_energies, s_mm, s_me, N_MAT, BLOCK_R,
                       BLOCK_E)
        new_max = tl.maximum(run_max, tl.max(a, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(a - new_max[:, None]), axis=1)
        run_max = new_max
    lse = run_max + tl.log(run_sum)
    out = thick_ptr + view * s_gn + (rays * s_gr)[:, None] + (chan * s_gc)[None, :]
    tl.store(out, thick, mask=ray_ok[:, None] & chan_ok[None, :])
    flat = view * n_rays + rays
    tl.store(lse_ptr + flat, lse, mask=ray_ok)
    tl.store(i_ptr + flat, tl.exp(lse), mask=ray_ok)
    tl.store(line_ptr + flat, -lse, mask=ray_ok)


@triton.jit
def march_attenuate_adjoint_kernel(
    grad_ptr, thick_ptr, lse_ptr, gi_ptr, gl_ptr, gt_ptr, mu_ptr, logw_ptr,
    origin_ptr, dir_ptr, tnear_ptr, delta_ptr, nsamp_ptr, vidx_ptr,
    n_rays, width, size_d, size_h, size_w, n_channels, n_energies, scale,
    s_vb, s_vc, s_vd, s_vh, s_vw,
    s_on, s_oa,
    s_dn, s_dr, s_da,
    s_tn, s_tr,
    s_en, s_er,
    s_nn, s_nr,
    s_gn, s_gr, s_gc,
    s_mm, s_me,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr, MERGE_RUNS: tl.constexpr, VEC: tl.constexpr,
    TILE_W: tl.constexpr, PACK: tl.constexpr, N_MAT: tl.constexpr, BLOCK_E: tl.constexpr, N_CHUNKS: tl.constexpr,
    HAS_GRAD_THICK: tl.constexpr, CARRY: tl.constexpr = False, PLANE: tl.constexpr = 0,
):
    """Scatter the density gradient of ``ℓ(t, I_atten, line)`` along every ray (the exact transpose of the
    march), its per-ray thickness gradient computed in registers from the saved ``t`` and ``L``.

    ``gi``/``gl`` ``(N, R)``: gradients w.r.t. ``I_atten`` and ``line_integral``; ``gt`` ``(N, R, C)`` (same
    strides as ``t``, only read when ``HAS_GRAD_THICK``): the direct gradient w.r.t. the thicknesses.
    """
    view, rays, ray_ok, chan, chan_ok, grad, oz, oy, ox, dz, dy, dx, t0, dt, ns, n_max = _program_rays(
        grad_ptr, origin_ptr, dir_ptr, tnear_ptr, delta_ptr, nsamp_ptr, vidx_ptr, n_rays, width, n_channels, s_vb,
        s_on, s_oa, s_dn, s_dr, s_da, s_tn, s_tr, s_en, s_er, s_nn, s_nr, BLOCK_R, BLOCK_C, ACC, VEC, TILE_W)

    both_ok = ray_ok[:, None] & chan_ok[None, :]
    per_ray = view * s_gn + (rays * s_gr)[:, None] + (chan * s_gc)[None, :]
    thick = tl.load(thick_ptr + per_ray, mask=both_ok, other=0.0)
    flat = view * n_rays + rays
    lse = tl.load(lse_ptr + flat, mask=ray_ok, other=0.0)
    coeff = tl.load(gl_ptr + flat, mask=ray_ok, other=0.0) - tl.exp(lse) * tl.load(gi_ptr + flat, mask=ray_ok,
                                                                                    other=0.0)
    if HAS_GRAD_THICK:
        direct = tl.load(gt_ptr + per_ray, mask=both_ok, other=0.0)
    else:
        direct = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    kk = tl.arange(0, BLOCK_C * PACK)  # packed slots: material kk // PACK
    g = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    gk = tl.zeros([BLOCK_R, BLOCK_C * PACK], tl.float32)
    for m in tl.static_range(N_MAT):
        mean_mu = tl.zeros([BLOCK_R], tl.float32)
        for chunk in tl.static_range(N_CHUNKS):
            e0 = chunk * BLOCK_E
            a = _exponents(thick, chan, mu_ptr, logw_ptr, e0, n_energies, s_mm, s_me, N_MAT, BLOCK_R, BLOCK_E)
            energy = e0 + tl.arange(0, BLOCK_E)
            mu_m = tl.load(mu_ptr + m * s_mm + energy * s_me, mask=energy < n_energies, other=0.0)
            mean_mu += tl.sum(tl.exp(a - lse[:, None]) * mu_m[None, :], axis=1)
        g_m = (coeff * mean_mu + _column(direct, chan, m)) * scale  # ∂ℓ/∂(line integral of material m)
        g += tl.where(chan[None, :] == m, g_m[:, None], 0.0)
        gk += tl.where((kk // PACK)[None, :] == m, g_m[:, None], 0.0)
    _scatter_rays(grad, g.to(ACC), gk.to(ACC), oz, oy, ox, dz, dy, dx, t0, dt, ns, n_max, ray_ok, chan, chan_ok,
                  size_d, size_h, size_w, s_vc, s_vd, s_vh, s_vw, BLOCK_R, BLOCK_C, ACC, MERGE_RUNS, VEC, PACK, CARRY,
                  PLANE)
