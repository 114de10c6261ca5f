"""Torch reference ray marcher: the ground truth every faster backend is tested against.

Implements the sampling model documented in :mod:`xraysyn.projector.rays` with plain tensor
operations, processing rays in chunks so that the extra memory stays under a budget whatever
the detector size. Runs on any device and dtype torch supports.

The autograd function :class:`RayMarch` returns the exact adjoint of the discrete forward
operator as the volume gradient (scatter of the same trilinear weights), and analytic gradients
with respect to the ray parameters (origin, direction, entry distance and sample spacing), from
which autograd reaches the poses and affines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xraysyn.geometry import pose_source_position, volume_center
from xraysyn.projector.rays import RaySet, clip_to_box

__all__ = ["RayMarch", "backend_forward", "backproject_voxels", "march_forward", "march_adjoint", "rays_per_chunk"]

# Approximate bytes of temporaries per voxel in the torch backprojector (coordinates, pixel positions, chords).
_BP_BYTES_PER_VOXEL = 256

# Rough upper bound of the bytes of temporaries per (ray, sample) in the chunked kernels:
# positions, indices and weights (~120 B) plus the gathered corner values per channel.
_BYTES_PER_SAMPLE_BASE = 160
_BYTES_PER_SAMPLE_PER_CHANNEL = 48


def rays_per_chunk(max_samples: int, channels: int, memory_budget_mib: float, grad_rays: bool = False) -> int:
    """How many rays one chunk may hold so the temporaries fit ``memory_budget_mib``."""
    per_sample = _BYTES_PER_SAMPLE_BASE + _BYTES_PER_SAMPLE_PER_CHANNEL * channels
    if grad_rays:
        per_sample *= 2
    per_ray = per_sample * max(int(max_samples), 1)
    return max(1, int(memory_budget_mib * 2**20 // per_ray))


def _flatten_volume(volume: torch.Tensor) -> torch.Tensor:
    """``(B, C, D, H, W)`` → channels-last rows ``(B * D * H * W, C)``."""
    b, c = volume.shape[:2]
    return volume.permute(0, 2, 3, 4, 1).reshape(-1, c)


class _Samples:
    """Sample positions of a chunk of rays and their trilinear corner indices and fractions."""

    def __init__(self, origin, direction, t_near, delta, n_samples, vol_offset, spatial_shape):
        dev, dtype = direction.device, direction.dtype
        d, h, w = spatial_shape
        k_max = int(n_samples.max()) if n_samples.numel() else 0
        self.k = torch.arange(k_max, device=dev, dtype=dtype) + 0.5  # (K,)
        self.t = t_near[:, None] + self.k * delta[:, None]  # (Rc, K)
        self.valid = torch.arange(k_max, device=dev)[None, :] < n_samples[:, None]
        p = origin[:, None, :] + self.t[..., None] * direction[:, None, :]  # (Rc, K, 3)
        upper = torch.tensor([d - 1, h - 1, w - 1], device=dev, dtype=dtype)
        self.inside = (p >= 0) & (p <= upper)  # where the clamp is inactive (for position gradients)
        pc = torch.minimum(p.clamp(min=0), upper)
        i0 = torch.minimum(pc.floor(), upper - 1)
        self.frac = pc - i0  # (Rc, K, 3) in [0, 1]
        i0 = i0.long()
        base = (i0[..., 0] * h + i0[..., 1]) * w + i0[..., 2] + vol_offset[:, None]
        self.base = base.reshape(-1)
        self.offsets = (0, 1, w, w + 1, h * w, h * w + 1, h * w + w, h * w + w + 1)  # (dz, dy, dx) bits

    def corner_weights(self):
        """The 8 trilinear weights ``(Rc * K,)`` in the order of :attr:`offsets`."""
        f = self.frac.reshape(-1, 3)
        fz, fy, fx = f[:, 0], f[:, 1], f[:, 2]
        gz, gy, gx = 1 - fz, 1 - fy, 1 - fx
        return (gz * gy * gx, gz * gy * fx, gz * fy * gx, gz * fy * fx,
                fz * gy * gx, fz * gy * fx, fz * fy * gx, fz * fy * fx)

    def corner_values(self, vol_flat):
        return [vol_flat[self.base + off] for off in self.offsets]  # each (Rc * K, C)


def _interpolate(values, frac):
    """Trilinear interpolation of corner values ``8 × (M, C)`` at fractions ``(M, 3)``."""
    fz, fy, fx = frac[:, 0:1], frac[:, 1:2], frac[:, 2:3]
    x00 = torch.lerp(values[0], values[1], fx)
    x01 = torch.lerp(values[2], values[3], fx)
    x10 = torch.lerp(values[4], values[5], fx)
    x11 = torch.lerp(values[6], values[7], fx)
    return torch.lerp(torch.lerp(x00, x01, fy), torch.lerp(x10, x11, fy), fz)


def _spatial_gradient(values, frac):
    """∂(trilinear)/∂(z, y, x) in voxel units, ``(M, C, 3)``."""
    fz, fy, fx = frac[:, 0:1], frac[:, 1:2], frac[:, 2:3]
    v = values
    x00 = torch.lerp(v[0], v[1], fx)
    x01 = torch.lerp(v[2], v[3], fx)
    x10 = torch.lerp(v[4], v[5], fx)
    x11 = torch.lerp(v[6], v[7], fx)
    y0 = torch.lerp(x00, x01, fy)
    y1 = torch.lerp(x10, x11, fy)
    dz = y1 - y0
    dy = torch.lerp(x01 - x00, x11 - x10, fz)
    dx00 = v[1] - v[0]
    dx01 = v[3] - v[2]
    dx10 = v[5] - v[4]
    dx11 = v[7] - v[6]
    dx = torch.lerp(torch.lerp(dx00, dx01, fy), torch.lerp(dx10, dx11, fy), fz)
    return torch.stack([dz, dy, dx], dim=-1)


def _flat_rays(rays: RaySet, spatial_shape):
    """The rays one per row: origin, direction ``(N * R, 3)``, t_near, delta, n_samples and the offset of each
    ray's volume in the flattened batch ``(N * R,)``."""
    n, r = rays.t_near.shape
    d, h, w = spatial_shape
    origin = rays.origin[:, None, :].expand(n, r, 3).reshape(-1, 3)
    vol_offset = (rays.volume_index * (d * h * w))[:, None].expand(n, r).reshape(-1)
    return (origin, rays.direction.reshape(-1, 3), rays.t_near.reshape(-1), rays.delta.reshape(-1),
            rays.n_samples.reshape(-1), vol_offset)


