"""The Triton backend of the ray march: fused forward line integrals and their exact adjoint.

Same contract and signatures as :class:`xraysyn.projector.cpu_numba.NumbaBackend` (the sampling model of
:mod:`xraysyn.projector.rays`); the torch reference in :mod:`xraysyn.projector.reference` stays the ground
truth (``tests/projector/test_triton.py``). Selected automatically by :func:`xraysyn.projector.forward_project`
for CUDA tensors when :func:`~xraysyn.projector.triton.available` is true, or with ``backend="triton"``.

Memory: no per-sample temporaries; the forward allocates its output ``(N, R, C)``, the adjoint one gradient
volume, plus a channels-last copy of the volume when ``C > 1`` and the input is channels-first (one cache
line per trilinear corner instead of ``C``), or the packed corner layouts within ``memory_budget_mib``.

Precision: float32 accumulation for float32/float16/bfloat16 volumes (low-precision volumes are read as
stored and converted in registers; the output is float32), float64 throughout for float64 inputs.
"""

from __future__ import annotations

import torch

from xraysyn.projector.backend import Capabilities
from xraysyn.projector.rays import RaySet
from xraysyn.projector.triton.checks import (
    TritonBackendInputError,
    acc_torch_dtype,
    check_device,
    check_rays,
    check_volume_size,
)
from xraysyn.projector.triton.config import active_config
from xraysyn.projector.triton.launch import (
    accumulator,
    adjoint_kernel,
    adjoint_switches,
    forward_switches,
    kernel_objects,
    launch,
    next_power_of_two,
    on_device,
    ray_tiling,
)
from xraysyn.projector.triton.layout import (
    PreparedVolume,
    checked_launch,
    finish_gradient,
    gradient_buffer,
    marched_layout,
    marched_volume,
)
from xraysyn.projector.triton.rays import build_rays, clear_kept_rays

__all__ = ["TritonBackend", "TritonBackendInputError", "addressing_strides"]

def addressing_strides(tensor: torch.Tensor) -> tuple[int, ...]:
    """``tensor``'s strides for a kernel's address arithmetic, with 1 for every dimension of size 1 (whose
    index is always 0, so any stride addresses the same elements). Torch calls a tensor contiguous whatever
    the stride of a size-1 dimension: ``images.reshape(n, 1, -1).permute(0, 2, 1).contiguous()`` (the public
    adjoint's and autograd's one-channel gradient) keeps stride ``rows · cols`` on its channel. Triton
    compiles a kernel specialised on the strides it is given (a stride of 1 becomes a constant). The
    one-channel packed adjoint compiled for the large stride ran 2.2× slower: W2's public adjoint took 22.6
    ms with the strides as given and 10.3 ms with this (H200, same run, 2026-11-27,
    ``benchmarks/results/gpu_h200_2026-11-27_strides.jsonl``), so every such stride is made 1."""
    return tuple(1 if size == 1 else stride for size, stride in zip(tensor.shape, tensor.stride()))


