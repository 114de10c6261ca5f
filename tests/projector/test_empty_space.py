"""Empty space skipping of the Triton forward march (``TritonConfig.skip_empty_brick``).

Truths: the marks against a closed form and a brute-force dilation; the torch rule
(:mod:`xraysyn.projector.empty_space`) against the sampling itself (every sample it skips has eight zero
corners); the kernels' walk against the torch rule (a made-up occupancy makes the skipped samples matter);
and the public forward with skipping against the same forward without it (bit for bit) and the float64
reference, on sparse volumes. Kernels run through Triton's CPU interpreter without a GPU (tiny sizes).
"""

import dataclasses
import itertools
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from support.ray_sets import converted

from xraysyn.geometry import ConeBeamGeometry
from xraysyn.projector import build_rays, forward_project, mark_static_volume
from xraysyn.projector import triton as triton_pkg
from xraysyn.projector.empty_space import (
    brick_grid,
    dilate_bricks,
    occupied_bricks,
    occupied_range,
    walk_stride,
)
from xraysyn.projector.reference import march_forward
from xraysyn.projector.triton import TritonBackend
from xraysyn.projector.triton.layout import MarchedVolume, PreparedVolume

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_triton = pytest.mark.skipif(not triton_pkg.available(), reason="Triton cannot run here")


