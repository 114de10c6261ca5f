"""Triton kernels of the one-pass polychromatic attenuation (launched by
:mod:`xraysyn.physics.attenuation.triton_function`, which imports this module, and so ``triton``, on
first use).

One program handles ``BLOCK_P`` pixels (flattened over images and detector positions), unrolls the
``M`` materials and the ``N_CHUNKS`` chunks of ``BLOCK_E`` energies (both compile-time), and keeps an
online log-sum-exp (forward) or an accumulated softmax-weighted μ/ρ (backward) per pixel. Every
tile is two-dimensional ``(BLOCK_P, BLOCK_E)`` (why: ``docs/physics.md``). Float32 throughout.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["attenuation_backward_kernel", "attenuation_forward_kernel"]


@triton.jit
def _exponents(t_ptr, mu_ptr, logw_ptr, pix_off, pix_ok, e0, n_energies, s_tm, s_mm, s_me,
               N_MAT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_E: tl.constexpr):
    """``a[p, e] = log w_e − Σ_m μ[m, e] t[p, m]`` for one chunk of energies, ``(BLOCK_P, BLOCK_E)``.

    Masked energies get ``−inf``. The material sum is unrolled (``N_MAT`` is small), so every tile
    stays two-dimensional.
    """
    energy = e0 + tl.arange(0, BLOCK_E)
    e_ok = energy < n_energies
    log_w = tl.load(logw_ptr + energy, mask=e_ok, other=float("-inf"))
    a = tl.zeros([BLOCK_P, BLOCK_E], tl.float32) + log_w[None, :]
    for m in tl.static_range(N_MAT):
        t_m = tl.load(t_ptr + pix_off + m * s_tm, mask=pix_ok, other=0.0).to(tl.float32)
        mu_m = tl.load(mu_ptr + m * s_mm + energy * s_me, mask=e_ok, other=0.0)
        a -= t_m[:, None] * mu_m[None, :]
    return a


@triton.jit
def attenuation_forward_kernel(t_ptr, mu_ptr, logw_ptr, lse_ptr, i_ptr, line_ptr, n_pixels, per_image,
                               n_energies, s_tn, s_tm, s_tp, s_mm, s_me,
                               N_MAT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_E: tl.constexpr,
                               N_CHUNKS: tl.constexpr):
    """Per pixel: ``lse = logsumexp_E a_E``, ``i_atten = exp(lse)``, ``line_integral = −lse``."""
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pix_ok = pix < n_pixels
    img = pix // per_image
    pix_off = img * s_tn + (pix - img * per_image) * s_tp
    run_max = tl.full([BLOCK_P], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_P], tl.float32)
    for chunk in tl.static_range(N_CHUNKS):
        a = _exponents(t_ptr, mu_ptr, logw_ptr, pix_off, pix_ok, chunk * BLOCK_E, n_energies, s_tm, s_mm, s_me,
                       N_MAT, BLOCK_P, BLOCK_E)
        new_max = tl.maximum(run_max, tl.max(a, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(a - new_max[:, None]), axis=1)
        run_max = new_max
    lse = run_max + tl.log(run_sum)
    tl.store(lse_ptr + pix, lse, mask=pix_ok)
    tl.store(i_ptr + pix, tl.exp(lse), mask=pix_ok)
    tl.store(line_ptr + pix, -lse, mask=pix_ok)


@triton.jit
def attenuation_backward_kernel(t_ptr, mu_ptr, logw_ptr, lse_ptr, gi_ptr, gl_ptr, gt_ptr, n_pixels, per_image,
                                n_energies, s_tn, s_tm, s_tp, s_mm, s_me, s_gn, s_gm, s_gp,
                                N_MAT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_E: tl.constexpr,
                                N_CHUNKS: tl.constexpr):
    """Per pixel: ``∂ℓ/∂t_m = (∂ℓ/∂line − i_atten ∂ℓ/∂i_atten) · Σ_E softmax_E(a) μ/ρ(m, E)``."""
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pix_ok = pix < n_pixels
    img = pix // per_image
    within = pix - img * per_image
    pix_off = img * s_tn + within * s_tp
    lse = tl.load(lse_ptr + pix, mask=pix_ok, other=0.0)
    grad_i = tl.load(gi_ptr + pix, mask=pix_ok, other=0.0)
    coeff = tl.load(gl_ptr + pix, mask=pix_ok, other=0.0) - tl.exp(lse) * grad_i
    out = gt_ptr + img * s_gn + within * s_gp
    for m in tl.static_range(N_MAT):  # one pass over the energies per material: all tiles stay 2-D
        mean_mu = tl.zeros([BLOCK_P], tl.float32)
        for chunk in tl.static_range(N_CHUNKS):
            e0 = chunk * BLOCK_E
            a = _exponents(t_ptr, mu_ptr, logw_ptr, pix_off, pix_ok, e0, n_energies, s_tm, s_mm, s_me,
                           N_MAT, BLOCK_P, BLOCK_E)
            energy = e0 + tl.arange(0, BLOCK_E)
            mu_m = tl.load(mu_ptr + m * s_mm + energy * s_me, mask=energy < n_energies, other=0.0)
            mean_mu += tl.sum(tl.exp(a - lse[:, None]) * mu_m[None, :], axis=1)
        tl.store(out + m * s_gm, coeff * mean_mu, mask=pix_ok)
