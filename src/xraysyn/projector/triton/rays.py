"""The Triton ray set-up: :func:`build_rays` sets up every ray of every view in one launch from a few numbers per
view computed on the host (remembered for recent frames), and keeps ray sets of geometries met again."""

from __future__ import annotations

import numpy as np
import torch

from xraysyn.host_cache import HostMemo, array_key
from xraysyn.projector import frames, kept_rays
from xraysyn.projector.triton.checks import INDEX_BOUND_ATTR, INT32_LIMIT, TritonBackendInputError, acc_torch_dtype, check_device
from xraysyn.projector.triton.config import active_config
from xraysyn.projector.triton.launch import DETECTOR_COLS_ATTR, DOMINANT_AXIS_ATTR, accumulator, kernel_objects, on_device

__all__ = ["build_rays", "clear_kept_rays", "frames_on_host", "source_positions"]

# Rays per program of the ray set-up kernel.
_SETUP_BLOCK_R = 256


# The ray set-up's host-side numbers for recently met frames and geometries, and the per-volume terms
# (isocenter, inverse affine) of recently met affines (small numpy arrays).
_RAY_SETUP_PARAMS = HostMemo(max_entries=64)


_VOLUME_TERMS = HostMemo(max_entries=64)


# Ray sets (device tensors) of recently met geometries, within TritonConfig.keep_rays_mib (see kept_rays.py).
_KEPT_RAYS = kept_rays.KeptRays()


def frames_on_host(poses, world_from_voxel, isocenter, host_frames, spatial_shape):
    """float64 numpy ``(poses (N, 4, 4), affines (B, 4, 4), isocenter (B, 3), voxel_from_world (B, 4, 4))``: the
    given host copies, else copied here; the isocenter defaults to the centre of each volume (as
    :func:`xraysyn.geometry.volume_center`). The last two depend on the affines only and are remembered for
    recent ones (:func:`_volume_terms`)."""
    if host_frames is not None:
        pose, affines, iso = host_frames
    else:
        pose = poses.detach().to("cpu", torch.float64).numpy()
        affines = world_from_voxel.detach().to("cpu", torch.float64).numpy()
        iso = None if isocenter is None else isocenter.detach().to("cpu", torch.float64).numpy()
    if pose.shape != tuple(poses.shape) or affines.shape != tuple(world_from_voxel.shape):
        raise TritonBackendInputError(f"host frames {pose.shape} / {affines.shape} do not match poses "
                                      f"{tuple(poses.shape)} / affines {tuple(world_from_voxel.shape)}")
    return (pose, affines, *_volume_terms(affines, iso, spatial_shape))


def _volume_terms(affines: np.ndarray, isocenter: np.ndarray | None, spatial_shape) -> tuple[np.ndarray, np.ndarray]:
    """``(isocenter (B, 3), voxel_from_world (B, 4, 4))`` float64 of ``affines (B, 4, 4)``: the given isocenter
    (broadcast) or each volume's centre, and the inverse affines; remembered for recent affines (read-only:
    a training loop draws new poses every step, rarely new affines)."""
    key = (array_key(affines), array_key(isocenter), tuple(int(s) for s in spatial_shape))
    kept = _VOLUME_TERMS.get(key)
    if kept is not None:
        return kept
    if isocenter is None:
        d, h, w = spatial_shape
        isocenter = (affines @ np.array([(d - 1) / 2, (h - 1) / 2, (w - 1) / 2, 1.0]))[:, :3]
    iso = np.array(np.broadcast_to(isocenter, (affines.shape[0], 3)))
    voxel_from_world = np.linalg.inv(affines)
    iso.flags.writeable = voxel_from_world.flags.writeable = False
    _VOLUME_TERMS.put(key, (iso, voxel_from_world))
    return iso, voxel_from_world


def source_positions(pose: np.ndarray, iso: np.ndarray) -> np.ndarray:
    """Source positions (world mm) of ``camera_from_isocenter`` poses ``(N, 4, 4)`` about isocenters ``(N, 3)``
    (numpy :func:`xraysyn.geometry.pose_source_position` + isocenter)."""
    return -(np.swapaxes(pose[:, :3, :3], -1, -2) @ pose[:, :3, 3:])[..., 0] + iso


