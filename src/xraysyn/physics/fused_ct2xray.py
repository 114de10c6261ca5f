"""CT2Xray in one kernel per direction: projection of the material density volumes and polychromatic
attenuation fused (paper eq. 3-6).

:func:`project_and_attenuate` takes the per-material density volumes ``(B, M, D, H, W)`` (g/cm³) and
returns the thickness maps ``t_m`` (g/cm², eq. 3-4), the transmitted fraction ``I_atten`` and
``line_integral = −log I_atten`` (eq. 5-6), with the same values as projecting with
:func:`xraysyn.projector.forward_project`, dividing by :data:`~xraysyn.physics.units.MM_PER_CM` and
calling :func:`xraysyn.physics.attenuation.attenuate`. Where the projector would use its Triton backend
(CUDA tensors, no pose gradients, float32/fp16/bf16 volumes) the spectral sum runs as the epilogue of
the ray-march kernel and its backward as the prologue of the adjoint kernel
(:mod:`xraysyn.physics.fused_ct2xray_kernels`): no image-sized intermediate is written and read back
between projection and attenuation, and the backward saves O(rays) (thicknesses and ``log I``).
Elsewhere the function composes the unfused steps, so it can always be called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from xraysyn.geometry import ConeBeamGeometry
from xraysyn.physics.attenuation import attenuate, spectral_coefficients
from xraysyn.physics.fused import _BLOCK_ENERGIES, _energy_chunks
from xraysyn.physics.materials import DEFAULT_MATERIALS, MaterialTable
from xraysyn.physics.spectra import Spectrum
from xraysyn.physics.units import MM_PER_CM, areal_density_from_line_integral

__all__ = ["project_and_attenuate", "ProjectAttenuate"]


class _FusedKernels(NamedTuple):
    """The fused march kernel objects; ``tuned``: autotuned (the GPU); ``adjoint_carry_tuned``: the adjoint
    autotuned over the corner carry too (None when not tuned, see ``TritonBackend.TUNE_PLANE_CARRY``)."""

    forward: object
    adjoint: object
    tuned: bool
    adjoint_carry_tuned: object = None


_KERNELS: _FusedKernels | None = None


def _kernels() -> _FusedKernels:
    """The fused kernel objects, compiled on first use (``TRITON_INTERPRET`` read then)."""
    global _KERNELS
    if _KERNELS is None:
        from xraysyn.physics import fused_ct2xray_kernels as k
        from xraysyn.projector import triton_backend as tb

        if tb.interpreting():
            _KERNELS = _FusedKernels(k.march_attenuate_kernel, k.march_attenuate_adjoint_kernel, False)
        else:
            key = ("n_energies",)
            _KERNELS = _FusedKernels(
                tb.autotuned_march(k.march_attenuate_kernel, forward=True, extra_key=key),
                tb.autotuned_march(k.march_attenuate_adjoint_kernel, forward=False, extra_key=key), True,
                tb.autotuned_march(k.march_attenuate_adjoint_kernel, forward=False, extra_key=key, tune_carry=True))
    return _KERNELS


class ProjectAttenuate(torch.autograd.Function):
    """``densities (B, M, D, H, W)`` g/cm³ → ``(thickness (N, R, M) g/cm², i_atten (N, R), line (N, R))`` along
    the rays of a :class:`~xraysyn.projector.rays.RaySet`, in the fused Triton kernels; gradient w.r.t. the
    densities only (the exact transpose of the march composed with the attenuation's derivative)."""

    @staticmethod
    def forward(ctx, densities, origin, direction, t_near, delta, n_samples, volume_index, mass_attenuation,
                log_weights, memory_budget_mib, prepared=None):
        from xraysyn.projector import triton_backend as tb

        b, m = densities.shape[:2]
        tb._check_volume_size(m, densities.shape[2:])
        n, r = tb._check_rays(origin, direction, t_near, delta, n_samples, volume_index, b, m)
        device = densities.device
        mu = mass_attenuation.detach().to(device=device, dtype=torch.float32)
        log_w = log_weights.detach().to(device=device, dtype=torch.float32).contiguous()
        thick = torch.empty(n, m, r, dtype=torch.float32, device=device).permute(0, 2, 1)  # image layout, free
        lse, i_atten, line = (torch.empty(n, r, dtype=torch.float32, device=device) for _ in range(3))
        marched = tb._marched_volume(densities, memory_budget_mib, prepared)
        rays, ray_strides = tb._ray_args(origin, direction, t_near, delta, n_samples, volume_index, torch.float32)
        kernels = _kernels()
        fwd, tuned = kernels.forward, kernels.tuned
        width, tile_w = tb._ray_tiling(r, None, forward=True, direction=direction)
        args = (marched.tensor, marched.occupancy_or_any(), thick, lse, i_atten, line, mu, log_w, *rays, r, width,
                *densities.shape[2:], m, mu.shape[1], 1.0 / MM_PER_CM, *marched.strides, *ray_strides,
                *thick.stride(), *mu.stride())
        meta = {"BLOCK_C": tb._next_power_of_two(m), "ACC": tb._accumulator(torch.float32), "VEC": marched.vec,
                "TILE_W": tile_w, "PACK": marched.pack, "BRICK": marched.brick, "N_MAT": m, "BLOCK_E": _BLOCK_ENERGIES,
                "N_CHUNKS": _energy_chunks(mu.shape[1]), **tb.forward_switches(tuned)}
        if n and r:
            with tb.checked_launch(prepared), tb._on(device):
                tb._launch(fwd, tuned, n, r, width, tile_w, args, meta, forward=True, items=b)
        else:  # no rays: nothing attenuates (the volume is checked all the same)
            with tb.checked_launch(prepared):
                pass
            thick.zero_()
            lse.zero_()
            i_atten.fill_(1.0)
            line.zero_()
        ctx.save_for_backward(origin, direction, t_near, delta, n_samples, volume_index, thick, lse, mu, log_w)
        ctx.volume_shape = tuple(densities.shape)
        ctx.volume_dtype = densities.dtype
        ctx.memory_budget_mib = memory_budget_mib
        return thick, i_atten, line

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_thick, grad_i, grad_line):
        if not ctx.needs_input_grad[0]:
            return (None,) * 11
        from xraysyn.projector import triton_backend as tb

        origin, direction, t_near, delta, n_samples, volume_index, thick, lse, mu, log_w = ctx.saved_tensors
        b, m, d, h, w = ctx.volume_shape
        n, r = lse.shape
        device = lse.device
        grad_i = torch.zeros_like(lse) if grad_i is None else grad_i.to(torch.float32).contiguous()
        grad_line = torch.zeros_like(lse) if grad_line is None else grad_line.to(torch.float32).contiguous()
        has_direct = grad_thick is not None
        direct = grad_thick.to(torch.float32) if has_direct else thick
        if has_direct and direct.stride() != thick.stride():
            direct = torch.empty_like(thick).copy_(direct)  # the kernel reads it with t's strides
        buffer, vec, grad_strides, pack = tb._gradient_buffer(ctx.volume_shape, torch.float32, device,
                                                                ctx.memory_budget_mib)
        kernels = _kernels()
        tuned = kernels.tuned
        switches = tb.adjoint_switches(pack, direction, tuned=tuned)
        if n and r:
            rays, ray_strides = tb._ray_args(origin, direction, t_near, delta, n_samples, volume_index, torch.float32)
            adj, launched = tb.adjoint_kernel(kernels.adjoint, kernels.adjoint_carry_tuned, switches)
            width, tile_w = tb._ray_tiling(r, None, forward=False, direction=direction)
            args = (buffer, thick, lse, grad_i, grad_line, direct, mu, log_w, *rays, r, width, d, h, w, m,
                    mu.shape[1], 1.0 / MM_PER_CM, *grad_strides, *ray_strides, *thick.stride(), *mu.stride())
            meta = {"BLOCK_C": tb._next_power_of_two(m), "ACC": tb._accumulator(torch.float32), "VEC": vec,
                    "TILE_W": tile_w, "PACK": pack, "N_MAT": m, "BLOCK_E": _BLOCK_ENERGIES,
                    "N_CHUNKS": _energy_chunks(mu.shape[1]), "HAS_GRAD_THICK": has_direct, **launched}
            with tb._on(device):
                tb._launch(adj, tuned, n, r, width, tile_w, args, meta, forward=False, items=b)
        grad = tb._finish_gradient(buffer, ctx.volume_shape, pack, switches["PLANE"]).to(ctx.volume_dtype)
        return (grad,) + (None,) * 10