def _sparse_volume(gen, batch, channels, shape, boxes=2, specks=3):
    """Zeros except a few random boxes and single voxels (random channels), values in [0.5, 1.5)."""
    volume = torch.zeros(batch, channels, *shape)
    for b in range(batch):
        for _ in range(boxes):
            lo = [int(torch.randint(0, n, (1,), generator=gen)) for n in shape]
            hi = [min(n, low + int(torch.randint(1, 4, (1,), generator=gen))) for low, n in zip(lo, shape)]
            c = int(torch.randint(0, channels, (1,), generator=gen))
            box = volume[b, c, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            box.copy_(torch.rand(box.shape, generator=gen) + 0.5)
        for _ in range(specks):
            z, y, x = (int(torch.randint(0, n, (1,), generator=gen)) for n in shape)
            volume[b, int(torch.randint(0, channels, (1,), generator=gen)), z, y, x] = 1.0
    return volume


def _rays(gen, batch, views, shape, detector=(7, 9), **sampling):
    geometry = ConeBeamGeometry(sdd=320.0, sid=210.0, detector_shape=detector, pixel_spacing=5.0)
    azimuths = torch.rand(batch * views, generator=gen) * 360 - 180
    elevations = torch.rand(batch * views, generator=gen) * 100 - 50
    affine = torch.diag(torch.tensor([4.0, 3.0, 3.5, 1.0]))
    affine[0, 1] = 0.4
    affines = affine.expand(batch, 4, 4)
    rays = build_rays(geometry.poses(azimuths, elevations), affines, shape, geometry, **sampling)
    return rays, geometry, affines, geometry.poses(azimuths, elevations)


# --- the marks -------------------------------------------------------------------------------------------------


def test_marks_are_the_bricks_of_non_zero_voxels_and_their_neighbours():
    volume = torch.zeros(2, 3, 9, 5, 12)
    volume[0, 2, 8, 4, 11] = -0.5  # the last, partial brick of every axis; negative values count
    volume[1, 0, 0, 0, 4] = 2.0
    marks = occupied_bricks(volume, 4)
    assert marks.shape == (2, *brick_grid((9, 5, 12), 4)) == (2, 3, 2, 3)
    expected = torch.zeros_like(marks)
    expected[0, 2, 1, 2] = expected[1, 0, 0, 1] = True
    assert torch.equal(marks, expected)
    dilated = dilate_bricks(marks)
    brute = torch.zeros_like(marks)
    for b, z, y, x in itertools.product(*(range(n) for n in marks.shape)):
        brute[b, z, y, x] = marks[b, max(z - 1, 0):z + 2, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].any()
    assert torch.equal(dilated, brute) and int(dilated.sum()) == 2 * 2 * 2 + 2 * 2 * 3  # a corner brick, an edge one


@needs_triton
@pytest.mark.parametrize("pack", [1, 2, 4])
@pytest.mark.parametrize("brick", [2, 4])
def test_kernels_mark_and_dilate_as_the_reference(pack, brick, triton_config):
    """The packing pass (packs 2 and 4) or the marking pass (unpacked, here a non-contiguous fp16 volume) and
    the dilation give the torch rule's occupancy."""
    triton_config(forward_pack=pack)
    triton_config(skip_empty_brick=brick)
    gen = torch.Generator().manual_seed(pack * 10 + brick)
    volume = _sparse_volume(gen, 2, 1 if pack == 4 else 2, (14, 17, 12), boxes=1, specks=1)
    if pack == 1:
        volume = volume.half().transpose(2, 4).contiguous().transpose(2, 4)
    prepared = TritonBackend.prepare_volume(volume.to(DEVICE), check_finite=True)
    marched = prepared.marched
    assert marched.pack == pack and marched.brick == brick
    expected = dilate_bricks(occupied_bricks(volume, brick))
    assert not expected.all() and expected.any()
    per_volume = 1 + expected[0].numel()
    assert marched.occupancy.dtype == torch.uint8 and marched.occupancy.numel() >= 2 * per_volume
    got = marched.occupancy.cpu()[:2 * per_volume].view(2, per_volume)
    assert torch.equal(got[:, 1:].bool(), expected.flatten(1))
    assert got[:, 0].tolist() == [1, 1]  # each volume has unmarked bricks: its rays walk
    if pack > 1:  # the probe shares the marks' zeroed buffer: still zero (finite volume)
        assert float(prepared.finite_probe.cpu()[0]) == 0.0


@needs_triton
def test_a_volume_without_unmarked_bricks_is_flagged_and_marched_whole(triton_config):
    """Dense volumes (a network's output has no exact zeros) mark every brick: the flag stays 0, and the
    march skips the walk; a volume with one empty region sets it."""
    triton_config(skip_empty_brick=2)
    volume = torch.rand(2, 1, 8, 9, 10) + 0.1
    volume[1, :, :, :, :4] = 0.0  # x = 0..3 zero: brick 0 along x (of 5) stays unmarked after the dilation
    per_volume = 1 + 4 * 5 * 5
    occupancy = TritonBackend.prepare_volume(volume.to(DEVICE)).marched.occupancy.cpu()[:2 * per_volume]
    occupancy = occupancy.view(2, per_volume)
    assert occupancy[:, 0].tolist() == [0, 1]
    assert occupancy[0, 1:].all() and not occupancy[1, 1:].all()


@needs_triton
def test_no_marks_without_skipping(triton_config):
    volume = torch.rand(1, 2, 4, 5, 6, device=DEVICE)
    triton_config(skip_empty_brick=0)
    marched = TritonBackend.prepare_volume(volume).marched
    assert marched.occupancy is None and marched.brick == 0


# --- the rule --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("brick", [2, 4, 8])
@pytest.mark.parametrize("sampling", [dict(step_mm=0.6), dict(step_mm=3.0), dict(num_samples=5)])
def test_every_sample_skipped_has_eight_zero_corners(brick, sampling):
    """The rule's range against the samples themselves (float32 positions, as marched): outside ``[first,
    end)`` no sample's cell has a non-zero corner, and the rule does skip samples (else the test is empty)."""
    gen = torch.Generator().manual_seed(brick)
    shape = (4 * brick + 3, 5 * brick + 1, 3 * brick + 2)
    volume = _sparse_volume(gen, 3, 2, shape, boxes=1, specks=1)
    rays, *_ = _rays(gen, 3, 3, shape, detector=(15, 13), **sampling)
    occupancy = dilate_bricks(occupied_bricks(volume, brick))
    first, end = occupied_range(rays, occupancy, shape, brick)
    n = rays.n_samples.long()
    k = torch.arange(int(n.max()))
    t = rays.t_near[..., None] + (k + 0.5) * rays.delta[..., None]
    p = rays.origin[:, None, None, :] + t[..., None] * rays.direction[:, :, None, :]
    size = torch.tensor(shape)
    cell = torch.minimum(torch.minimum(p.clamp(min=0.0), (size - 1).float()).long(), size - 2)
    nonzero = (volume != 0).any(dim=1)
    item = rays.volume_index[:, None, None].expand(cell.shape[:3])
    touches = torch.zeros(cell.shape[:3], dtype=torch.bool)
    for corner in itertools.product((0, 1), repeat=3):
        c = cell + torch.tensor(corner)
        touches |= nonzero[item, c[..., 0], c[..., 1], c[..., 2]]
    skipped = (k < n[..., None]) & ((k < first[..., None]) | (k >= end[..., None]))
    assert not (touches & skipped).any()
    assert skipped.sum() > 0.2 * n.sum()  # sparse volumes: most samples are skipped
    assert touches.any()


def test_walk_stride_follows_the_bound():
    """``(stride − 1) · step`` stays below ``brick − 1`` voxels (less the rounding allowance) and one more
    sample would not."""
    direction = torch.tensor([[[0.3, -0.9, 0.1], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]])
    delta = torch.tensor([[0.7, 1.0, 1e-9]])
    stride = walk_stride(direction, delta, 4)
    step = 0.7 * 0.9
    assert int(stride[0, 0]) == 1 + int(2.95 / step)
    assert (stride[0, 0] - 1) * step <= 2.95 < stride[0, 0] * step
    assert int(stride[0, 1]) == int(stride[0, 2]) == (1 << 20) + 1  # no move: one look-up covers the ray


# --- the kernels -----------------------------------------------------------------------------------------------


@needs_triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="compares float32 positions bit for bit with the CPU's: "
                    "the interpreter computes them as torch does, compiled code may contract them into FMAs")
