"""Empty space skipping of the forward march: which samples of a ray can be skipped exactly.

A sample whose cell has eight zero corners (in every channel) adds an exact zero to the line integral.
The Triton forward march (``TritonConfig.skip_empty_brick``) skips, per ray, the samples before the first
and after the last one that may have a non-zero corner. It finds them coarsely:

1. **Marks.** Split the volume into bricks of ``brick³`` voxels (the last ones partial) and mark each brick
   holding a non-zero voxel (:func:`occupied_bricks`), then also every neighbour of a marked brick
   (:func:`dilate_bricks`, 3 × 3 × 3).
2. **Walk.** Look up the (dilated) mark of the cell of every ``stride``-th sample of a ray
   (:func:`walk_stride`: the sample's largest per-axis move ``step`` voxels gives ``stride = 1 +
   ⌊(brick − 1 − WALK_ROUNDING_VOXELS) / step⌋``). The ray marches from the first marked look-up to one
   stride past the last (:func:`occupied_range`).

Why it is exact: a sample ``k`` with a non-zero corner ``v`` is at most ``stride − 1`` samples after the walk
sample ``k0 = stride · ⌊k / stride⌋``, so at most ``Δ = (stride − 1) · step < brick − 1`` voxels from it along
each axis; cells are (clamped) floors of positions, so ``|v − cell(k0)| ≤ ⌊Δ⌋ + 2 ≤ brick`` per axis and ``v``
lies in the brick of ``cell(k0)`` or a neighbour of it: that look-up is marked. ``WALK_ROUNDING_VOXELS``
covers float32 rounding between the walk's positions and the march's.

This module is the torch statement of the rule (the kernels' reference in the tests, and the CPU replay
``tools/gpu/empty_space.py``); the kernels are ``_occupied_range`` in :mod:`xraysyn.projector.triton.kernels.march`
and the marking passes in :mod:`xraysyn.projector.triton.kernels.layout`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xraysyn.projector.rays import RaySet

# Float32 rounding (voxels) allowed between the walk's sample positions and the march's.
WALK_ROUNDING_VOXELS = 0.05
# Largest walk stride (samples): a ray shorter than it is looked up once (any ray with a tiny step).
WALK_MAX_STRIDE = 1 << 20


def brick_grid(spatial_shape, brick: int) -> tuple[int, int, int]:
    """Bricks of ``brick³`` voxels covering a ``(D, H, W)`` volume along each axis (the last ones partial)."""
    return tuple(-(-int(n) // brick) for n in spatial_shape)


def occupied_bricks(volume: torch.Tensor, brick: int) -> torch.Tensor:
    """``(B, ⌈D/brick⌉, ⌈H/brick⌉, ⌈W/brick⌉)`` bool: the bricks of ``volume (B, C, D, H, W)`` holding a
    non-zero value in any channel."""
    b, _, d, h, w = volume.shape
    gd, gh, gw = brick_grid((d, h, w), brick)
    nonzero = (volume != 0).any(dim=1).float()
    padded = F.pad(nonzero, (0, gw * brick - w, 0, gh * brick - h, 0, gd * brick - d))
    return F.max_pool3d(padded[:, None], brick, brick)[:, 0] > 0


def dilate_bricks(marks: torch.Tensor) -> torch.Tensor:
    """``marks (B, gd, gh, gw)`` bool, also set on every neighbour (3 × 3 × 3) of a set brick."""
    return F.max_pool3d(marks[:, None].float(), 3, 1, 1)[:, 0] > 0


def walk_stride(direction: torch.Tensor, delta: torch.Tensor, brick: int) -> torch.Tensor:
    """Samples between the walk's look-ups (int32 ``(N, R)``) for rays of ``direction (N, R, 3)`` (voxels per
    mm) and sample spacing ``delta (N, R)`` mm, computed in float32 as the kernel does."""
    step = delta.float() * direction.float().abs().amax(dim=-1)  # voxels per sample, largest axis
    reach = torch.tensor(brick - 1.0 - WALK_ROUNDING_VOXELS, dtype=torch.float32)
    return (reach / torch.clamp(step, min=float(reach) / WALK_MAX_STRIDE)).to(torch.int32) + 1


def occupied_range(rays: RaySet, occupancy: torch.Tensor, spatial_shape,
                   brick: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first, end)`` int64 ``(N, R)``: the samples ``first .. end − 1`` each ray of the
    :class:`~xraysyn.projector.rays.RaySet` ``rays`` marches with empty space skipping over the dilated
    ``occupancy (B, gd, gh, gw)`` (bool; :func:`dilate_bricks` of :func:`occupied_bricks`) of volumes of
    ``spatial_shape (D, H, W)``; ``first = end = 0`` for a ray meeting no marked brick. Float32 positions, as
    the kernels compute them."""
    origin, direction, t_near, delta, n_samples, volume_index = rays.march_tensors()
    size = torch.tensor([int(n) for n in spatial_shape])
    stride = walk_stride(direction, delta, brick).long()  # (N, R)
    n_samples = n_samples.long()
    walks = (n_samples + stride - 1) // stride
    j = torch.arange(int(walks.max()) if walks.numel() else 0)
    sample = j * stride[..., None]  # (N, R, J)
    t = t_near.float()[..., None] + (sample.float() + 0.5) * delta.float()[..., None]
    p = origin.float()[:, None, None, :] + t[..., None] * direction.float()[:, :, None, :]  # (N, R, J, 3)
    clamped = torch.minimum(p.clamp(min=0.0), (size - 1).float())
    cell = torch.minimum(clamped.long(), size - 2)
    bricks = cell // brick
    item = volume_index.long()[:, None, None].expand(bricks.shape[:3])
    marked = occupancy[item, bricks[..., 0], bricks[..., 1], bricks[..., 2]] & (j < walks[..., None])
    found = marked.any(dim=-1)
    first_walk = marked.int().argmax(dim=-1)
    last_walk = marked.shape[-1] - 1 - marked.flip(-1).int().argmax(dim=-1)
    first = torch.where(found, first_walk * stride, 0)
    end = torch.where(found, torch.minimum(n_samples, (last_walk + 1) * stride), 0)
    return first, end