def _chunks(n_samples: torch.Tensor, size: int):
    """Slices of ``size`` consecutive rays, skipping chunks where every ray misses the volume."""
    total = n_samples.shape[0]
    for start in range(0, total, size):
        sl = slice(start, min(start + size, total))
        if bool((n_samples[sl] > 0).any()):
            yield sl


def march_forward(volume: torch.Tensor, rays: RaySet, memory_budget_mib: float = 512.0) -> torch.Tensor:
    """Line integrals ``(N, R, C)`` in voxel value × mm of ``volume (B, C, D, H, W)`` along ``rays`` (the
    sampling model of :mod:`xraysyn.projector.rays`); temporaries within ``memory_budget_mib``."""
    spatial = volume.shape[2:]
    c = volume.shape[1]
    vol_flat = _flatten_volume(volume)
    o, dvec, tn, dl, ns, off = _flat_rays(rays, spatial)
    out = torch.zeros(o.shape[0], c, dtype=volume.dtype, device=volume.device)
    k_max = int(ns.max()) if ns.numel() else 0
    if k_max == 0:
        return out.reshape(*rays.t_near.shape, c)
    step = rays_per_chunk(k_max, c, memory_budget_mib)
    for sl in _chunks(ns, step):
        s = _Samples(o[sl], dvec[sl], tn[sl], dl[sl], ns[sl], off[sl], spatial)
        vals = _interpolate(s.corner_values(vol_flat), s.frac.reshape(-1, 3))
        weight = (dl[sl][:, None] * s.valid).reshape(-1, 1)
        out[sl] = (vals * weight).reshape(-1, s.valid.shape[1], c).sum(1)
    return out.reshape(*rays.t_near.shape, c)


def march_adjoint(grad_out: torch.Tensor, volume_shape, rays: RaySet, memory_budget_mib: float = 512.0) -> torch.Tensor:
    """Exact adjoint of :func:`march_forward`: scatter ``grad_out (N, R, C)`` into a volume of ``volume_shape
    (B, C, D, H, W)``."""
    b, c = volume_shape[:2]
    spatial = tuple(volume_shape[2:])
    o, dvec, tn, dl, ns, off = _flat_rays(rays, spatial)
    g = grad_out.reshape(-1, c)
    acc = torch.zeros(b * spatial[0] * spatial[1] * spatial[2], c, dtype=grad_out.dtype, device=grad_out.device)
    k_max = int(ns.max()) if ns.numel() else 0
    if k_max > 0:
        step = rays_per_chunk(k_max, c, memory_budget_mib)
        for sl in _chunks(ns, step):
            s = _Samples(o[sl], dvec[sl], tn[sl], dl[sl], ns[sl], off[sl], spatial)
            weighted = (g[sl][:, None, :] * (dl[sl][:, None] * s.valid)[..., None]).reshape(-1, c)
            for off_c, w_c in zip(s.offsets, s.corner_weights()):
                acc.index_add_(0, s.base + off_c, weighted * w_c[:, None])
    return acc.reshape(b, *spatial, c).permute(0, 4, 1, 2, 3).contiguous()