@pytest.mark.parametrize("pack", [1, 2])
def test_kernel_walk_is_the_rule(pack, triton_config):
    """A made-up occupancy (random marks over a volume without zeros) makes the kernel drop whatever lies outside
    its walk's range: the forward then equals the reference summed over the rule's range only."""
    triton_config(forward_pack=pack)
    triton_config(skip_empty_brick=2)
    gen = torch.Generator().manual_seed(pack)
    shape = (11, 13, 9)
    volume = torch.rand(2, 2, *shape, generator=gen) + 0.5
    rays, *_ = _rays(gen, 2, 2, shape, step_mm=0.8)
    made_up = torch.rand(2, *brick_grid(shape, 2), generator=gen) < 0.15
    prepared = TritonBackend.prepare_volume(volume.to(DEVICE))
    flags = torch.ones(2, 1, dtype=torch.uint8)  # "some brick is unmarked": walk
    occupancy = torch.cat([flags, made_up.flatten(1).to(torch.uint8)], dim=1)
    marched = prepared.marched._replace(occupancy=occupancy.to(DEVICE))
    got = TritonBackend.forward(volume.to(DEVICE), converted(rays, device=DEVICE), detector_cols=9,
                                prepared=PreparedVolume(prepared.source, marched, None))
    first, end = occupied_range(rays, made_up, shape, 2)
    kept = end - first
    assert 0 < int(kept.sum()) < 0.9 * int(rays.n_samples.sum())  # the made-up marks cut real samples
    double = converted(rays, torch.float64)
    expected = march_forward(volume.double(), dataclasses.replace(double, t_near=double.t_near + first * double.delta,
                                                                  n_samples=kept))
    err = float((got.double().cpu() - expected).abs().max())
    assert err <= 1e-5 * float(expected.abs().max())
    # the flag 0 ("no brick unmarked") skips the walk: the same made-up marks then cut nothing
    flagged_dense = marched._replace(occupancy=torch.cat([0 * flags, made_up.flatten(1).to(torch.uint8)], 1).to(DEVICE))
    whole = TritonBackend.forward(volume.to(DEVICE), converted(rays, device=DEVICE), detector_cols=9,
                                  prepared=PreparedVolume(prepared.source, flagged_dense, None))
    unskipped = march_forward(volume.double(), double)
    assert float((whole.double().cpu() - unskipped).abs().max()) <= 1e-5 * float(unskipped.abs().max())


SKIP_CASES = [(1, 2, dict(step_mm=2.0)), (2, 4, dict(num_samples=7))]
MORE_SKIP_CASES = [(4, 8, dict(step_mm=0.9)), (2, 2, dict(step_mm=2.5)), (1, 4, dict(num_samples=3)),
                   (1, 2, dict(step_mm=0.9))]


def _check_bit_for_bit(pack, brick, sampling, triton_config):
    triton_config(forward_pack=pack)
    gen = torch.Generator().manual_seed(brick + pack)
    shape = (10, 14, 9)
    volume = _sparse_volume(gen, 2, 1 if pack == 4 else 2, shape).to(DEVICE)
    _, geometry, affines, poses = _rays(gen, 2, 2, shape, detector=(8, 9), **sampling)
    got = {}
    for skip in (0, brick):
        triton_config(skip_empty_brick=skip)
        got[skip] = forward_project(volume, affines.to(DEVICE), poses.to(DEVICE), geometry, backend="triton",
                                    **sampling)
    assert torch.equal(got[brick], got[0])
    expected = forward_project(volume.double().cpu(), affines.double(), poses.double(), geometry,
                               backend="reference", **sampling)
    assert float((got[brick].double().cpu() - expected).abs().max()) <= 1e-4 * float(expected.abs().max())


