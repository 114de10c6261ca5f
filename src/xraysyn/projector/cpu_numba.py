"""Fast CPU backend: the same ray march as the torch reference, compiled with numba.

One ray per loop iteration (parallel over rays), samples marched in registers, so memory is
O(rays) and every voxel value is read once per sample. The adjoint scatters into one private
gradient volume per thread (summed at the end) when that fits the memory budget, otherwise it
runs on one thread; either way it is the exact transpose of the forward loop.

Selected automatically for CPU tensors when numba is importable; the torch reference in
:mod:`xraysyn.projector.reference` remains the ground truth (``tests/projector/test_behaviour.py``).
"""

from __future__ import annotations

import contextlib

import math

import numpy as np
import torch

from xraysyn.projector.backend import Capabilities
from xraysyn.projector.rays import RaySet

try:  # numba is a dependency, but keep the package importable (and the reference usable) without it
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

__all__ = ["available", "NumbaBackend"]


def available() -> bool:
    return numba is not None


if numba is not None:
    from xraysyn.numba_cache import disk_cache_for

    _CACHE = disk_cache_for(__file__)  # a temporary cache folder when no usual place is writable

    @njit(inline="always")
    def _cell(p, size):
        # clamp to the voxel-centre grid [0, size-1], then split into cell index and fraction
        if p < 0.0:
            p = 0.0
        elif p > size - 1:
            p = size - 1.0
        i = int(math.floor(p))
        if i > size - 2:
            i = size - 2
        return i, p - i

    @njit(inline="always")
    def _corner_weights(fz, fy, fx):
        # the 8 trilinear weights w[dz dy dx] of a cell's corners
        gz, gy, gx = 1.0 - fz, 1.0 - fy, 1.0 - fx
        return (gz * gy * gx, gz * gy * fx, gz * fy * gx, gz * fy * fx,
                fz * gy * gx, fz * gy * fx, fz * fy * gx, fz * fy * fx)

    @njit(inline="always")
    def _ray(origin, direction, t_near, delta, v, r):
        # origin (voxel index coords), per-mm direction, entry distance and sample spacing of ray (v, r)
        return (origin[v, 0], origin[v, 1], origin[v, 2], direction[v, r, 0], direction[v, r, 1],
                direction[v, r, 2], t_near[v, r], delta[v, r])

    @njit(inline="always")
    def _sample(oz, oy, ox, dz, dy, dx, t0, dt, s, dd, hh, ww):
        # cell index and fractions of midpoint sample s (the contract of rays.py)
        t = t0 + (s + 0.5) * dt
        iz, fz = _cell(oz + t * dz, dd)
        iy, fy = _cell(oy + t * dy, hh)
        ix, fx = _cell(ox + t * dx, ww)
        return iz, iy, ix, fz, fy, fx

    @njit(parallel=True, cache=_CACHE, fastmath=False)
    def _forward_kernel(vol, origin, direction, t_near, delta, n_samples, volume_index, out):
        n_views, n_rays = t_near.shape
        _, dd, hh, ww, cc = vol.shape
        for idx in prange(n_views * n_rays):
            v = idx // n_rays
            r = idx - v * n_rays
            ns = n_samples[v, r]
            if ns == 0:
                continue
            b = volume_index[v]
            oz, oy, ox, dz, dy, dx, t0, dt = _ray(origin, direction, t_near, delta, v, r)
            for c in range(cc):
                out[v, r, c] = 0.0
            for s in range(ns):
                iz, iy, ix, fz, fy, fx = _sample(oz, oy, ox, dz, dy, dx, t0, dt, s, dd, hh, ww)
                w000, w001, w010, w011, w100, w101, w110, w111 = _corner_weights(fz, fy, fx)
                for c in range(cc):
                    val = (w000 * vol[b, iz, iy, ix, c] + w001 * vol[b, iz, iy, ix + 1, c]
                           + w010 * vol[b, iz, iy + 1, ix, c] + w011 * vol[b, iz, iy + 1, ix + 1, c]
                           + w100 * vol[b, iz + 1, iy, ix, c] + w101 * vol[b, iz + 1, iy, ix + 1, c]
                           + w110 * vol[b, iz + 1, iy + 1, ix, c] + w111 * vol[b, iz + 1, iy + 1, ix + 1, c])
                    out[v, r, c] += val
            for c in range(cc):
                out[v, r, c] *= dt

    @njit(cache=_CACHE, fastmath=False)
    def _adjoint_rays(grad, origin, direction, t_near, delta, n_samples, volume_index, acc, start, stop):
        n_views, n_rays = t_near.shape
        _, dd, hh, ww, cc = acc.shape
        for idx in range(start, stop):
            v = idx // n_rays
            r = idx - v * n_rays
            ns = n_samples[v, r]
            if ns == 0:
                continue
            b = volume_index[v]
            oz, oy, ox, dz, dy, dx, t0, dt = _ray(origin, direction, t_near, delta, v, r)
            for s in range(ns):
                iz, iy, ix, fz, fy, fx = _sample(oz, oy, ox, dz, dy, dx, t0, dt, s, dd, hh, ww)
                w000, w001, w010, w011, w100, w101, w110, w111 = _corner_weights(fz, fy, fx)
                for c in range(cc):
                    g = grad[v, r, c] * dt
                    acc[b, iz, iy, ix, c] += w000 * g
                    acc[b, iz, iy, ix + 1, c] += w001 * g
                    acc[b, iz, iy + 1, ix, c] += w010 * g
                    acc[b, iz, iy + 1, ix + 1, c] += w011 * g
                    acc[b, iz + 1, iy, ix, c] += w100 * g
                    acc[b, iz + 1, iy, ix + 1, c] += w101 * g
                    acc[b, iz + 1, iy + 1, ix, c] += w110 * g
                    acc[b, iz + 1, iy + 1, ix + 1, c] += w111 * g

    @njit(parallel=True, cache=_CACHE, fastmath=False)
    def _adjoint_kernel_private(grad, origin, direction, t_near, delta, n_samples, volume_index, acc_per_thread):
        n_threads = acc_per_thread.shape[0]
        total = t_near.shape[0] * t_near.shape[1]
        per = (total + n_threads - 1) // n_threads
        for k in prange(n_threads):
            start = k * per
            stop = min(total, start + per)
            _adjoint_rays(grad, origin, direction, t_near, delta, n_samples, volume_index, acc_per_thread[k],
                          start, stop)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _ray_arrays(rays: RaySet, dtype: torch.dtype) -> tuple[np.ndarray, ...]:
    """The arrays the kernels take of ``rays``: origin, direction, t_near, delta in ``dtype``, n_samples and
    volume_index as they are."""
    return (_np(rays.origin.to(dtype)), _np(rays.direction.to(dtype)), _np(rays.t_near.to(dtype)),
            _np(rays.delta.to(dtype)), _np(rays.n_samples), _np(rays.volume_index))