def _ray_parameter_grads(grad_out, volume, rays: RaySet, memory_budget_mib):
    """Gradients of ``<grad_out, march_forward(volume, rays)>`` w.r.t. the rays' origin, direction, t_near and
    delta."""
    spatial = volume.shape[2:]
    c = volume.shape[1]
    n, r = rays.t_near.shape
    vol_flat = _flatten_volume(volume)
    o, dvec, tn, dl, ns, off = _flat_rays(rays, spatial)
    g = grad_out.reshape(-1, c)
    g_origin = torch.zeros_like(o)
    g_dir = torch.zeros_like(dvec)
    g_tn = torch.zeros_like(tn)
    g_delta = torch.zeros_like(dl)
    k_max = int(ns.max()) if ns.numel() else 0
    if k_max > 0:
        step = rays_per_chunk(k_max, c, memory_budget_mib, grad_rays=True)
        for sl in _chunks(ns, step):
            s = _Samples(o[sl], dvec[sl], tn[sl], dl[sl], ns[sl], off[sl], spatial)
            rc, k = s.valid.shape
            frac = s.frac.reshape(-1, 3)
            corners = s.corner_values(vol_flat)
            vals = _interpolate(corners, frac).reshape(rc, k, c)
            grad_p = _spatial_gradient(corners, frac).reshape(rc, k, c, 3)
            g_pos = (g[sl][:, None, :, None] * grad_p).sum(2) * s.inside * s.valid[..., None]  # (Rc, K, 3)
            g_val = (g[sl][:, None, :] * vals).sum(-1) * s.valid  # (Rc, K)
            step_len = dl[sl][:, None]
            g_origin[sl] = (g_pos * step_len[..., None]).sum(1)
            g_dir[sl] = (g_pos * (step_len * s.t)[..., None]).sum(1)
            along = (g_pos * dvec[sl][:, None, :]).sum(-1)  # (Rc, K)
            g_tn[sl] = (along * step_len).sum(1)
            g_delta[sl] = g_val.sum(1) + (along * step_len * s.k).sum(1)
    return (g_origin.reshape(n, r, 3).sum(1), g_dir.reshape(n, r, 3), g_tn.reshape(n, r), g_delta.reshape(n, r))


def backend_forward(backend, volume: torch.Tensor, rays: RaySet, memory_budget_mib: float,
                    prepared=None) -> torch.Tensor:
    """The forward march ``(N, R, C)`` by ``backend`` (None: :func:`march_forward`), handing it what its
    ``prepare_volume`` made (``prepared``, when given)."""
    if backend is None:
        return march_forward(volume, rays, memory_budget_mib)
    extra = {} if prepared is None else {"prepared": prepared}
    return backend.forward(volume, rays, memory_budget_mib, **extra)


class RayMarch(torch.autograd.Function):
    """Differentiable ray march: ``(volume, origin, direction, t_near, delta) → (N, R, C)``.

    ``RayMarch.apply(volume, rays.origin, rays.direction, rays.t_near, rays.delta, rays, memory_budget_mib,
    backend, prepared)``: the four float tensors of the :class:`~xraysyn.projector.rays.RaySet` ``rays`` are
    given again as separate inputs because autograd routes gradients only to the tensors passed to
    ``apply`` (it does not look inside ``rays``); they must be ``rays``' own tensors. The rest of ``rays``
    (``n_samples``, ``volume_index``, ``length``) has no gradient. ``backend`` is a
    :class:`~xraysyn.projector.backend.ProjectorBackend` (None: the torch reference :func:`march_forward` /
    :func:`march_adjoint`); ray-parameter gradients always use the reference formulas. ``prepared``
    (optional): what the backend's ``prepare_volume`` made from this volume, handed to its ``forward`` (and
    not kept for the backward).
    """

    @staticmethod
    def forward(ctx, volume, origin, direction, t_near, delta, rays, memory_budget_mib, backend, prepared=None):
        # origin, direction, t_near and delta are rays' tensors (see the class docstring); saved one by one
        # (save_for_backward takes tensors, not a RaySet) and put back together in backward
        ctx.save_for_backward(volume, origin, direction, t_near, delta, rays.n_samples, rays.volume_index,
                              rays.length)
        ctx.memory_budget_mib = memory_budget_mib
        ctx.backend = backend
        return backend_forward(backend, volume, rays, memory_budget_mib, prepared)

    @staticmethod
    def backward(ctx, grad_out):
        volume, origin, direction, t_near, delta, n_samples, volume_index, length = ctx.saved_tensors
        rays = RaySet(origin=origin, direction=direction, t_near=t_near, delta=delta, n_samples=n_samples,
                      volume_index=volume_index, length=length)
        grad_out = grad_out.contiguous()
        g_vol = g_o = g_d = g_tn = g_dl = None
        if ctx.needs_input_grad[0]:
            adjoint_fn = ctx.backend.adjoint if ctx.backend is not None else march_adjoint
            # fp16/bf16 volumes: float32 adjoint, cast
            g_vol = adjoint_fn(grad_out, volume.shape, rays, ctx.memory_budget_mib).to(volume.dtype)
        if any(ctx.needs_input_grad[1:5]):
            g_o, g_d, g_tn, g_dl = _ray_parameter_grads(grad_out, volume, rays, ctx.memory_budget_mib)
        return g_vol, g_o, g_d, g_tn, g_dl, None, None, None, None