# Whether ``project_and_attenuate(fused=None)`` (and so ``ct2xray``) takes the fused kernels where it can.
# Measured on one H200 (W1: 8 volumes of 2 × 128³ materials, 256² detector, 256 samples, forward + backward
# through I and −log I; benchmarks/gpu_kernels.py, 2026-11-26): fused 6.51 ms, march + separate fused
# attenuation 5.91 ms. The fused kernels save the image-sized intermediates, not time, so they are opt-in.
FUSED_BY_DEFAULT = False


def project_and_attenuate(densities: torch.Tensor, world_from_voxel, poses: torch.Tensor, geometry: ConeBeamGeometry,
                          spectrum: Spectrum, *, materials: Sequence[str] = DEFAULT_MATERIALS,
                          table: MaterialTable | None = None, fused: bool | None = None, **projector_kwargs):
    """Thickness maps, transmitted fraction and its negative log of material density volumes (eq. 3-6).

    Args:
        densities: ``(B, M, D, H, W)`` density (g/cm³) of each of the M ``materials`` per voxel.
        world_from_voxel: ``(B, 4, 4)`` or ``(4, 4)`` voxel → world mm affines.
        poses: ``(B·V, 4, 4)`` camera_from_isocenter poses (volume-major).
        geometry: the C-arm.
        spectrum: energies (keV) and normalised weights.
        materials: names of the density channels in the μ/ρ ``table`` (default bone, tissue).
        table: μ/ρ table (default the shipped one).
        fused: True forces the fused Triton kernels (an error where they cannot run), False the separate
            steps; default (None): fused where the projector chooses its Triton backend and the volumes
            are not float64, if ``FUSED_BY_DEFAULT`` (off: see there), else the separate steps.
        **projector_kwargs: ``step_mm``, ``num_samples``, ``isocenter``, ``memory_budget_mib``, ``backend``
            as for :func:`xraysyn.projector.forward_project`.

    Returns:
        ``(thickness (B·V, M, rows, cols) g/cm², i_atten (B·V, 1, rows, cols) in [0, 1], line_integral
        (B·V, 1, rows, cols) dimensionless)``; differentiable w.r.t. ``densities`` (both paths).
    """
    from xraysyn.projector.api import _DEFAULT_BUDGET_MIB, march_prepared, prepare_march
    from xraysyn.projector.triton_backend import TritonBackend

    if isinstance(materials, str) or not isinstance(densities, torch.Tensor) or densities.dim() != 5 \
            or densities.shape[1] != len(materials):
        shape = tuple(densities.shape) if isinstance(densities, torch.Tensor) else type(densities).__name__
        raise ValueError(f"densities must be (B, M, D, H, W) with one channel per material {tuple(materials)!r}, "
                         f"got {shape}")
    if not isinstance(spectrum, Spectrum):
        raise ValueError(f"spectrum must be a Spectrum, got {type(spectrum).__name__}")
    memory_budget_mib = projector_kwargs.get("memory_budget_mib", _DEFAULT_BUDGET_MIB)
    march = prepare_march(densities, world_from_voxel, poses, geometry, **projector_kwargs)
    vol, rays = march.volume, march.rays
    can_fuse = march.backend is TritonBackend and densities.dtype != torch.float64
    if fused and not can_fuse:
        raise ValueError("fused=True needs the projector's Triton backend (CUDA tensors, or TRITON_INTERPRET=1 "
                         "with backend='triton'), no pose gradients and float32/fp16/bf16 densities")
    if fused is None:
        fused = FUSED_BY_DEFAULT and can_fuse
    if not fused:  # the separate steps: projector, thickness units, attenuation
        thickness = areal_density_from_line_integral(march_prepared(march, geometry, memory_budget_mib))
        # the densities were checked finite (prepare_march), so are their projections: no second scan
        i_atten, line = attenuate(thickness, spectrum, materials=tuple(materials), table=table, check_finite=False)
        return thickness, i_atten, line
    mu, log_w = spectral_coefficients(spectrum, tuple(materials), table, dtype=torch.float32, device=densities.device)
    thick, i_atten, line = ProjectAttenuate.apply(vol, rays.origin, rays.direction, rays.t_near, rays.delta,
                                                  rays.n_samples, rays.volume_index, mu, log_w,
                                                  float(memory_budget_mib), march.prepared)
    rows, cols = geometry.detector_shape
    n = thick.shape[0]
    return (thick.permute(0, 2, 1).reshape(n, len(materials), rows, cols), i_atten.view(n, 1, rows, cols),
            line.view(n, 1, rows, cols))

