"""The gather-only benchmark kernels (``tools/gpu/gather_only_kernel.py``): the "limit" the forward march
is compared to must read exactly the corners the march reads, for the plain and the packed layouts.

Checked through Triton's CPU interpreter against a torch sum of the 8 cell corners of every sample, and
compiled for sm_90 so that a GPU session does not spend device time on a kernel that fails to build.
"""

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from xraysyn.geometry import ConeBeamGeometry
from xraysyn.projector import build_rays
from xraysyn.projector import triton as triton_pkg
from xraysyn.projector.triton.layout import pack_corners

TOOLS_GPU = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools", "gpu")
pytestmark = pytest.mark.skipif(not triton_pkg.available(), reason="Triton cannot run here")


def _corner_sums(volume, rays):
    """``(N, R, C)``: Σ over samples and the 8 corners of each sample's (clamped) cell (positions in float32,
    in the kernels' order of operations, so that samples on a cell face pick the same cell; sums in float64)."""
    d, h, w = volume.shape[2:]
    k = torch.arange(int(rays.n_samples.max()), dtype=torch.float32)
    t = rays.t_near[..., None] + (k + 0.5) * rays.delta[..., None]
    p = rays.origin[:, None, None, :] + t[..., None] * rays.direction[:, :, None, :]
    sizes = torch.tensor([d, h, w], dtype=torch.float32)
    cell = torch.minimum(p.clamp(min=0).minimum(sizes - 1).floor(), sizes - 2).long()  # (N, R, K, 3)
    live = (k[None, None, :] < rays.n_samples[..., None]).double()
    vol = volume.double()[rays.volume_index]  # (N, C, D, H, W)
    total = torch.zeros(*rays.t_near.shape, volume.shape[1], dtype=torch.float64)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                iz, iy, ix = cell[..., 0] + dz, cell[..., 1] + dy, cell[..., 2] + dx
                n_idx = torch.arange(vol.shape[0])[:, None, None]
                values = vol[n_idx, :, iz, iy, ix]  # (N, R, K, C)
                total += (values * live[..., None]).sum(2)
    return total


def _setup():
    gen = torch.Generator().manual_seed(0)
    shape = (6, 5, 7)
    geometry = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(8, 8), pixel_spacing=5.0)
    affine = torch.diag(torch.tensor([4.0, 4.5, 3.5, 1.0])).expand(2, 4, 4)
    poses = geometry.poses(torch.tensor([10.0, -70.0]), torch.tensor([5.0, 20.0]))
    rays = build_rays(poses, affine, shape, geometry, step_mm=2.0)
    return torch.rand(2, 2, *shape, generator=gen), rays


@pytest.mark.parametrize("pack,tile_w", [(1, 8), (2, 8), (4, 8), (1, 4), (2, 4)])
def test_gather_only_kernels_read_the_cell_corners(pack, tile_w):
    sys.path.insert(0, TOOLS_GPU)
    from gather_only_kernel import gather_only_kernel, gather_only_packed_kernel

    volume, rays = _setup()
    channels = 1 if pack == 4 else 2
    volume = volume[:, :channels].contiguous()
    b, c, d, h, w = volume.shape
    n, r = rays.t_near.shape
    ray_args = (rays.origin.contiguous(), rays.direction.contiguous(), rays.t_near.contiguous(),
                rays.delta.contiguous(), rays.n_samples.to(torch.int32).contiguous(), rays.volume_index, r, 8, d, h, w)
    block_r = 64
    grid = (-(-8 // tile_w) * -(-(r // 8) // (block_r // tile_w)), n)  # 8 detector columns
    if pack == 1:
        out = torch.empty(n, r, c)
        gather_only_kernel[grid](volume.permute(0, 2, 3, 4, 1).contiguous(), out, *ray_args, d * h * w, h * w, w, 1,
                                 BLOCK_R=block_r, C=c, TILE_W=tile_w)
    else:
        slots = torch.empty(n, r, c * pack)
        gather_only_packed_kernel[grid](pack_corners(volume, pack), slots, *ray_args, d * h * w, h * w, w,
                                        BLOCK_R=block_r, K=c * pack, PACK=pack, TILE_W=tile_w)
        out = slots.view(n, r, c, pack).sum(-1)
    expected = _corner_sums(volume, rays)
    assert float(expected.abs().max()) > 0
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_gather_limit_tries_every_tile_width_and_launch_configuration():
    """``gpu_kernels._gather_limit`` launches each (tile width, rays per program, warps) and returns the
    fastest with its configuration (a stand-in timer that runs the launch and returns a made-up time)."""
    sys.path.insert(0, TOOLS_GPU)
    import gpu_kernels

    volume, rays = _setup()
    made_up = iter([5.0, 4.0, 6.0, 3.0, 7.0, 8.0] * 2)
    seen = []

    def timed(fn):
        fn()
        seen.append(1)
        return next(made_up)

    ms, config = gpu_kernels._gather_limit(volume, rays, 8, timed, pack=2)
    assert len(seen) == 3 * len(gpu_kernels.GATHER_TILE_WIDTHS)
    assert ms == 3.0 and config == {"BLOCK_R": 64, "num_warps": 2, "TILE_W": gpu_kernels.GATHER_TILE_WIDTHS[1]}


def test_gather_only_kernels_compile_for_sm90(monkeypatch):
    from support.triton_compile import compile_ptx

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [TOOLS_GPU, os.environ.get("PYTHONPATH")])))
    ints = {"nsamp_ptr": "*i32", "vidx_ptr": "*i64"}
    specs = [{"module": "gather_only_kernel", "kernel": "gather_only_kernel", "pointer_types": ints,
              "constexprs": {"BLOCK_R": 128, "C": 2, "TILE_W": 8}, "aligned": ["vol_ptr", "out_ptr"]}]
    for pack, k in ((2, 4), (4, 4)):
        specs.append({"module": "gather_only_kernel", "kernel": "gather_only_packed_kernel", "pointer_types": ints,
                      "constexprs": {"BLOCK_R": 128, "K": k, "PACK": pack, "TILE_W": 8},
                      "aligned": ["vol_ptr", "out_ptr"]})
    plain, pack2, pack4 = compile_ptx(specs)
    assert plain.count("ld.global.v2.b32") == 8
    assert pack2.count("ld.global.v4.b32") == 4 and pack4.count("ld.global.v4.b32") == 2

