"""Triton kernels of the fused polychromatic attenuation (see :mod:`xraysyn.physics.fused`).

Importing this module needs ``triton``; :mod:`xraysyn.physics.fused` imports it lazily. One program
handles ``BLOCK_P`` pixels (flattened over images and detector positions), all ``M`` materials in
a ``(BLOCK_P, BLOCK_M)`` tile, and loops over the energies ``BLOCK_E`` at a time with an online
log-sum-exp (forward) or an accumulated softmax-weighted μ/ρ (backward). Float32 throughout.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["attenuation_backward_kernel", "attenuation_forward_kernel"]


@triton.jit
def _exponents(t_ptr, mu_ptr, logw_ptr, pix_off, pix_ok, mat, mat_ok, e0, n_energies, s_tm, s_mm, s_me,
               BLOCK_E: tl.constexpr):
    """``a[p, e] = log w_e − Σ_m μ[m, e] t[p, m]`` for one chunk of energies; masked energies −inf."""
    energy = e0 + tl.arange(0, BLOCK_E)
    e_ok = energy < n_energies
    t = tl.load(t_ptr + pix_off[:, None] + (mat * s_tm)[None, :], mask=pix_ok[:, None] & mat_ok[None, :],
                other=0.0).to(tl.float32)  # (P, M)
    mu = tl.load(mu_ptr + (mat * s_mm)[:, None] + (energy * s_me)[None, :],
                 mask=mat_ok[:, None] & e_ok[None, :], other=0.0)  # (M, E)
    log_w = tl.load(logw_ptr + energy, mask=e_ok, other=float("-inf"))
    optical = tl.sum(t[:, :, None] * mu[None, :, :], axis=1)  # (P, E)
    return log_w[None, :] - optical, mu


@triton.jit
def attenuation_forward_kernel(t_ptr, mu_ptr, logw_ptr, lse_ptr, i_ptr, line_ptr, n_pixels, per_image, n_mat,
                               n_energies, s_tn, s_tm, s_tp, s_mm, s_me,
                               BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr):
    """Per pixel: ``lse = logsumexp_E a_E``, ``i_atten = exp(lse)``, ``line_integral = −lse``."""
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pix_ok = pix < n_pixels
    img = pix // per_image
    pix_off = img * s_tn + (pix - img * per_image) * s_tp
    mat = tl.arange(0, BLOCK_M)
    mat_ok = mat < n_mat
    run_max = tl.full([BLOCK_P], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_P], tl.float32)
    for e0 in range(0, n_energies, BLOCK_E):
        a, _mu = _exponents(t_ptr, mu_ptr, logw_ptr, pix_off, pix_ok, mat, mat_ok, e0, n_energies,
                           s_tm, s_mm, s_me, BLOCK_E)
        new_max = tl.maximum(run_max, tl.max(a, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(a - new_max[:, None]), axis=1)
        run_max = new_max
    lse = run_max + tl.log(run_sum)
    tl.store(lse_ptr + pix, lse, mask=pix_ok)
    tl.store(i_ptr + pix, tl.exp(lse), mask=pix_ok)
    tl.store(line_ptr + pix, -lse, mask=pix_ok)


@triton.jit
def attenuation_backward_kernel(t_ptr, mu_ptr, logw_ptr, lse_ptr, gi_ptr, gl_ptr, gt_ptr, n_pixels, per_image,
                                n_mat, n_energies, s_tn, s_tm, s_tp, s_mm, s_me, s_gn, s_gm, s_gp,
                                BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr):
    """Per pixel: ``∂ℓ/∂t_m = (∂ℓ/∂line − i_atten ∂ℓ/∂i_atten) · Σ_E softmax_E(a) μ/ρ(m, E)``."""
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pix_ok = pix < n_pixels
    img = pix // per_image
    within = pix - img * per_image
    pix_off = img * s_tn + within * s_tp
    mat = tl.arange(0, BLOCK_M)
    mat_ok = mat < n_mat
    lse = tl.load(lse_ptr + pix, mask=pix_ok, other=0.0)
    grad_i = tl.load(gi_ptr + pix, mask=pix_ok, other=0.0)
    coeff = tl.load(gl_ptr + pix, mask=pix_ok, other=0.0) - tl.exp(lse) * grad_i
    mean_mu = tl.zeros([BLOCK_P, BLOCK_M], tl.float32)
    for e0 in range(0, n_energies, BLOCK_E):
        a, mu = _exponents(t_ptr, mu_ptr, logw_ptr, pix_off, pix_ok, mat, mat_ok, e0, n_energies,
                           s_tm, s_mm, s_me, BLOCK_E)
        share = tl.exp(a - lse[:, None])  # softmax over energies, (P, E)
        mean_mu += tl.sum(share[:, None, :] * mu[None, :, :], axis=2)
    out = gt_ptr + (img * s_gn + within * s_gp)[:, None] + (mat * s_gm)[None, :]
    tl.store(out, coeff[:, None] * mean_mu, mask=pix_ok[:, None] & mat_ok[None, :])