def _as_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` in ``dtype`` (itself when it already is: the kernels read raw memory, no autograd)."""
    return tensor if tensor.dtype == dtype else tensor.detach().to(dtype)


def _ray_args(rays: RaySet, acc_dtype: torch.dtype):
    """The kernels' ray arguments: ``rays``' six marched tensors (floats in ``acc_dtype``, n_samples int32,
    volume_index int64) and their strides."""
    origin, direction, t_near, delta, n_samples, volume_index = rays.march_tensors()
    origin, direction, t_near, delta = (_as_dtype(t, acc_dtype) for t in (origin, direction, t_near, delta))
    n_samples, volume_index = _as_dtype(n_samples, torch.int32), _as_dtype(volume_index, torch.int64)
    tensors = (origin, direction, t_near, delta, n_samples, volume_index)
    strides = (*origin.stride(), *direction.stride(), *t_near.stride(), *delta.stride(), *n_samples.stride())
    return tensors, strides


class TritonBackend:
    """Forward and adjoint of the :class:`~xraysyn.projector.backend.ProjectorBackend` protocol (the reference's
    ``march_forward`` / ``march_adjoint`` as GPU kernels), plus ``prepare_volume`` and ``build_rays``.

    How the kernels organise the work (detector tiles, packed corner layouts, the adjoint's corner carry,
    empty space skipping, kept ray sets, pinned launch configurations) follows the active
    :class:`~xraysyn.projector.triton.config.TritonConfig` (:func:`~xraysyn.projector.triton.config.use_config`);
    none of it changes results beyond float rounding order. On the GPU the launch configuration (rays per
    program, warps, samples per forward loop iteration) is autotuned once per (rays, channels, layout).
    """

    # fp16/bf16 volumes read as stored (float32 accumulation); the layout started ahead of the rays (and kept
    # for static volumes); the one-launch ray set-up; BP's gather kernel
    capabilities = Capabilities(devices=("cuda",), low_precision_volumes=True, prepares_volumes=True,
                                static_volumes=True, builds_rays=True, backprojects=True)

    @staticmethod
    def clear_kept_rays() -> None:
        """Drop the ray sets kept for recent geometries (``TritonConfig.keep_rays_mib``), returning their device memory
        to PyTorch's allocator."""
        clear_kept_rays()

    @staticmethod
    def build_rays(*args, **kwargs):
        """This backend's ray set-up: the one-launch kernel, :func:`build_rays` of this module (which also
        takes ``host_frames``)."""
        return build_rays(*args, **kwargs)

    @staticmethod
    def forward(volume: torch.Tensor, rays: RaySet, memory_budget_mib: float = 512.0, detector_cols=None,
                prepared: PreparedVolume | None = None) -> torch.Tensor:
        """Line integrals ``(N, R, C)`` in (voxel value × mm) of ``volume (B, C, D, H, W)`` along ``rays``.

        ``rays``: a :class:`xraysyn.projector.rays.RaySet` (``origin (N, 3)``, ``direction (N, R, 3)``,
        ``t_near``/``delta (N, R)`` mm, ``n_samples (N, R)`` int, ``volume_index (N,)``).
        ``memory_budget_mib`` bounds the packed copy of the volume (``TritonConfig.forward_pack``; without it the
        kernel needs no temporaries beyond its output and, for a channels-first multi-channel volume,
        a channels-last copy). ``detector_cols`` (optional) is the width of the detector
        raster the ``R`` rays come from; it only decides how rays are grouped into 2-D tiles for
        cache locality (default: a square detector when ``R`` is a square). ``prepared``: what
        :meth:`prepare_volume` made for this volume (its layout is then not made again).
        """
        if not isinstance(volume, torch.Tensor) or volume.dim() != 5 or not volume.is_floating_point():
            raise TritonBackendInputError("volume must be a floating-point tensor of shape (B, C, D, H, W)")
        device = check_device(volume, *rays.march_tensors())
        b, c = volume.shape[:2]
        check_volume_size(c, volume.shape[2:])
        n, r = check_rays(rays, b, c)
        acc_dtype = acc_torch_dtype(volume.dtype)
        if n == 0 or r == 0 or c == 0:
            with checked_launch(prepared):
                pass
            return torch.zeros(n, r, c, dtype=acc_dtype, device=device)
        # channel-major memory, (N, R, C) view: the kernel writes every (ray, channel) through the
        # strides, and the image layout (N, C, rows, cols) the API returns is then a free view
        out = torch.empty(n, c, r, dtype=acc_dtype, device=device).permute(0, 2, 1)
        config = active_config()
        marched = marched_volume(volume, memory_budget_mib, prepared, config)
        ray_args, ray_strides = _ray_args(rays, acc_dtype)
        kernels = kernel_objects()
        fwd, tuned = kernels.forward, kernels.tuned
        width, tile_w = ray_tiling(config.forward_tile_width, r, detector_cols, rays.direction)
        args = (marched.tensor, marched.occupancy_or_any(), out, *ray_args, r, width, *volume.shape[2:], c,
                *marched.strides, *ray_strides, *out.stride())
        meta = {"BLOCK_C": next_power_of_two(c), "ACC": accumulator(acc_dtype), "VEC": marched.vec,
                "TILE_W": tile_w, "PACK": marched.pack, "BRICK": marched.brick, **forward_switches(config, tuned)}
        with checked_launch(prepared), on_device(device):
            launch(fwd, tuned, n, r, width, tile_w, args, meta, pinned=config.forward_launch,
                    unroll=config.forward_unroll)
        return out

    @staticmethod
    def prepare_volume(volume: torch.Tensor, memory_budget_mib: float = 512.0,
                       check_finite: bool = False) -> PreparedVolume:
        """Start, ahead of :meth:`forward`, the work on ``volume (B, C, D, H, W)`` that needs no rays: the
        layout the march reads (packed or channels-last copy, asynchronous on a GPU) and, with
        ``check_finite``, the volume's NaN/inf scan — fused into the packing pass when that runs, else one
        reduction (``aminmax``). Nothing waits for the device here: the caller sets up the rays while the
        GPU copies, then reads ``finite_probe`` once (see :class:`PreparedVolume`)."""
        if not isinstance(volume, torch.Tensor) or volume.dim() != 5 or not volume.is_floating_point():
            raise TritonBackendInputError("volume must be a floating-point tensor of shape (B, C, D, H, W)")
        check_device(volume)
        check_volume_size(volume.shape[1], volume.shape[2:])
        probe = torch.zeros(1, dtype=torch.float32, device=volume.device) if check_finite else None
        marched, scanned = marched_layout(volume, memory_budget_mib, active_config(), probe)
        if check_finite and not scanned:
            probe = torch.stack(torch.aminmax(volume.detach().reshape(-1))).float()
        return PreparedVolume(volume, marched, probe)

    @staticmethod
    def adjoint(grad_out: torch.Tensor, volume_shape, rays: RaySet, memory_budget_mib: float = 512.0,
                detector_cols=None) -> torch.Tensor:
        """Exact transpose of :meth:`forward`: ``grad_out (N, R, C)`` → ``volume_shape (B, C, D, H, W)``.

        The result is float32 (float64 for float64 ``grad_out``): in channels-last-3d memory format (a
        permuted view of the ``(B, D, H, W, C)`` buffer the atomics add into), or contiguous when the
        packed adjoint (``TritonConfig.adjoint_pack``, used when its buffer fits ``memory_budget_mib``) sums its slots
        into a fresh tensor; values identical either way.
        """
        if not isinstance(grad_out, torch.Tensor) or grad_out.dim() != 3 or not grad_out.is_floating_point():
            raise TritonBackendInputError("grad_out must be a floating-point tensor of shape (N, R, C)")
        try:
            b, c, d, h, w = (int(s) for s in volume_shape)
        except (TypeError, ValueError):
            raise TritonBackendInputError(f"volume_shape must be (B, C, D, H, W), got {volume_shape!r}") from None
        device = check_device(grad_out, *rays.march_tensors())
        check_volume_size(c, (d, h, w))
        n, r = check_rays(rays, b, c)
        if tuple(grad_out.shape) != (n, r, c):
            raise TritonBackendInputError(f"grad_out must have shape {(n, r, c)}, got {tuple(grad_out.shape)}")
        acc_dtype = acc_torch_dtype(grad_out.dtype)
        if n == 0 or r == 0:
            return torch.zeros(b, d, h, w, c, dtype=acc_dtype, device=device).permute(0, 4, 1, 2, 3)
        ray_args, ray_strides = _ray_args(rays, acc_dtype)
        config = active_config()
        kernels = kernel_objects()
        tuned = kernels.tuned
        width, tile_w = ray_tiling(config.adjoint_tile_width, r, detector_cols, rays.direction)
        buffer, vec, grad_strides, pack = gradient_buffer((b, c, d, h, w), acc_dtype, device, memory_budget_mib,
                                                           config)
        args = (buffer, grad_out.detach(), *ray_args, r, width, d, h, w, c, *grad_strides, *ray_strides,
                *addressing_strides(grad_out))
        switches = adjoint_switches(config, pack, rays.direction, tuned=tuned)
        adj, launched = adjoint_kernel(kernels.adjoint, kernels.adjoint_carry_tuned, switches)
        meta = {"BLOCK_C": next_power_of_two(c), "ACC": accumulator(acc_dtype), "VEC": vec, "TILE_W": tile_w,
                "PACK": pack, **launched}
        with on_device(device):
            launch(adj, tuned, n, r, width, tile_w, args, meta, pinned=config.adjoint_launch)
        return finish_gradient(buffer, (b, c, d, h, w), pack, switches["PLANE"])