@contextlib.contextmanager
def _torch_threads_kept():
    """Restore torch's intra-op thread count after a parallel numba kernel.

    With numba's OpenMP threading layer, a parallel region sets the OpenMP thread count that torch
    shares (same libgomp), so without this a user's ``torch.set_num_threads(n)`` silently changes
    after the first projection.
    """
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


class NumbaBackend:
    """Forward and adjoint of the :class:`~xraysyn.projector.backend.ProjectorBackend` protocol (the reference's
    ``march_forward`` / ``march_adjoint`` compiled); CPU tensors, volume gradients only."""

    capabilities = Capabilities(devices=("cpu",))

    @staticmethod
    def forward(volume: torch.Tensor, rays: RaySet, memory_budget_mib: float = 512.0) -> torch.Tensor:
        """Line integrals ``(N, R, C)`` in voxel value × mm of ``volume (B, C, D, H, W)`` along ``rays``
        (``memory_budget_mib`` is not needed: the march keeps no per-sample temporaries)."""
        vol = volume.detach().permute(0, 2, 3, 4, 1).contiguous()  # channels last: one cache line per corner
        out = torch.zeros(*rays.t_near.shape, volume.shape[1], dtype=volume.dtype)
        with _torch_threads_kept():
            _forward_kernel(vol.numpy(), *_ray_arrays(rays, volume.dtype), out.numpy())
        return out

    @staticmethod
    def adjoint(grad_out: torch.Tensor, volume_shape, rays: RaySet, memory_budget_mib: float = 512.0) -> torch.Tensor:
        """Exact transpose of :meth:`forward`: ``grad_out (N, R, C)`` → ``volume_shape (B, C, D, H, W)``; one
        private gradient volume per thread while they fit ``memory_budget_mib``, else one thread."""
        b, c, d, h, w = volume_shape
        dtype = grad_out.dtype
        vol_bytes = b * c * d * h * w * grad_out.element_size()
        threads = max(1, min(numba.get_num_threads(), int(memory_budget_mib * 2**20 // max(vol_bytes, 1))))
        grad = _np(grad_out)
        acc = np.zeros((threads, b, d, h, w, c), dtype=grad.dtype)
        args = (grad, *_ray_arrays(rays, dtype))
        if threads == 1:
            total = rays.t_near.shape[0] * rays.t_near.shape[1]
            _adjoint_rays(*args, acc[0], 0, total)
            summed = acc[0]
        else:
            with _torch_threads_kept():
                _adjoint_kernel_private(*args, acc)
            summed = acc.sum(axis=0)
        return torch.from_numpy(np.ascontiguousarray(summed)).permute(0, 4, 1, 2, 3).contiguous()
