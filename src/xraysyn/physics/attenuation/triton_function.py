"""The Triton implementation of the attenuation: one pass per direction, O(pixels) saved for the backward.

For ``a_E = log w_E − Σ_m μ/ρ(m, E) t_m`` and ``L = logsumexp_E a_E`` per pixel:

* forward (:func:`~xraysyn.physics.attenuation.triton_kernels.attenuation_forward_kernel`): an online
  log-sum-exp over the energies in registers; writes ``L``, ``I_atten = exp(L)``, ``line = −L``;
* backward: with ``c = ∂ℓ/∂line − I_atten · ∂ℓ/∂I_atten`` and the spectrum-averaged coefficient
  ``μ̄_m = Σ_E softmax_E(a) μ/ρ(m, E)`` (recomputed from the saved thickness and ``L``),
  ``∂ℓ/∂t_m = c · μ̄_m``.

Nothing of size ``pixels × energies`` is stored. Computes in float32 (other dtypes are converted
and the results converted back); gradients reach the thickness only.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os

import torch
from torch.autograd.function import once_differentiable

__all__ = ["TritonAttenuation", "triton_runs_on"]

# Pixels per Triton program and energies per inner step.
_BLOCK_PIXELS = 128
_BLOCK_ENERGIES = 32


@functools.lru_cache(maxsize=1)
def _triton_installed() -> bool:
    """Whether the triton package is installed (looked up once: an import-path search costs ~10 µs)."""
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_runs_on(device: torch.device) -> bool:
    """Whether the Triton kernels can run for tensors on ``device``: triton installed and a CUDA device, or a
    CPU device under Triton's interpreter (``TRITON_INTERPRET=1``)."""
    if not _triton_installed():
        return False
    return device.type == "cuda" or (device.type == "cpu" and _interpreting())


@functools.lru_cache(maxsize=1)
def _kernels():
    """``(forward_kernel, backward_kernel)``, imported on first use (so ``TRITON_INTERPRET`` is read then)."""
    from xraysyn.physics.attenuation import triton_kernels

    return triton_kernels.attenuation_forward_kernel, triton_kernels.attenuation_backward_kernel


def _energy_chunks(n_energies: int) -> int:
    """Chunks of ``_BLOCK_ENERGIES`` the kernels unroll to cover ``n_energies`` energies."""
    return max(1, -(-int(n_energies) // _BLOCK_ENERGIES))


def _on(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _as_float32(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach()
    return tensor if tensor.dtype == torch.float32 else tensor.float()


class TritonAttenuation(torch.autograd.Function):
    """``(thickness (N, M, rows, cols) g/cm², μ/ρ (M, E) cm²/g, log w (E,))`` → ``(i_atten, line_integral)``,
    each ``(N, 1, rows, cols)`` in the thickness dtype; gradient w.r.t. the thickness only."""

    @staticmethod
    def forward(ctx, thickness, mass_attenuation, log_weights):
        n, m, rows, cols = thickness.shape
        n_pixels, per_image = n * rows * cols, rows * cols
        t = _as_float32(thickness).flatten(2)
        mu = _as_float32(mass_attenuation)
        log_w = _as_float32(log_weights).contiguous()
        lse = torch.empty(n_pixels, dtype=torch.float32, device=t.device)
        i_atten = torch.empty_like(lse)
        line = torch.empty_like(lse)
        forward_kernel, _ = _kernels()
        grid = (-(-n_pixels // _BLOCK_PIXELS),)
        with _on(t.device):
            forward_kernel[grid](t, mu, log_w, lse, i_atten, line, n_pixels, per_image, mu.shape[1],
                                 *t.stride(), *mu.stride(), N_MAT=m, BLOCK_P=_BLOCK_PIXELS, BLOCK_E=_BLOCK_ENERGIES,
                                 N_CHUNKS=_energy_chunks(mu.shape[1]))
        ctx.save_for_backward(thickness, mass_attenuation, log_weights, lse)
        shape = (n, 1, rows, cols)
        return i_atten.to(thickness.dtype).reshape(shape), line.to(thickness.dtype).reshape(shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_i, grad_line):
        thickness, mass_attenuation, log_weights, lse = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        n, m, rows, cols = thickness.shape
        n_pixels, per_image = n * rows * cols, rows * cols
        grad_i = torch.zeros_like(lse) if grad_i is None else _as_float32(grad_i).reshape(-1).contiguous()
        grad_line = torch.zeros_like(lse) if grad_line is None else _as_float32(grad_line).reshape(-1).contiguous()
        t = _as_float32(thickness).flatten(2)
        mu = _as_float32(mass_attenuation)
        grad_t = torch.empty(n, m, per_image, dtype=torch.float32, device=t.device)
        _, backward_kernel = _kernels()
        grid = (-(-n_pixels // _BLOCK_PIXELS),)
        with _on(t.device):
            backward_kernel[grid](t, mu, _as_float32(log_weights).contiguous(), lse, grad_i, grad_line, grad_t,
                                  n_pixels, per_image, mu.shape[1], *t.stride(), *mu.stride(), *grad_t.stride(),
                                  N_MAT=m, BLOCK_P=_BLOCK_PIXELS, BLOCK_E=_BLOCK_ENERGIES,
                                  N_CHUNKS=_energy_chunks(mu.shape[1]))
        return grad_t.reshape(n, m, rows, cols).to(thickness.dtype), None, None