@needs_triton
@pytest.mark.parametrize(("pack", "brick", "sampling"), SKIP_CASES)
def test_forward_with_skipping_is_bit_for_bit_the_forward_without(pack, brick, sampling, triton_config):
    """Sparse volumes, oblique views from anywhere, fine and coarse steps: skipping changes nothing (exact
    zeros are what it skips), and both equal the float64 reference."""
    _check_bit_for_bit(pack, brick, sampling, triton_config)


@needs_triton
@pytest.mark.slow
@pytest.mark.parametrize(("pack", "brick", "sampling"), MORE_SKIP_CASES)
def test_more_layouts_and_bricks_skip_bit_for_bit(pack, brick, sampling, triton_config):
    _check_bit_for_bit(pack, brick, sampling, triton_config)


@needs_triton
def test_static_volume_remakes_its_occupancy_when_it_changes():
    """A marked volume keeps its occupancy with its packed copy; a write into an empty region must not be
    skipped by the marks of the previous version."""
    gen = torch.Generator().manual_seed(5)
    shape = (12, 12, 12)
    volume = torch.zeros(1, 1, *shape, device=DEVICE)
    volume[0, 0, 1:3, 1:3, 1:3] = 1.0
    mark_static_volume(volume)
    _, geometry, affines, poses = _rays(gen, 1, 3, shape)
    project = lambda v, backend: forward_project(v, affines.to(DEVICE), poses.to(DEVICE), geometry,  # noqa: E731
                                                 backend=backend, step_mm=1.0)
    project(volume, "triton")
    with torch.no_grad():
        volume[0, 0, 8:11, 8:11, 8:11] = 2.0  # bricks that were empty
    got = project(volume, "triton")
    expected = project(volume.double().cpu(), "reference")
    assert float((got.double().cpu() - expected).abs().max()) <= 1e-4 * float(expected.abs().max())


def test_marched_volume_without_occupancy_hands_any_pointer():
    tensor = torch.zeros(3)
    assert MarchedVolume(tensor, 1, (), 1).occupancy_or_any() is tensor


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("channels", [1, 2])
def test_cuda_skipping_on_a_ct_like_volume(channels, triton_config):
    """Compiled kernels on a CT-like volume (a body ellipse in a field-of-view cylinder, zeros outside both, as
    attenuation from HU is): skipping gives the forward without it (to float32 rounding of the sample
    positions, which the compiler may contract differently per variant) and the float64 reference."""
    d, h, w = 48, 64, 56
    _, y, x = torch.meshgrid(torch.arange(d, dtype=torch.float32), torch.linspace(-1, 1, h), torch.linspace(-1, 1, w),
                             indexing="ij")
    body = (y / 0.6) ** 2 + (x / 0.85) ** 2 <= 1.0
    gen = torch.Generator().manual_seed(channels)
    density = torch.where(body, 0.8 + 0.4 * torch.rand(d, h, w, generator=gen), torch.zeros(()))
    volume = torch.stack([density * (1.0 + c) for c in range(channels)])[None].repeat(2, 1, 1, 1, 1)
    volume[1] *= 0.5
    geometry = ConeBeamGeometry(sdd=1200.0, sid=1000.0, detector_shape=(96, 80), pixel_spacing=2.0)
    poses = geometry.poses(torch.tensor([-40.0, 0.0, 25.0, 90.0]), torch.tensor([0.0, 5.0, -10.0, 0.0]))
    affines = torch.diag(torch.tensor([2.5, 2.0, 2.0, 1.0])).expand(2, 4, 4)
    got = {}
    for skip in (0, 4):
        triton_config(skip_empty_brick=skip)
        got[skip] = forward_project(volume.cuda(), affines.cuda(), poses.cuda(), geometry, backend="triton",
                                    step_mm=1.0).cpu()
    torch.testing.assert_close(got[4], got[0], rtol=1e-6, atol=1e-6 * float(got[0].abs().max()))
    expected = forward_project(volume.double(), affines.double(), poses.double(), geometry, backend="reference",
                               step_mm=1.0)
    assert float((got[4].double() - expected).abs().max()) <= 1e-4 * float(expected.abs().max())