def backproject_voxels(images: torch.Tensor, world_from_voxel: torch.Tensor, poses: torch.Tensor,
                       isocenter: torch.Tensor | None, geometry, spatial_shape, memory_budget_mib: float) -> torch.Tensor:
    """The torch BP (paper eq. 7) behind :func:`xraysyn.projector.backproject`, on validated inputs:
    differentiable w.r.t. images, poses, affines and isocenter.

    ``images (B, C, rows, cols)`` in ``u × mm`` (already in the compute dtype), ``world_from_voxel`` and
    ``poses (B, 4, 4)`` (mm), ``isocenter (B, 3)`` mm or None (each volume's centre), ``spatial_shape (D, H,
    W)``; voxels are processed in chunks whose temporaries stay within ``memory_budget_mib``. Returns
    ``(B, C, D, H, W)`` in ``u`` per mm: each voxel centre's bilinear image value (border-clamped) divided by
    the chord (mm) of the source→voxel ray inside the volume box, 0 off the detector.
    """
    affines, pose_t, iso, spatial, imgs = world_from_voxel, poses, isocenter, tuple(spatial_shape), images
    b, c, rows, cols = imgs.shape
    dtype, dev = imgs.dtype, imgs.device
    if iso is None:
        iso = volume_center(affines, spatial)

    d, h, w = spatial
    n_vox = d * h * w
    chunk = max(1, int(memory_budget_mib * 2**20 // (_BP_BYTES_PER_VOXEL + 8 * c)))
    voxel_from_world = torch.linalg.inv(affines)
    source_world = pose_source_position(pose_t) + iso  # (B, 3)
    source_voxel = (voxel_from_world[:, :3, :3] @ source_world[:, :, None]).squeeze(-1) + voxel_from_world[:, :3, 3]
    grids = torch.meshgrid(*(torch.arange(s, dtype=dtype, device=dev) for s in spatial), indexing="ij")
    ijk = torch.stack([g.reshape(-1) for g in grids], dim=-1)  # (n_vox, 3)

    outs = []
    for bi in range(b):
        parts = []
        for start in range(0, n_vox, chunk):
            idx = ijk[start:start + chunk]
            world = idx @ affines[bi, :3, :3].T + affines[bi, :3, 3]
            cam = (world - iso[bi]) @ pose_t[bi, :3, :3].T + pose_t[bi, :3, 3]
            pix = geometry.camera_to_pixel(cam)  # (M, 2) row, col
            on_det = ((cam[:, 2] > 0) & (pix[:, 0] >= -0.5) & (pix[:, 0] <= rows - 0.5)
                      & (pix[:, 1] >= -0.5) & (pix[:, 1] <= cols - 0.5))
            gy = pix[:, 0] / max(rows - 1, 1) * 2 - 1 if rows > 1 else torch.zeros_like(pix[:, 0])
            gx = pix[:, 1] / max(cols - 1, 1) * 2 - 1 if cols > 1 else torch.zeros_like(pix[:, 1])
            grid = torch.stack([gx, gy], dim=-1)[None, :, None, :]
            vals = F.grid_sample(imgs[bi:bi + 1], grid, mode="bilinear", padding_mode="border",
                                 align_corners=True)[0, :, :, 0]  # (C, M)
            # chord of the ray source -> voxel centre, in voxel coordinates, per mm of world path
            to_vox_world = world - source_world[bi]
            dist = to_vox_world.norm(dim=-1, keepdim=True)
            direction = (to_vox_world / dist) @ voxel_from_world[bi, :3, :3].T
            t_detector = dist[:, 0] * geometry.sdd / cam[:, 2].clamp(min=torch.finfo(dtype).tiny)
            t_near, t_far = clip_to_box(source_voxel[bi].expand(1, 1, 3), direction[None], spatial, t_detector[None])
            length = (t_far - t_near)[0]
            safe = torch.where(length > 0, length, torch.ones_like(length))
            parts.append(torch.where(on_det & (length > 0), vals / safe, torch.zeros_like(vals)))
        outs.append(torch.cat(parts, dim=-1).reshape(c, d, h, w))
    return torch.stack(outs, dim=0)
