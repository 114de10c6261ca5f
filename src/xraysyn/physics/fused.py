"""Fused polychromatic attenuation (CT2Xray epilogue, paper eq. 6) with a hand-written backward.

For areal thicknesses ``t_m`` (g/cm²) per pixel, mass attenuation coefficients ``μ/ρ(m, E)``
(cm²/g) and normalised spectrum weights ``w_E``:

    a_E = log w_E − Σ_m μ/ρ(m, E) t_m,     L = logsumexp_E a_E,
    I_atten = exp(L) = Σ_E w_E exp(−Σ_m μ/ρ(m, E) t_m),     line_integral = −L.

Forward: one pass over the pixels; each pixel runs an online log-sum-exp over the energies in
registers, so nothing of size ``pixels × energies`` is ever stored (the autograd graph of
:func:`xraysyn.physics.attenuation.log_attenuation` keeps one such tensor per energy chunk).
Backward: with ``c = ∂ℓ/∂line_integral − I_atten · ∂ℓ/∂I_atten`` per pixel and the
spectrum-averaged coefficient ``μ̄_m = Σ_E softmax_E(a) μ/ρ(m, E)`` (recomputed from the saved
thickness and ``L``), ``∂ℓ/∂t_m = c · μ̄_m`` — again one pass, saving only ``t`` and ``L``.

Two implementations of the same math: a Triton kernel (CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``) and a torch fallback that processes energies in chunks.
Gradients flow to the thickness only; when ``mass_attenuation`` requires grad (learned
coefficients) use :func:`xraysyn.physics.attenuation.attenuate` instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.autograd.function import once_differentiable

from xraysyn.physics.attenuation import coefficients_for
from xraysyn.physics.materials import DEFAULT_MATERIALS, MaterialTable
from xraysyn.physics.spectra import Spectrum
from xraysyn.projector.triton_backend import _triton_importable, interpreting

__all__ = ["IMPLEMENTATIONS", "FusedAttenuation", "fused_attenuate", "triton_available"]

IMPLEMENTATIONS = ("auto", "triton", "torch")
# Energies per step of the torch fallback's running log-sum-exp (bounds an (N·P, chunk) temporary).
_TORCH_ENERGY_CHUNK = 32
# Pixels per Triton program and energies per inner step.
_BLOCK_PIXELS = 128
_BLOCK_ENERGIES = 32


def triton_available(device: torch.device) -> bool:
    """Whether the Triton kernel can run for tensors on ``device`` (the projector backend's checks: triton
    installed, looked up once; a CUDA tensor, or a CPU tensor under Triton's interpreter)."""
    if not _triton_importable():
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and interpreting()


_KERNELS = None


def _kernels():
    """``(forward_kernel, backward_kernel)``, imported on first use (so ``TRITON_INTERPRET`` is read then)."""
    global _KERNELS
    if _KERNELS is None:
        from xraysyn.physics import fused_kernels

        _KERNELS = (fused_kernels.attenuation_forward_kernel, fused_kernels.attenuation_backward_kernel)
    return _KERNELS


def _energy_chunks(n_energies: int) -> int:
    """Chunks of ``_BLOCK_ENERGIES`` the kernels unroll to cover ``n_energies`` energies."""
    return max(1, -(-int(n_energies) // _BLOCK_ENERGIES))


# ----------------------------------------------------------------------------------------- torch path
def _torch_lse(t_flat: torch.Tensor, mu: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """``(Q,)`` log-sum-exp over energies for thickness rows ``(Q, M)``, energies in chunks."""
    result = None
    for start in range(0, mu.shape[1], _TORCH_ENERGY_CHUNK):
        stop = start + _TORCH_ENERGY_CHUNK
        part = torch.logsumexp(log_w[start:stop] - t_flat @ mu[:, start:stop], dim=1)
        result = part if result is None else torch.logaddexp(result, part)
    return result


def _torch_mean_mu(t_flat: torch.Tensor, mu: torch.Tensor, log_w: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """``(Q, M)`` spectrum-averaged μ/ρ under the per-pixel softmax of the exponents."""
    acc = torch.zeros_like(t_flat)
    for start in range(0, mu.shape[1], _TORCH_ENERGY_CHUNK):
        stop = start + _TORCH_ENERGY_CHUNK
        share = torch.exp(log_w[start:stop] - t_flat @ mu[:, start:stop] - lse[:, None])
        acc += share @ mu[:, start:stop].T
    return acc


# ----------------------------------------------------------------------------------------- autograd
class FusedAttenuation(torch.autograd.Function):
    """``(thickness (N, M, rows, cols) g/cm², μ/ρ (M, E) cm²/g, log w (E,), use_triton)`` →
    ``(i_atten, line_integral)``, each ``(N, 1, rows, cols)``; gradient w.r.t. thickness only."""

    @staticmethod
    def forward(ctx, thickness, mass_attenuation, log_weights, use_triton):
        n, m, rows, cols = thickness.shape
        per_image = rows * cols
        if use_triton:
            t = thickness.detach().flatten(2)
            if t.dtype != torch.float32:
                t = t.float()
            mu = mass_attenuation.detach().float()
            log_w = log_weights.detach().float().contiguous()
            lse = torch.empty(n * per_image, dtype=torch.float32, device=t.device)
            i_atten = torch.empty_like(lse)
            line = torch.empty_like(lse)
            fwd, _ = _kernels()
            grid = (-(-(n * per_image) // _BLOCK_PIXELS),)
            with _on(t.device):
                fwd[grid](t, mu, log_w, lse, i_atten, line, n * per_image, per_image, mu.shape[1],
                          *t.stride(), *mu.stride(), N_MAT=m, BLOCK_P=_BLOCK_PIXELS, BLOCK_E=_BLOCK_ENERGIES,
                          N_CHUNKS=_energy_chunks(mu.shape[1]))
            i_atten, line, lse = (x.to(thickness.dtype) for x in (i_atten, line, lse))
        else:
            t_flat = thickness.detach().permute(0, 2, 3, 1).reshape(-1, m)
            lse = _torch_lse(t_flat, mass_attenuation.to(t_flat.dtype), log_weights.to(t_flat.dtype))
            i_atten, line = torch.exp(lse), -lse
        ctx.save_for_backward(thickness, mass_attenuation, log_weights, lse)
        ctx.use_triton = use_triton
        shape = (n, 1, rows, cols)
        return i_atten.reshape(shape), line.reshape(shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_i, grad_line):
        thickness, mass_attenuation, log_weights, lse = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        n, m, rows, cols = thickness.shape
        per_image = rows * cols
        grad_i = torch.zeros_like(lse) if grad_i is None else grad_i.reshape(-1)
        grad_line = torch.zeros_like(lse) if grad_line is None else grad_line.reshape(-1)
        if ctx.use_triton:
            t = thickness.detach().flatten(2)
            if t.dtype != torch.float32:
                t = t.float()
            grad_t = torch.empty(n, m, per_image, dtype=torch.float32, device=t.device)
            _, bwd = _kernels()
            grid = (-(-(n * per_image) // _BLOCK_PIXELS),)
            mu = mass_attenuation.detach().float()
            with _on(t.device):
                bwd[grid](t, mu, log_weights.detach().float().contiguous(), lse.float().contiguous(),
                          grad_i.float().contiguous(), grad_line.float().contiguous(), grad_t, n * per_image,
                          per_image, mu.shape[1], *t.stride(), *mu.stride(), *grad_t.stride(),
                          N_MAT=m, BLOCK_P=_BLOCK_PIXELS, BLOCK_E=_BLOCK_ENERGIES,
                          N_CHUNKS=_energy_chunks(mu.shape[1]))
            return grad_t.reshape(n, m, rows, cols).to(thickness.dtype), None, None, None
        t_flat = thickness.detach().permute(0, 2, 3, 1).reshape(-1, m)
        mean_mu = _torch_mean_mu(t_flat, mass_attenuation.to(t_flat.dtype), log_weights.to(t_flat.dtype), lse)
        coeff = grad_line - torch.exp(lse) * grad_i
        grad_t = (coeff[:, None] * mean_mu).reshape(n, rows, cols, m).permute(0, 3, 1, 2)
        return grad_t, None, None, None


def _on(device: torch.device):
    import contextlib

    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


# ----------------------------------------------------------------------------------------- public
def fused_attenuate(thickness: torch.Tensor, spectrum: Spectrum, *, mass_attenuation: torch.Tensor | None = None,
                    materials: Sequence[str] = DEFAULT_MATERIALS, table: MaterialTable | None = None,
                    implementation: str = "auto", check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Transmitted fraction and its negative log in one pass, ``(i_atten, line_integral)`` each ``(N, 1, rows, cols)``.

    Same values as :func:`xraysyn.physics.attenuation.attenuate` (``i_atten`` in [0, 1] relative to
    the unattenuated beam, ``line_integral = −log i_atten`` dimensionless), with O(pixels) memory
    for the backward.

    Args:
        thickness: ``(N, M, rows, cols)`` areal densities in g/cm² of the M ``materials``.
        spectrum: energies (keV) and normalised weights.
        mass_attenuation: optional ``(M, E)`` μ/ρ in cm²/g at the spectrum's energies (no gradient
            flows to it); default looked up in ``table`` for ``materials``.
        materials: names of the thickness channels (default bone, tissue).
        table: μ/ρ table (default the shipped one).
        implementation: ``"auto"`` (Triton where it can run, else torch), ``"triton"`` or ``"torch"``.
        check_finite: raise for NaN/inf thicknesses (one read of them and, on a GPU, a synchronisation);
            False only where the caller knows them finite (CT2Xray of a volume checked finite).

    The Triton path computes in float32 (float64 inputs are rounded to float32); the torch
    path computes in the thickness dtype.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if not isinstance(thickness, torch.Tensor) or thickness.dim() != 4 or not thickness.is_floating_point():
        shape = tuple(thickness.shape) if isinstance(thickness, torch.Tensor) else type(thickness).__name__
        raise ValueError(f"thickness must be a floating-point tensor (N, M, rows, cols) in g/cm², got {shape}")
    if isinstance(materials, str) or thickness.shape[1] != len(materials):
        raise ValueError(f"thickness has {thickness.shape[1]} material channels but materials lists "
                         f"{len(materials)}: {tuple(materials) if not isinstance(materials, str) else materials!r}")
    if not isinstance(spectrum, Spectrum):
        raise ValueError(f"spectrum must be a Spectrum, got {type(spectrum).__name__}")  # noqa: TRY004
    if check_finite and not torch.isfinite(thickness).all():
        raise ValueError("thickness contains non-finite values (NaN or inf)")
    mass_attenuation, log_w = coefficients_for(spectrum, mass_attenuation, materials, table, dtype=thickness.dtype,
                                               device=thickness.device)
    mass_attenuation = torch.as_tensor(mass_attenuation, dtype=thickness.dtype, device=thickness.device)
    n_energies = spectrum.energies_keV.size
    if tuple(mass_attenuation.shape) != (len(materials), n_energies):
        raise ValueError(f"mass_attenuation must have shape (M, E) = ({len(materials)}, {n_energies}), "
                         f"got {tuple(mass_attenuation.shape)}")
    if mass_attenuation.requires_grad:
        raise ValueError("mass_attenuation requires grad, but fused_attenuate differentiates the thickness only; "
                         "use xraysyn.physics.attenuation.attenuate for learned coefficients")
    can_triton = triton_available(thickness.device)
    if implementation == "triton" and not can_triton:
        raise ValueError("implementation 'triton' needs the triton package and a CUDA tensor "
                         f"(or TRITON_INTERPRET=1 for CPU tensors), got device {thickness.device}")
    use_triton = implementation == "triton" or (implementation == "auto" and can_triton
                                                and thickness.device.type == "cuda")
    return FusedAttenuation.apply(thickness, mass_attenuation, log_w, use_triton)