def _ray_setup_params(poses, world_from_voxel, isocenter, host_frames, spatial_shape, geometry, step_mm, num_samples,
                      acc_dtype):
    """``((params, volume_index, dominant axis), key)``: what the ray set-up kernel reads (float64 numpy) —
    the detector numbers, then per view the source in voxel coordinates (3) and the camera-to-voxel map (9) —,
    each view's volume (int64 numpy) and the voxel axis the views' optical axes run along most
    (:func:`dominant_axis`); ``key``: everything the rays depend on, exactly (frames' bytes, shape,
    detector, sampling, dtype). A handful of 4 × 4 operations in float64 numpy (each ~1 µs; torch pays ~10 µs a
    call), skipped for frames and geometry met recently (:mod:`~xraysyn.host_cache`)."""
    pose, affines, iso, voxel_from_world = frames_on_host(poses, world_from_voxel, isocenter, host_frames,
                                                        spatial_shape)
    key = (array_key(pose), array_key(affines), array_key(iso), tuple(spatial_shape), geometry.sdd,
           tuple(geometry.detector_shape), tuple(geometry.center_pixel), tuple(geometry.pixel_spacing), step_mm,
           num_samples, acc_dtype)
    kept = _RAY_SETUP_PARAMS.get(key)
    if kept is not None:
        return kept, key
    n_views, n_vol = pose.shape[0], affines.shape[0]
    volume_index = np.repeat(np.arange(n_vol), n_views // n_vol)
    if step_mm is None and num_samples is None:
        step_mm = float(np.linalg.norm(affines[:, :3, :3], axis=-2).min()) / 2.0
    voxel_from_world = voxel_from_world[volume_index]
    lin = voxel_from_world[:, :3, :3]
    source_world = source_positions(pose, iso[volume_index])  # (N, 3) mm
    origin = (lin @ source_world[..., None])[..., 0] + voxel_from_world[:, :3, 3]  # (N, 3) voxel coords
    camera_to_voxel = lin @ np.swapaxes(pose[:, :3, :3], -1, -2)  # (N, 3, 3): camera unit vector → voxel per mm
    row0, col0 = geometry.center_pixel
    row_mm, col_mm = geometry.pixel_spacing
    tiny = torch.finfo(acc_dtype).tiny ** 0.5  # the same guard as rays.clip_to_box
    detector = np.array([geometry.sdd, row0, col0, row_mm, col_mm, tiny, step_mm or 1.0])
    params = np.concatenate([detector, np.concatenate([origin, camera_to_voxel.reshape(n_views, 9)], 1).ravel()])
    params.flags.writeable = volume_index.flags.writeable = False  # shared by later calls with the same key
    # the middle ray's direction is the camera's optical axis: column 2 of each view's camera→voxel map
    dominant = int(np.argmax(np.abs(camera_to_voxel[:, :, 2]).sum(0))) if n_views else 0
    _RAY_SETUP_PARAMS.put(key, (params, volume_index, dominant))
    return (params, volume_index, dominant), key


def build_rays(poses: torch.Tensor, world_from_voxel: torch.Tensor, spatial_shape, geometry, *,
               step_mm: float | None = None, num_samples: int | None = None,
               isocenter: torch.Tensor | None = None, host_frames=None):
    """:func:`xraysyn.projector.rays.build_rays` in one kernel launch (no gradients).

    Same arguments, same :class:`~xraysyn.projector.rays.RaySet` (the contract of every backend).
    The few numbers per view (source in voxel coordinates, camera-to-voxel direction map) are
    computed on the host in float64 numpy from the small pose/affine tensors; the kernel then builds,
    clips and counts the samples of every ray of every view. This replaces a few hundred small
    torch operations (launch-bound on a GPU) by one launch. ``n_samples`` follows the same rule
    (``ceil(length / step_mm − 1e-6)``); where ``length / step_mm`` lies within float rounding of
    that threshold the two implementations may count one sample apart.

    ``host_frames`` (optional): float64 numpy copies ``(poses, affines, isocenter or None)`` of the same
    three tensors (:class:`xraysyn.projector.frames.HostFrames`, made while validating them), which saves
    copying them back from the GPU again.
    """
    from xraysyn.projector.rays import RaySet

    device = poses.device
    check_device(poses, world_from_voxel)
    acc_dtype = acc_torch_dtype(poses.dtype)
    n_views, n_vol = poses.shape[0], world_from_voxel.shape[0]
    d, h, w = (int(s) for s in spatial_shape)
    rows, cols = geometry.detector_shape
    n_rays = rows * cols
    if n_views * n_rays * 3 > INT32_LIMIT:
        raise TritonBackendInputError(f"{n_views} views × {n_rays} rays exceed 32-bit indexing; split the views")
    (host, volume_index, dominant), key = _ray_setup_params(poses, world_from_voxel, isocenter, host_frames,
                                                            (d, h, w), geometry, step_mm, num_samples, acc_dtype)
    keep_bytes = int(active_config().keep_rays_mib * 2**20)
    if keep_bytes > 0:
        key = (key, kept_rays.device_key(device))
        kept = _KEPT_RAYS.get(key)
        if kept is not None:
            return kept
    # copies: the memo's read-only arrays must not become the storage of tensors a caller could write to
    params = frames.to_device(host, device, acc_dtype)  # queued without waiting for the packing pass
    direction = torch.empty(n_views, n_rays, 3, dtype=acc_dtype, device=device)
    t_near = torch.empty(n_views, n_rays, dtype=acc_dtype, device=device)
    delta = torch.empty_like(t_near)
    length = torch.empty_like(t_near)
    n_samples = torch.empty(n_views, n_rays, dtype=torch.int32, device=device)
    setup = kernel_objects().ray_setup
    with on_device(device):
        setup[(-(-n_rays // _SETUP_BLOCK_R), n_views)](
            params, direction, t_near, delta, length, n_samples, n_rays, cols, d, h, w, int(num_samples or 0),
            BLOCK_R=_SETUP_BLOCK_R, ACC=accumulator(acc_dtype), FIXED_SAMPLES=num_samples is not None, num_warps=4)
    # the sources (voxel coordinates): the first 3 of each view's 12 numbers after the 7 shared ones (one view op)
    origin_dev = params.as_strided((n_views, 3), (12, 1), params.storage_offset() + 7)
    index = frames.to_device(volume_index, device)
    setattr(index, INDEX_BOUND_ATTR, n_vol)
    setattr(direction, DOMINANT_AXIS_ATTR, dominant)
    setattr(direction, DETECTOR_COLS_ATTR, int(cols))
    rays = RaySet(origin=origin_dev, direction=direction, t_near=t_near, delta=delta, n_samples=n_samples,
                  volume_index=index, length=length)
    if keep_bytes > 0:
        _KEPT_RAYS.put(key, rays, keep_bytes)
    return rays


def clear_kept_rays() -> None:
    """Drop the ray sets kept for recent geometries (``TritonConfig.keep_rays_mib``), returning their device
    memory to PyTorch's allocator."""
    _KEPT_RAYS.clear()
