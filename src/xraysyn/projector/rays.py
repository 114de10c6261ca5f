"""Rays of a cone-beam view in the voxel index space of a volume, clipped to the volume box.

This is the contract shared by every projector backend (torch reference, numba CPU, Triton GPU):

* A ray is ``p(t) = origin + t * direction`` in voxel index coordinates ``(i, j, k)``, where
  ``t`` is the distance in mm along the world ray (``direction`` is the world unit vector mapped
  to voxel units, so ``|direction|`` is 1 / spacing along the ray).
* The ray is clipped to the volume's physical box ``[-0.5, n - 0.5]`` on each axis (voxel edges)
  and to the segment between the source and the detector pixel; the clipped part has length
  ``length = n_samples * delta`` mm.
* Sample ``s`` (0-based, ``s < n_samples``) sits at ``t = t_near + (s + 0.5) * delta`` (midpoint
  rule) and contributes ``trilinear(volume, p(t)) * delta``.
* Trilinear interpolation treats voxel values as samples at voxel centres, with the coordinate
  clamped to ``[0, n - 1]`` on each axis (the half voxel at each face repeats the face value),
  so a uniform volume of value ``v`` integrates to exactly ``v * length``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xraysyn.geometry import ConeBeamGeometry, pose_source_position, volume_center

__all__ = ["RaySet", "build_rays", "clip_to_box", "sample_counts"]


@dataclass
class RaySet:
    """Rays for ``N`` views of ``R = rows * cols`` pixels each.

    Attributes:
        origin: ``(N, 3)`` source position in voxel index coordinates of the view's volume.
        direction: ``(N, R, 3)`` voxel-index displacement per mm travelled along each ray.
        t_near: ``(N, R)`` mm from the source to the ray's entry into the volume box.
        delta: ``(N, R)`` sample spacing in mm (``length / n_samples``; 0 for rays that miss).
        n_samples: ``(N, R)`` int32 number of samples (0 for rays that miss the volume).
        volume_index: ``(N,)`` int64, which volume of the batch each view looks at.
        length: ``(N, R)`` mm, the clipped chord length inside the volume box.
    """

    origin: torch.Tensor
    direction: torch.Tensor
    t_near: torch.Tensor
    delta: torch.Tensor
    n_samples: torch.Tensor
    volume_index: torch.Tensor
    length: torch.Tensor

    @property
    def num_views(self) -> int:
        return self.origin.shape[0]

    @property
    def rays_per_view(self) -> int:
        return self.direction.shape[1]

    def march_tensors(self) -> tuple[torch.Tensor, ...]:
        """The six tensors a march reads, in the order the kernels take them: ``origin``, ``direction``,
        ``t_near``, ``delta``, ``n_samples``, ``volume_index`` (all but ``length``)."""
        return self.origin, self.direction, self.t_near, self.delta, self.n_samples, self.volume_index


def clip_to_box(origin: torch.Tensor, direction: torch.Tensor, spatial_shape, t_max: torch.Tensor):
    """Slab-method intersection of rays with the box ``[-0.5, n - 0.5]^3`` in voxel coordinates.

    Args:
        origin: ``(N, 1, 3)`` or ``(N, R, 3)`` ray origins (voxel coordinates).
        direction: ``(N, R, 3)`` voxel displacement per mm.
        spatial_shape: ``(D, H, W)``.
        t_max: ``(N, R)`` mm, where each ray ends (the detector).

    Returns:
        ``(t_near, t_far)`` each ``(N, R)`` in mm, with ``t_far >= t_near`` (equal when the ray
        misses). Differentiable almost everywhere.
    """
    lo = torch.full((3,), -0.5, dtype=direction.dtype, device=direction.device)
    hi = torch.tensor([float(s) - 0.5 for s in spatial_shape], dtype=direction.dtype, device=direction.device)
    tiny = torch.finfo(direction.dtype).tiny ** 0.5
    safe = torch.where(direction.abs() < tiny, torch.full_like(direction, tiny), direction)
    t1 = (lo - origin) / safe
    t2 = (hi - origin) / safe
    t_enter = torch.minimum(t1, t2).amax(dim=-1)
    t_exit = torch.maximum(t1, t2).amin(dim=-1)
    t_near = t_enter.clamp(min=0.0)
    t_far = torch.minimum(t_exit, t_max)
    t_far = torch.maximum(t_far, t_near)
    return t_near, t_far


def sample_counts(length: torch.Tensor, step_mm: float | None, num_samples: int | None) -> torch.Tensor:
    """Number of midpoint samples per ray: ``ceil(length / step_mm)`` or a fixed ``num_samples``."""
    hit = length > 0
    if num_samples is not None:
        return torch.where(hit, int(num_samples), 0).to(torch.int32)
    n = torch.ceil(length.detach() / step_mm - 1e-6).clamp(min=1)
    return torch.where(hit, n, 0).to(torch.int32)


def build_rays(
    poses: torch.Tensor,
    world_from_voxel: torch.Tensor,
    spatial_shape,
    geometry: ConeBeamGeometry,
    *,
    step_mm: float | None = None,
    num_samples: int | None = None,
    isocenter: torch.Tensor | None = None,
) -> RaySet:
    """Build the clipped rays of every view.

    Args:
        poses: ``(N, 4, 4)`` ``camera_from_isocenter`` transforms, ``N = B * V`` ordered
            volume-major (the ``V`` views of volume 0 first).
        world_from_voxel: ``(B, 4, 4)`` affines (mm).
        spatial_shape: ``(D, H, W)`` of the volumes.
        geometry: the C-arm.
        step_mm / num_samples: sample spacing in mm (rounded per ray so the samples tile the
            chord exactly), or a fixed number of samples per ray. Exactly one may be given;
            neither means half the smallest voxel spacing.
        isocenter: ``(B, 3)`` world mm; ``None`` means each volume's centre.

    Differentiable with respect to ``poses`` and ``world_from_voxel`` (through origin,
    direction, t_near and delta).
    """
    n_views, n_vol = poses.shape[0], world_from_voxel.shape[0]
    views_per_volume = n_views // n_vol
    if isocenter is None:
        isocenter = volume_center(world_from_voxel, spatial_shape)
    volume_index = torch.arange(n_vol, device=poses.device).repeat_interleave(views_per_volume)
    if step_mm is None and num_samples is None:
        spacing = world_from_voxel[:, :3, :3].norm(dim=-2)
        step_mm = float(spacing.min()) / 2.0

    dtype = poses.dtype
    pixel_dirs = geometry.pixel_directions(dtype=dtype, device=poses.device).reshape(-1, 3)  # (R, 3)
    pixel_dist = pixel_dirs.norm(dim=-1)  # mm from source to pixel centre
    unit_cam = pixel_dirs / pixel_dist[:, None]
    rot_world_from_cam = poses[:, :3, :3].transpose(-1, -2)  # (N, 3, 3)
    source_world = pose_source_position(poses) + isocenter[volume_index]  # (N, 3)
    unit_world = unit_cam @ rot_world_from_cam.transpose(-1, -2)  # (N, R, 3)

    voxel_from_world = torch.linalg.inv(world_from_voxel)[volume_index]  # (N, 4, 4)
    lin = voxel_from_world[:, :3, :3]
    origin = (lin @ source_world[:, :, None]).squeeze(-1) + voxel_from_world[:, :3, 3]
    direction = unit_world @ lin.transpose(-1, -2)

    t_max = pixel_dist.expand(n_views, -1)
    t_near, t_far = clip_to_box(origin[:, None, :], direction, spatial_shape, t_max)
    length = t_far - t_near
    n = sample_counts(length, step_mm, num_samples)
    delta = length / n.clamp(min=1).to(dtype)
    return RaySet(origin=origin, direction=direction, t_near=t_near, delta=delta, n_samples=n,
                  volume_index=volume_index, length=length)

