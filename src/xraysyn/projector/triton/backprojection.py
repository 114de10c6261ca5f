"""The single-image backprojector BP (paper eq. 7) as one Triton gather kernel (no gradient)."""

from __future__ import annotations

import numpy as np
import torch

from xraysyn.projector import frames
from xraysyn.projector.triton.checks import INT32_LIMIT, TritonBackendInputError, acc_torch_dtype, check_device, check_volume_size
from xraysyn.projector.triton.launch import accumulator, kernel_objects, next_power_of_two, on_device
from xraysyn.projector.triton.rays import frames_on_host, source_positions

__all__ = ["backproject"]

# Voxels per program of the backprojection gather kernel.
_BP_BLOCK_V = 256


def backproject(images: torch.Tensor, world_from_voxel: torch.Tensor, poses: torch.Tensor, geometry, volume_shape,
                isocenter: torch.Tensor | None = None, host_frames=None) -> torch.Tensor:
    """Voxel-driven single-image backprojector BP (paper eq. 7) in one kernel launch, no gradient.

    Same definition as :func:`xraysyn.projector.backproject` (the torch reference, which is also
    differentiable): each voxel centre is projected onto the detector and takes the bilinear image
    value there (border-clamped) divided by the chord length (mm) of the source→voxel ray inside
    the volume box; voxels projecting off the detector get 0.

    Args:
        images: ``(B, C, rows, cols)`` in ``u × mm`` (any strides; fp16/bf16 read directly).
        world_from_voxel: ``(B, 4, 4)`` voxel index → world mm affines.
        poses: ``(B, 4, 4)`` camera_from_isocenter of each image.
        geometry: the :class:`xraysyn.geometry.ConeBeamGeometry` that took the images.
        volume_shape: ``(D, H, W)``.
        isocenter: ``(B, 3)`` world mm; default each volume's centre.
        host_frames: optional float64 numpy copies ``(poses, affines, isocenter or None)`` of the three
            tensors above (see :func:`build_rays`); otherwise they are copied from the device here.

    Returns:
        ``(B, C, D, H, W)`` in ``u`` per mm, float32 (float64 for float64 images).
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise TritonBackendInputError("images must be a floating-point tensor of shape (B, C, rows, cols)")
    b, c, rows, cols = images.shape
    if (rows, cols) != tuple(geometry.detector_shape):
        raise TritonBackendInputError(f"images are {(rows, cols)} pixels but the detector is {geometry.detector_shape}")
    try:
        d, h, w = (int(s) for s in volume_shape)
    except (TypeError, ValueError):
        raise TritonBackendInputError(f"volume_shape must be (D, H, W), got {volume_shape!r}") from None
    check_volume_size(c, (d, h, w))
    if images.numel() > INT32_LIMIT:
        raise TritonBackendInputError(f"{tuple(images.shape)} images exceed 32-bit indexing; split the batch")
    device = check_device(images, world_from_voxel, poses)
    acc_dtype = acc_torch_dtype(images.dtype)
    if tuple(world_from_voxel.shape) != (b, 4, 4) or tuple(poses.shape) != (b, 4, 4):
        raise TritonBackendInputError(f"world_from_voxel and poses must be ({b}, 4, 4), got "
                                      f"{tuple(world_from_voxel.shape)} and {tuple(poses.shape)}")
    pose, affines, iso, voxel_from_world = frames_on_host(poses, world_from_voxel, isocenter, host_frames, (d, h, w))
    # per item, in float64 on the host: camera_from_voxel (3, 4), the world vector source→voxel as a
    # (3, 4) map of the voxel index, and the source in voxel index coordinates (3,)
    rot = pose[:, :3, :3]
    cam_lin = rot @ affines[:, :3, :3]
    cam_off = (rot @ (affines[:, :3, 3] - iso)[..., None])[..., 0] + pose[:, :3, 3]
    source_world = source_positions(pose, iso)
    source_voxel = (voxel_from_world[:, :3, :3] @ source_world[..., None])[..., 0] + voxel_from_world[:, :3, 3]
    source_to_voxel = np.concatenate([affines[:, :3, :3], (affines[:, :3, 3] - source_world)[..., None]], -1)
    row0, col0 = geometry.center_pixel
    row_mm, col_mm = geometry.pixel_spacing
    tiny = torch.finfo(acc_dtype).tiny ** 0.5  # the same guard as rays.clip_to_box
    host = np.concatenate([[geometry.sdd, row0, col0, row_mm, col_mm, tiny],
                           np.concatenate([cam_lin, cam_off[..., None]], -1).ravel(), source_to_voxel.ravel(),
                           source_voxel.ravel()])
    params = frames.to_device(host, device, acc_dtype)  # one host→device copy, queued without waiting
    detector, camera_from_voxel = params[:6], params[6:6 + 12 * b]
    rel, src = params[6 + 12 * b:6 + 24 * b], params[6 + 24 * b:]
    out = torch.empty(b, c, d, h, w, dtype=acc_dtype, device=device)
    n_voxels = d * h * w
    gather = kernel_objects().backproject
    with on_device(device):
        gather[(-(-n_voxels // _BP_BLOCK_V), b)](
            images.detach(), out, camera_from_voxel, rel, src, detector, n_voxels, d, h, w, c, rows, cols,
            *images.stride(), out.stride(0), out.stride(1),
            BLOCK_V=_BP_BLOCK_V, BLOCK_C=next_power_of_two(c), ACC=accumulator(acc_dtype), num_warps=4)
    return out
