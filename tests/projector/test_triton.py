"""Triton backend of the ray march against the torch reference, closed forms and the adjoint identity.

Without a GPU the kernels run through Triton's CPU interpreter (``TRITON_INTERPRET=1``, set here
before triton is imported), so sizes are tiny. ``cuda``-marked tests repeat the checks at a
moderate size on a GPU (run with ``pytest -m cuda`` on the device machine).
"""

import dataclasses
import os
import re

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from support.operator_checks import assert_adjoint_identity
from support.projector_truth import assert_close_to_scale, box_chords, pixel_rays
from support.ray_sets import converted

from xraysyn.geometry import ConeBeamGeometry
from xraysyn.projector import (
    backproject,
    build_rays,
    forward_project,
    forward_project_adjoint,
)
from xraysyn.projector import triton as triton_pkg
from xraysyn.projector.reference import march_adjoint, march_forward
from xraysyn.projector.triton import TritonBackend, TritonBackendInputError
from xraysyn.projector.triton import backend as triton_backend_module
from xraysyn.projector.triton import backprojection as triton_backprojection
from xraysyn.projector.triton import launch as triton_launch
from xraysyn.projector.triton import layout as triton_layout
from xraysyn.projector.triton import rays as triton_rays

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RTOL = 1e-4  # the float32 agreement target, relative to the largest value
needs_interpreter_or_gpu = pytest.mark.skipif(not triton_pkg.available(), reason="Triton cannot run here")
pytestmark = needs_interpreter_or_gpu


def _affine(spacing, shear=0.0, origin=(0.0, 0.0, 0.0), dtype=torch.float32):
    a = torch.eye(4, dtype=dtype)
    a[0, 0], a[1, 1], a[2, 2] = spacing
    a[0, 1] = shear
    a[:3, 3] = torch.tensor(origin, dtype=dtype)
    return a


def _rays(geometry, affines, shape, azimuths, elevations, device=DEVICE, dtype=torch.float32, **sampling):
    poses = geometry.poses(torch.tensor(azimuths, dtype=dtype), torch.tensor(elevations, dtype=dtype))
    return build_rays(poses.to(device), affines.to(device=device, dtype=dtype), shape, geometry, **sampling)


def _assert_close(actual, expected, rtol=RTOL):
    assert_close_to_scale(actual, expected, rtol)


# (batch, views per volume, channels, spatial shape, detector, sampling)
CASES = [
    (1, 2, 1, (6, 7, 5), (7, 6), {"step_mm": 1.5}),
    (2, 2, 3, (5, 6, 7), (5, 9), {"num_samples": 7}),
    (3, 1, 2, (4, 5, 6), (3, 5), {"step_mm": 2.5}),
]


def _case(case, seed=0):
    b, v, c, shape, det, sampling = case
    gen = torch.Generator().manual_seed(seed)
    geometry = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=det, pixel_spacing=(6.0, 7.0))
    affines = torch.stack([_affine((4.0 - 0.3 * i, 3.5, 3.0 + 0.5 * i), shear=0.3 * i) for i in range(b)])
    az = (torch.rand(b * v, generator=gen) * 360 - 180).tolist()
    el = (torch.rand(b * v, generator=gen) * 60 - 30).tolist()
    rays = _rays(geometry, affines, shape, az, el, **sampling)
    volume = torch.rand(b, c, *shape, generator=gen).to(DEVICE)
    return volume, rays


@pytest.mark.parametrize("case", CASES, ids=["b1c1", "b2c3", "b3c2"])
def test_forward_matches_reference(case):
    volume, rays = _case(case)
    _assert_close(TritonBackend.forward(volume, rays), march_forward(volume, rays))


@pytest.mark.parametrize("unroll", [2, 4])
def test_unrolled_forward_matches_reference(unroll, triton_config):
    """Several samples per loop iteration (an autotuned option on the GPU): rays whose sample counts are
    not multiples of the unroll factor still stop at their last sample."""
    volume, rays = _case(CASES[1], seed=2)
    assert bool((rays.n_samples % unroll != 0).any()), "the case must have sample counts that are not multiples"
    triton_config(forward_unroll=unroll)
    _assert_close(TritonBackend.forward(volume, rays), march_forward(volume, rays))


@pytest.mark.parametrize("block_r, warps", [(16, 1), (32, 4)])  # unpinned, 45 rays would give 64
def test_pinned_launch_configuration_matches_reference(block_r, warps, monkeypatch, triton_config):
    """A launch configuration pinned by the TritonConfig (rays per program, warps) replaces the default one
    (the autotuner on a GPU): the programs are sized by it, in runs of rays and in 2-D tiles, and the
    forward (unrolled) and adjoint still match the reference."""
    volume, rays = _case(CASES[1], seed=3)
    grad = torch.rand(*rays.t_near.shape, volume.shape[1], device=DEVICE)
    seen = []
    programs = triton_launch.program_count
    monkeypatch.setattr(triton_launch, "program_count", lambda n, b, w, t: seen.append(b) or programs(n, b, w, t))
    triton_config(forward_launch=(block_r, warps), adjoint_launch=(block_r, warps), forward_unroll=2)
    for cols in (None, 9):  # 45 rays: runs of rays; 5 × 9 detector: tiles 4 wide
        _assert_close(TritonBackend.forward(volume, rays, detector_cols=cols), march_forward(volume, rays))
        _assert_close(TritonBackend.adjoint(grad, volume.shape, rays, detector_cols=cols),
                      march_adjoint(grad, volume.shape, rays))
    assert seen == [block_r] * 4


@pytest.mark.parametrize("name, value, words", [
    ("forward_launch", (48, 4), "power of two"), ("adjoint_launch", (8, 4), "power of two"),
    ("adjoint_launch", (64, 3), "warps must be"), ("forward_launch", (2048, 4), "power of two"),
    ("forward_launch", 128, "None .autotuned. or"), ("adjoint_pack", 3, "one of"), ("carry_max_pack", 8, "one of"),
    ("adjoint_plane_axis", 3, "-1 .auto."), ("tune_plane_carry", 1, "True or False"),
    ("skip_empty_brick", 3, "one of"), ("forward_tile_width", 3, "power of two"), ("keep_rays_mib", -1, "non-negative"),
    ("forward_unroll", 3, "one of")])
def test_bad_configuration_is_refused_when_made(name, value, words):
    """A TritonConfig out of range fails on construction, with one message naming the field."""
    from xraysyn.projector.triton import TritonConfig, TritonConfigError

    with pytest.raises(TritonConfigError, match=f"{name}.*{words}"):
        TritonConfig(**{name: value})


def test_configuration_is_frozen_and_scoped_to_its_block():
    """use_config applies inside its block only; the configuration cannot be changed in place."""
    import dataclasses

    from xraysyn.projector.triton import DEFAULT_CONFIG, TritonConfig, TritonConfigError, active_config, use_config

    unpacked = dataclasses.replace(DEFAULT_CONFIG, forward_pack=1)
    with use_config(unpacked):
        assert active_config() is unpacked
        with use_config(TritonConfig(keep_rays_mib=0)):
            assert active_config().keep_rays_mib == 0 and active_config().forward_pack == 4
        assert active_config() is unpacked
    assert active_config() is DEFAULT_CONFIG
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_CONFIG.forward_pack = 1
    with pytest.raises(TritonConfigError, match="TritonConfig"):
        with use_config({"forward_pack": 1}):
            pass


# adjoint schemes: the configuration's carry_max_pack (0: runs merged, no carry; 4: the carry at every pack)
SCHEMES = {"merged": 0, "merged+carry": 4}


@pytest.fixture
def unpacked(triton_config):
    """The unpacked layouts (forward_pack = adjoint_pack = 1), for tests of what acts on them only (the plain
    scatter's schemes, the unpacked forward): the packed defaults would otherwise bypass what they test."""
    triton_config(forward_pack=1, adjoint_pack=1)


@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("case", CASES[:2], ids=["b1c1", "b2c3"])
def test_adjoint_matches_reference(case, scheme, triton_config, unpacked):
    volume, rays = _case(case, seed=1)
    grad = torch.rand(*rays.t_near.shape, volume.shape[1], device=DEVICE)
    triton_config(carry_max_pack=SCHEMES[scheme])
    _assert_close(TritonBackend.adjoint(grad, volume.shape, rays), march_adjoint(grad, volume.shape, rays))


def _cell_steps(rays, shape):
    """Per consecutive pair of live samples: how many cells the sample moved along each axis ``(M, 3)``."""
    origin, direction, t_near, delta, n_samples, _ = rays.march_tensors()
    k = torch.arange(int(n_samples.max()), device=DEVICE, dtype=torch.float32)
    t = t_near[..., None] + (k + 0.5) * delta[..., None]
    pos = origin[:, None, None, :] + t[..., None] * direction[:, :, None, :]
    size = torch.tensor(shape, device=DEVICE, dtype=torch.float32)
    cells = torch.minimum(pos.clamp(min=0).minimum(size - 1).floor(), size - 2)
    live = k[1:] < n_samples[..., None]
    return (cells[:, :, 1:] - cells[:, :, :-1]).abs()[live]


@pytest.mark.parametrize("sampling", [{"step_mm": 1.0}, {"num_samples": 3}], ids=["quarter-voxel", "jumps"])
def test_carried_corners_cover_every_kind_of_cell_step(sampling, unpacked, triton_config):
    """Oblique rays: at a quarter-voxel step consecutive samples stay in a cell or step along one or two axes
    (forwards and backwards); at three samples per ray they jump several cells. The adjoint that carries
    shared corners across steps (plain and packed) and the forward equal the reference."""
    rays, shape = _oblique_rays(sampling)
    steps = _cell_steps(rays, shape)
    if "step_mm" in sampling:
        assert {0, 1, 2}.issubset(set((steps > 0).sum(-1).tolist())), "stay, and step along one and two axes"
    else:
        assert int(steps.max()) > 1, "samples must jump over cells"
    volume = torch.rand(1, 2, *shape, device=DEVICE)
    grad = torch.rand(*rays.t_near.shape, 2, device=DEVICE)
    for pack in (1, 2):
        triton_config(adjoint_pack=pack)
        _assert_close(TritonBackend.adjoint(grad, volume.shape, rays), march_adjoint(grad, volume.shape, rays))
    _assert_close(TritonBackend.forward(volume, rays), march_forward(volume, rays))


@pytest.mark.parametrize("pack", [2, 4])
@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("case", [CASES[0], CASES[2]], ids=["b1c1", "b3c2"])
def test_packed_adjoint_matches_reference(case, scheme, pack, triton_config):
    """The packed adjoint (x / y neighbours of a corner in one vector atomic, slots summed afterwards)
    gives the reference adjoint, faces and clamped samples included; C · pack is capped at 4 floats."""
    from xraysyn.projector.triton.layout import adjoint_pack

    volume, rays = _case(case, seed=3)
    channels = volume.shape[1]
    grad = torch.rand(*rays.t_near.shape, channels, device=DEVICE)
    config = triton_config(adjoint_pack=pack, carry_max_pack=SCHEMES[scheme])
    assert adjoint_pack(config, channels, torch.float32) == min(pack, 4 // channels) > 1
    result = TritonBackend.adjoint(grad, volume.shape, rays)
    expected = march_adjoint(grad, volume.shape, rays)
    assert bool((expected[..., -1, :] != 0).any()) and bool((expected[..., :, -1] != 0).any()), \
        "the rays must reach the last row and column, where the packed slots of the neighbours land"
    _assert_close(result, expected)


def test_addressing_strides_are_one_only_for_size_one_dimensions():
    """A size-1 dimension's stride is given as 1 (its index is always 0), every other stride as it is: the
    one-channel gradient the public adjoint and autograd hand over keeps stride rows · cols on its channel."""
    from xraysyn.projector.triton.backend import addressing_strides

    images = torch.rand(3, 1, 4, 5)
    grad = images.reshape(3, 1, -1).permute(0, 2, 1).contiguous()  # a no-op copy: torch calls it contiguous
    assert grad.stride() == (20, 1, 20) and addressing_strides(grad) == (20, 1, 1)
    wide = torch.rand(3, 2, 20).permute(0, 2, 1)
    assert addressing_strides(wide) == wide.stride() == (40, 1, 20)
    assert addressing_strides(torch.rand(1, 6, 1)[:, ::2]) == (1, 2, 1)


@pytest.mark.parametrize("pack", [1, 4])
def test_one_channel_adjoint_of_a_channel_strided_gradient_matches_reference(pack, triton_config):
    """The one-channel gradient as the public adjoint gives it (channel stride rows · cols, launched with
    stride 1) scatters what the contiguous gradient does: the reference adjoint's values, unpacked and packed."""
    volume, rays = _case(CASES[0], seed=5)
    n, r = rays.t_near.shape
    grad = torch.rand(n, 1, r, device=DEVICE).permute(0, 2, 1).contiguous()
    assert grad.stride()[-1] == r > 1
    triton_config(adjoint_pack=pack)
    result = TritonBackend.adjoint(grad, volume.shape, rays)
    _assert_close(result, march_adjoint(grad.clone(memory_format=torch.contiguous_format), volume.shape, rays))
    _assert_close(result, TritonBackend.adjoint(grad.reshape(n, r).unsqueeze(-1).clone(), volume.shape, rays))


def test_corners_are_carried_up_to_the_max_pack():
    """The adjoint carries shared corners with 1 or 2 slots per channel and not with 4 (measured slower there),
    unless carry_max_pack says otherwise; never with carry_max_pack 0."""
    from dataclasses import replace

    from xraysyn.projector.triton import DEFAULT_CONFIG
    from xraysyn.projector.triton.launch import adjoint_switches

    assert [adjoint_switches(DEFAULT_CONFIG, pack)["CARRY"] for pack in (1, 2, 4)] == [True, True, False]
    assert adjoint_switches(replace(DEFAULT_CONFIG, carry_max_pack=4), 4) == {"CARRY": True, "PLANE": 0}
    assert not any(adjoint_switches(replace(DEFAULT_CONFIG, carry_max_pack=0), pack)["CARRY"] for pack in (1, 2, 4))


def test_plane_carry_is_left_to_the_autotuner_only_where_it_is_free_to_choose():
    """With 4 slots, the carry not forced, and an autotuned launch, CARRY is the autotuner's: not where it is
    forced (carry_max_pack 4), switched off (tune_plane_carry), the pack has fewer slots (the carry is on
    there), the launch is pinned or nothing is tuned (the interpreter)."""
    from dataclasses import replace

    from xraysyn.projector.triton import DEFAULT_CONFIG
    from xraysyn.projector.triton.launch import CARRY_TUNED, adjoint_switches

    assert adjoint_switches(DEFAULT_CONFIG, 4, tuned=True) == {"CARRY": CARRY_TUNED, "PLANE": 0}
    assert [adjoint_switches(DEFAULT_CONFIG, pack, tuned=True)["CARRY"] for pack in (1, 2)] == [True, True]
    assert adjoint_switches(DEFAULT_CONFIG, 4)["CARRY"] is False  # not tuned
    for change in ({"carry_max_pack": 4}, {"tune_plane_carry": False}, {"adjoint_launch": (128, 4)}):
        carry = adjoint_switches(replace(DEFAULT_CONFIG, **change), 4, tuned=True)["CARRY"]
        assert carry == ("carry_max_pack" in change), change


@pytest.mark.parametrize("carry", [False, True], ids=["autotuner-picks-off", "autotuner-picks-on"])
def test_adjoint_left_to_the_autotuner_matches_reference_whatever_it_picks(carry, monkeypatch, triton_config):
    """The public adjoint with 4 slots on an autotuned backend goes through the kernel object tuned over the
    carry, leaves CARRY to it, packs across the rays' dominant axis, and gives the reference adjoint with
    the carry on or off (what the autotuner may pick); the fixed kernel object is not used."""
    from support.autotuner import ChosenConfig

    from xraysyn.projector.triton.kernels.adjoint import march_adjoint_kernel
    from xraysyn.projector.triton.launch import dominant_axis

    rays, shape = _oblique_rays({"step_mm": 1.0}, azimuths=(0.0, 30.0), elevations=(0.0, -10.0))
    axis = dominant_axis(rays.direction)
    assert axis != 0, "a plane other than z, so the layout's plane is checked"
    grad = torch.rand(*rays.t_near.shape, 1, device=DEVICE)
    tuner = ChosenConfig(march_adjoint_kernel, {"BLOCK_R": 64, "CARRY": carry})
    kernels = triton_launch.kernel_objects()._replace(tuned=True, adjoint=None, adjoint_carry_tuned=tuner)
    monkeypatch.setattr(triton_launch, "_KERNELS", kernels)
    triton_config(adjoint_pack=4)
    result = TritonBackend.adjoint(grad, (1, 1, *shape), rays)
    assert [(m["PACK"], m["PLANE"], "CARRY" in m) for m in tuner.launched] == [(4, axis, False)]
    _assert_close(result, march_adjoint(grad, (1, 1, *shape), rays))


def _oblique_rays(sampling, azimuths=(37.0, -128.0), elevations=(21.0, -33.0)):
    """Rays through a sheared (7, 6, 8) grid whose consecutive samples stay in a cell, step along one or
    two axes, forwards and backwards (``step_mm``), or jump cells (few samples)."""
    geometry = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(9, 8), pixel_spacing=(5.0, 6.0))
    affines = _affine((4.0, 3.0, 3.5), shear=0.6)[None]
    shape = (7, 6, 8)
    return _rays(geometry, affines, shape, list(azimuths), list(elevations), **sampling), shape


@pytest.mark.parametrize("plane", [0, 1, 2])
@pytest.mark.parametrize("sampling", [{"step_mm": 1.0}, {"num_samples": 3}], ids=["quarter-voxel", "jumps"])
def test_plane_carry_of_the_four_slot_adjoint_matches_reference(plane, sampling, triton_config):
    """One channel, 4 slots packed across each axis in turn, with and without the plane carry (a step of
    one cell along that axis keeps the shared quad of corners): the reference adjoint, for steps of every
    kind, in float32 and as the exact transpose in float64."""
    rays, shape = _oblique_rays(sampling)
    steps = _cell_steps(rays, shape)
    straight = (steps[:, plane] == 1) & (steps.sum(-1) == 1)
    assert bool(straight.any()) and bool((steps.sum(-1) > 1).any()), "single steps along the plane and others"
    grad = torch.rand(*rays.t_near.shape, 1, device=DEVICE)
    expected = march_adjoint(grad, (1, 1, *shape), rays)
    triton_config(adjoint_pack=4)
    triton_config(adjoint_plane_axis=plane)
    for carry_max in (2, 4):  # the carry off / on at 4 slots
        triton_config(carry_max_pack=carry_max)
        _assert_close(TritonBackend.adjoint(grad, (1, 1, *shape), rays), expected)
    rays64 = converted(rays, torch.float64)
    volume = torch.rand(1, 1, *shape, dtype=torch.float64, device=DEVICE)
    image = torch.rand(*rays.t_near.shape, 1, dtype=torch.float64, device=DEVICE)
    assert_adjoint_identity(lambda x: march_forward(x, rays64),
                            lambda y: TritonBackend.adjoint(y, (1, 1, *shape), rays64), volume, image)


@pytest.mark.parametrize("plane", [-1, 1, 2])
def test_plane_carry_with_several_volumes(plane, triton_config):
    """Several items (each view scatters into its own volume's packed slots), one channel, plane carry."""
    volume, rays = _case((3, 2, 1, (6, 7, 5), (7, 6), {"step_mm": 1.5}), seed=5)
    grad = torch.rand(*rays.t_near.shape, 1, device=DEVICE)
    triton_config(adjoint_pack=4)
    triton_config(carry_max_pack=4)
    triton_config(adjoint_plane_axis=plane)
    _assert_close(TritonBackend.adjoint(grad, volume.shape, rays), march_adjoint(grad, volume.shape, rays))


def test_plane_follows_the_rays_dominant_axis():
    """Auto plane: the voxel axis the rays cross most cells along, known on the host for rays from the Triton
    ray set-up (no device read) and equal to what the direction tensor itself says; z without the carry."""
    from dataclasses import replace

    from xraysyn.projector.triton import DEFAULT_CONFIG
    from xraysyn.projector.triton.launch import DOMINANT_AXIS_ATTR, adjoint_switches, dominant_axis

    geometry = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(9, 8), pixel_spacing=(5.0, 6.0))
    affines = _affine((4.0, 3.0, 3.5))[None].to(DEVICE)
    seen = set()
    for azimuth, elevation in ((0.0, 0.0), (90.0, 0.0), (0.0, 80.0), (30.0, -10.0)):
        poses = geometry.poses(torch.tensor([azimuth]), torch.tensor([elevation])).to(DEVICE)
        rays = triton_pkg.build_rays(poses, affines, (7, 6, 8), geometry, step_mm=1.0)
        known = getattr(rays.direction, DOMINANT_AXIS_ATTR)
        read = dominant_axis(rays.direction.clone())  # a copy has no attribute: read from the tensor
        assert known == read, (azimuth, elevation, known, read)
        middle = rays.direction[0, rays.direction.shape[1] // 2].abs()
        assert known == int(middle.argmax())
        seen.add(known)
    assert len(seen) == 3, seen  # the views above run along each axis in turn
    forced, default = replace(DEFAULT_CONFIG, carry_max_pack=4), DEFAULT_CONFIG
    assert adjoint_switches(forced, 4, rays.direction)["PLANE"] == known
    assert adjoint_switches(forced, 2, rays.direction)["PLANE"] == 0
    assert adjoint_switches(default, 4, rays.direction)["PLANE"] == 0  # no carry at 4 slots: the plane does not matter
    assert adjoint_switches(default, 4, rays.direction, tuned=True)["PLANE"] == known  # the autotuner may carry


def test_public_gradient_with_the_plane_carry_uses_the_host_known_axis(monkeypatch, triton_config):
    """forward_project's backward with the plane carry at 4 slots (one channel, auto plane): the gradient of
    the reference, and the plane comes from the ray set-up's host-side answer kept on the saved rays (no
    device read in the backward)."""
    seen = []
    dominant = triton_launch.dominant_axis
    monkeypatch.setattr(triton_launch, "dominant_axis",
                        lambda d: seen.append(getattr(d, triton_launch.DOMINANT_AXIS_ATTR, None)) or dominant(d))
    triton_config(carry_max_pack=4)
    geometry = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(9, 8), pixel_spacing=6.0)
    affine = _affine((4.0, 3.0, 3.5), shear=0.3).to(DEVICE)
    poses = geometry.poses(torch.tensor([10.0, 100.0]), torch.tensor([5.0, -20.0])).to(DEVICE)
    volume = torch.rand(1, 1, 7, 6, 8, device=DEVICE, requires_grad=True)
    weights = torch.rand(2, 1, 9, 8, device=DEVICE)
    (forward_project(volume, affine, poses, geometry, step_mm=1.0, backend="triton") * weights).sum().backward()
    reference = volume.detach().clone().requires_grad_(True)
    (forward_project(reference, affine, poses, geometry, step_mm=1.0, backend="reference") * weights).sum().backward()
    _assert_close(volume.grad, reference.grad)
    assert len(seen) == 1 and seen[0] in (0, 1, 2), seen


def test_public_api_tiles_non_square_detectors(monkeypatch, triton_config):
    """Rays of a non-square detector (9 rows × 20 columns) are marched in 2-D tiles of the detector raster
    (width 20) by the forward, its backward and the adjoint — the width comes from the ray set-up, kept on
    the (saved) rays — and the values equal the reference's."""
    launches = []
    launch = triton_backend_module.launch
    monkeypatch.setattr(triton_backend_module, "launch", lambda kernel, tuned, n, r, width, tile_w, *rest, **kw: (
        launches.append((width, tile_w)), launch(kernel, tuned, n, r, width, tile_w, *rest, **kw))[1])
    triton_config(forward_tile_width=4)
    triton_config(adjoint_tile_width=8)
    geometry = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(9, 20), pixel_spacing=3.0)
    affine = _affine((4.0, 3.0, 3.5)).to(DEVICE)
    poses = geometry.poses(torch.tensor([10.0, 100.0]), torch.tensor([5.0, -20.0])).to(DEVICE)
    volume = torch.rand(1, 2, 7, 6, 8, device=DEVICE, requires_grad=True)
    weights = torch.rand(2, 2, 9, 20, device=DEVICE)
    (forward_project(volume, affine, poses, geometry, num_samples=9, backend="triton") * weights).sum().backward()
    adjoint = forward_project_adjoint(weights, affine, poses, geometry, (7, 6, 8), num_samples=9, backend="triton")
    assert launches == [(20, 4), (20, 8), (20, 8)], launches
    reference = volume.detach().clone().requires_grad_(True)
    (forward_project(reference, affine, poses, geometry, num_samples=9, backend="reference") * weights).sum().backward()
    _assert_close(volume.grad, reference.grad)
    _assert_close(adjoint, reference.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("pack", [2, 4])
@pytest.mark.parametrize("case", [CASES[0], CASES[2]], ids=["b1c1", "b3c2"])
def test_packed_forward_matches_reference(case, pack, dtype, triton_config):
    """The forward reading the packed corner layout (x / y neighbours of each voxel stored with it, one
    vector load for several corners) gives the reference line integrals, clamped faces included;
    C · pack is capped at 16 bytes, and the unrolled march stops at each ray's last sample."""
    from xraysyn.projector.triton.layout import forward_pack

    volume, rays = _case(case, seed=4)
    volume = volume.to(dtype)
    channels = volume.shape[1]
    config = triton_config(forward_pack=pack, forward_unroll=2)
    expected_pack = min(pack, 16 // (channels * volume.element_size()))
    assert forward_pack(volume, 512.0, config) == expected_pack > 1
    expected = march_forward(volume.float(), rays)
    _assert_close(TritonBackend.forward(volume, rays), expected, 1e-4 if dtype == torch.float32 else 1e-3)


@pytest.mark.parametrize("pack", [2, 4])
def test_unpacking_the_adjoint_slots_is_the_transpose_of_packing(pack):
    """<pack(V), P> = <V, unpack(P)> in float64 for slot buffers P that are zero where no cell writes (the last
    row / column slots pointing past the grid), as the packed adjoint leaves them."""
    from xraysyn.projector.triton.layout import finish_gradient, pack_corners

    b, c, d, h, w = 2, 2 if pack == 2 else 1, 3, 4, 5
    gen = torch.Generator().manual_seed(pack)
    volume = torch.rand(b, c, d, h, w, generator=gen, dtype=torch.float64).to(DEVICE)
    slots = torch.rand(b, d, h, w, c, pack, generator=gen, dtype=torch.float64).to(DEVICE)
    slots[:, :, :, -1, :, 1] = 0  # x + 1 past the grid
    if pack == 4:
        slots[:, :, -1, :, :, 2:] = 0  # y + 1 past the grid
        slots[:, :, :, -1, :, 3] = 0
    unpacked = finish_gradient(slots.reshape(b, d, h, w, c * pack), (b, c, d, h, w), pack)
    assert unpacked.is_contiguous()
    assert_adjoint_identity(lambda x: pack_corners(x, pack).view(b, d, h, w, c, pack),
                            lambda y: finish_gradient(y.reshape(b, d, h, w, c * pack), (b, c, d, h, w), pack),
                            volume, slots)


@pytest.mark.parametrize("plane", [0, 1, 2])
def test_unpacking_four_slots_packed_across_each_axis(plane):
    """Slot ``2 · uo + vo`` of voxel p (packed across axis ``plane``; (u, v) the other two axes in (z, y, x)
    order) belongs to voxel ``p + uo · e_u + vo · e_v``; slots that point past the grid are ignored."""
    from xraysyn.projector.triton.layout import finish_gradient

    b, d, h, w = 2, 3, 4, 5
    slots = torch.rand(b, d, h, w, 4, generator=torch.Generator().manual_seed(plane), dtype=torch.float64)
    u, v = [axis for axis in range(3) if axis != plane]
    expected = torch.zeros(b, d, h, w, dtype=torch.float64)
    for uo in (0, 1):
        for vo in (0, 1):
            shift = [0, 0, 0]
            shift[u], shift[v] = uo, vo
            source = slots[:, :d - shift[0], :h - shift[1], :w - shift[2], 2 * uo + vo]
            expected[:, shift[0]:, shift[1]:, shift[2]:] += source
    result = finish_gradient(slots.to(DEVICE), (b, 1, d, h, w), 4, plane)
    torch.testing.assert_close(result[:, 0].cpu(), expected, rtol=1e-12, atol=1e-12)


def test_pack_corners_layout_and_budget(triton_config):
    """Slot ``c · pack + 2 · yo + xo`` of voxel (z, y, x) holds channel c of voxel (z, y + yo, x + xo);
    a packed copy larger than the memory budget is not made (the plain march is used)."""
    from xraysyn.projector.triton.layout import forward_pack, pack_corners

    volume = torch.arange(2 * 2 * 3 * 4 * 5, dtype=torch.float32, device=DEVICE).reshape(2, 2, 3, 4, 5)
    packed = pack_corners(volume[:, :1], 4).reshape(2, 3, 4, 5, 1, 4)
    for yo in (0, 1):
        for xo in (0, 1):
            torch.testing.assert_close(packed[:, :, :3, :4, 0, 2 * yo + xo], volume[:, 0, :, yo:3 + yo, xo:4 + xo],
                                       rtol=0, atol=0)
    packed2 = pack_corners(volume, 2).reshape(2, 3, 4, 5, 2, 2)
    channels_last = volume.permute(0, 2, 3, 4, 1)
    torch.testing.assert_close(packed2[..., 0], channels_last, rtol=0, atol=0)
    torch.testing.assert_close(packed2[..., 1], channels_last.roll(-1, 3).where(
        torch.arange(5, device=DEVICE).view(1, 1, 1, 5, 1) < 4, channels_last), rtol=0, atol=0)
    strided = torch.rand(2, 7, 3, 4, 10, device=DEVICE)[:, 1:5:2, :, :, ::2]  # any strides
    torch.testing.assert_close(pack_corners(strided, 2).reshape(2, 3, 4, 5, 2, 2)[..., 0],
                               strided.permute(0, 2, 3, 4, 1), rtol=0, atol=0)
    config = triton_config(forward_pack=4)
    assert forward_pack(volume[:, :1], 512.0, config) == 4
    assert forward_pack(volume[:, :1], volume[:, :1].numel() * 4 * 4 / 2**20 * 0.99, config) == 1
    assert forward_pack(torch.zeros(1, 3, 2, 2, 2), 512.0, config) == 1  # 3 channels: not a power of two


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_packing_pass_scans_for_non_finite_values(dtype):
    """The packing pass's fused scan sets its probe to inf exactly when the volume holds a NaN or ±inf —
    wherever it is, including the last voxel of a partial block — and not for large finite values; the
    packed values are the same with or without the scan."""
    from xraysyn.projector.triton.layout import _PACK_BLOCK_V, pack_corners

    shape = (2, 2, 5, 6, 7)  # 210 voxels per item: one partial block of _PACK_BLOCK_V
    assert shape[2] * shape[3] * shape[4] % _PACK_BLOCK_V != 0
    big = torch.finfo(dtype).max
    clean = (torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(dtype).to(DEVICE)
    clean[0, 0, 0, 0, 0] = big
    clean[1, 1, 2, 3, 4] = -big
    for where in (None, (0, 0, 0, 0, 0), (1, 1, 4, 5, 6), (0, 1, 2, 5, 0)):
        for bad in (float("nan"), float("inf"), -float("inf")):
            volume = clean.clone()
            if where is not None:
                volume[where] = bad
            probe = torch.zeros(1, device=DEVICE)
            packed = pack_corners(volume, 2, probe)
            assert torch.isfinite(probe).all().item() == (where is None), (where, bad)
            unscanned = pack_corners(volume, 2)
            assert torch.equal(packed.float().nan_to_num(), unscanned.float().nan_to_num())
            if where is None:
                break


def test_packed_adjoint_buffer_stays_within_the_memory_budget(triton_config):
    """The packed adjoint's buffer (C · pack floats per voxel) is used only within ``memory_budget_mib``;
    beyond it the adjoint scatters into the gradient itself, with the same values."""
    from xraysyn.projector.triton.layout import gradient_buffer

    config = triton_config(adjoint_pack=4)
    shape = (2, 1, 3, 4, 5)
    packed_mib = 2 * 3 * 4 * 5 * 4 * 4 / 2**20
    assert gradient_buffer(shape, torch.float32, DEVICE, packed_mib, config)[3] == 4
    assert gradient_buffer(shape, torch.float32, DEVICE, packed_mib * 0.99, config)[3] == 1
    volume, rays = _case(CASES[0], seed=9)
    grad = torch.rand(*rays.t_near.shape, volume.shape[1], device=DEVICE)
    expected = march_adjoint(grad, volume.shape, rays)
    for budget in (512.0, volume.numel() * 4 * 4 / 2**20 * 0.99):  # packed, then over budget: plain
        _assert_close(TritonBackend.adjoint(grad, volume.shape, rays, memory_budget_mib=budget), expected)


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_adjoint_identity_float64(scheme, triton_config):
    """<FP v, w> = <v, FPᵀ w> to float64 round-off: the adjoint is the exact transpose."""
    geometry = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(5, 4), pixel_spacing=(7.0, 8.0))
    affines = torch.stack([_affine((4.0, 3.5, 3.0), shear=0.4, dtype=torch.float64),
                           _affine((3.0, 3.0, 4.5), dtype=torch.float64)])
    rays = _rays(geometry, affines, (5, 6, 4), [-30.0, 40.0, 80.0, 10.0], [0.0, -15.0, 20.0, 5.0],
                 dtype=torch.float64, step_mm=1.7)
    v = torch.rand(2, 2, 5, 6, 4, dtype=torch.float64, device=DEVICE)
    w = torch.rand(4, 20, 2, dtype=torch.float64, device=DEVICE)
    triton_config(carry_max_pack=SCHEMES[scheme])
    lhs = assert_adjoint_identity(lambda x: TritonBackend.forward(x, rays),
                                  lambda y: TritonBackend.adjoint(y, v.shape, rays), v, w)
    assert lhs > 0


@pytest.mark.parametrize("channels", [1, 2])
def test_packed_forward_float64_is_the_transpose_of_the_adjoint(channels, triton_config):
    """The packed-corner forward (float64, one channel: x pairs in one 16-byte load) against the plain
    adjoint: <FP v, w> = <v, FPᵀ w> to float64 round-off; two float64 channels are not packed."""
    from xraysyn.projector.triton.layout import forward_pack

    geometry = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(5, 4), pixel_spacing=(7.0, 8.0))
    affines = _affine((4.0, 3.5, 3.0), shear=0.4, dtype=torch.float64)[None]
    rays = _rays(geometry, affines, (5, 6, 4), [-30.0, 80.0], [0.0, 20.0], dtype=torch.float64, step_mm=1.3)
    v = torch.rand(1, channels, 5, 6, 4, dtype=torch.float64, device=DEVICE)
    w = torch.rand(2, 20, channels, dtype=torch.float64, device=DEVICE)
    config = triton_config(forward_pack=4)
    assert forward_pack(v, 512.0, config) == (2 if channels == 1 else 1)
    lhs = assert_adjoint_identity(lambda x: TritonBackend.forward(x, rays),
                                  lambda y: TritonBackend.adjoint(y, v.shape, rays), v, w)
    assert lhs > 0


def test_uniform_box_integrates_to_closed_form_chords():
    """A uniform volume of value 1 integrates to the float64 chord length through its box (independent truth)."""
    spacing, shape = (5.0, 4.0, 4.5), (6, 7, 5)
    geometry = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(7, 9), pixel_spacing=10.0)
    origin = (-12.5, -12.0, -9.0)  # world mm of voxel (0, 0, 0)
    affine = _affine(spacing, origin=origin)
    lo = np.array(origin) - 0.5 * np.array(spacing)
    hi = lo + np.array(shape) * np.array(spacing)
    iso = (lo + hi) / 2
    volume = torch.ones(1, 1, *shape, device=DEVICE)
    for az, el in [(0.0, 0.0), (35.0, -20.0), (100.0, 10.0)]:
        image = forward_project(volume, affine.to(DEVICE), geometry.poses(az, el).to(DEVICE), geometry,
                                step_mm=1.3, backend="triton")[0, 0].double().cpu().numpy()
        source, pixels = pixel_rays(az, el, geometry.sdd, geometry.sid, 7, 9, 10.0, iso)
        truth = box_chords(source, pixels, lo, hi)
        assert truth.max() > 20 and (truth == 0).any(), "the detector must see chords and misses"
        np.testing.assert_allclose(image, truth, rtol=1e-5, atol=1e-4)


def test_non_contiguous_inputs():
    volume, rays = _case(CASES[1], seed=2)
    strided_volume = torch.rand(*volume.shape[:2], volume.shape[2] * 2, *volume.shape[3:], device=DEVICE)[:, :, ::2]
    channels_last = volume.contiguous(memory_format=torch.channels_last_3d)
    direction_t = rays.direction.permute(2, 0, 1).contiguous().permute(1, 2, 0)  # same values, other strides
    t_near_t = rays.t_near.t().contiguous().t()
    odd_rays = dataclasses.replace(rays, direction=direction_t, t_near=t_near_t)
    assert not strided_volume.is_contiguous() and not direction_t.is_contiguous()
    for vol in (strided_volume, channels_last):
        _assert_close(TritonBackend.forward(vol, odd_rays), march_forward(vol.contiguous(), rays))
    grad = torch.rand(volume.shape[1], *rays.t_near.shape, device=DEVICE).permute(1, 2, 0)
    assert not grad.is_contiguous()
    _assert_close(TritonBackend.adjoint(grad, volume.shape, odd_rays),
                  march_adjoint(grad.contiguous(), volume.shape, rays))


def test_rays_that_miss_give_exact_zeros():
    geometry = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(6, 5), pixel_spacing=9.0)
    affine = _affine((3.0, 3.0, 3.0))[None]
    rays = _rays(geometry, affine, (5, 5, 6), [10.0, 60.0], [5.0, -10.0], step_mm=1.5)
    assert (rays.n_samples == 0).any() and (rays.n_samples > 0).any()
    volume = torch.rand(1, 2, 5, 5, 6, device=DEVICE)
    out = TritonBackend.forward(volume, rays)
    _assert_close(out, march_forward(volume, rays))
    assert (out[rays.n_samples == 0] == 0).all()
    # a view whose every ray misses: zero image, zero gradient
    far = forward_project(volume, affine.to(DEVICE), geometry.poses(0.0, 0.0).to(DEVICE), geometry,
                          isocenter=torch.tensor([500.0, 0.0, 0.0], device=DEVICE), backend="triton")
    assert far.abs().max() == 0
    adj = forward_project_adjoint(torch.ones(1, 2, 6, 5, device=DEVICE), affine.to(DEVICE),
                                  geometry.poses(0.0, 0.0).to(DEVICE), geometry, (5, 5, 6),
                                  isocenter=torch.tensor([500.0, 0.0, 0.0], device=DEVICE), backend="triton")
    assert adj.abs().max() == 0


# ((tile width of the forward, of the adjoint march), detector (rows, cols), detector_cols hint): consecutive
# runs, 2-D tiles with the true width, tiles of a square detector found automatically, a wrong width hint,
# and different tilings for the two marches
TILINGS = [((0, 0), (9, 17), None), ((4, 4), (9, 17), 17), ((4, 4), (12, 12), None), ((4, 4), (9, 17), 8),
           ((4, 0), (9, 17), 17), ((0, 8), (15, 15), None)]


@pytest.mark.parametrize("tiling", TILINGS, ids=["runs", "tiles", "square-auto", "wrong-hint", "split", "split2"])
def test_ray_blocks_and_tiles_cover_every_ray_once(tiling, triton_config):
    """More rays than one program handles, partial tails, 2-D tiles: every ray is marched exactly once."""
    (forward_width, adjoint_width), detector, cols_hint = tiling
    triton_config(forward_tile_width=forward_width, adjoint_tile_width=adjoint_width)
    geometry = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=detector, pixel_spacing=(3.0, 2.0))
    rays = _rays(geometry, _affine((3.0, 3.0, 3.0))[None], (4, 5, 4), [20.0], [10.0], num_samples=3)
    n_rays = rays.n_samples.shape[1]
    assert n_rays > 128 and n_rays % 128 != 0
    volume = torch.rand(1, 1, 4, 5, 4, device=DEVICE)
    _assert_close(TritonBackend.forward(volume, rays, detector_cols=cols_hint), march_forward(volume, rays))
    grad = torch.rand(1, n_rays, 1, device=DEVICE)
    _assert_close(TritonBackend.adjoint(grad, volume.shape, rays, detector_cols=cols_hint),
                  march_adjoint(grad, volume.shape, rays))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_volumes_are_read_directly(dtype):
    volume, rays = _case(CASES[2], seed=3)
    low = volume.to(dtype)
    out = TritonBackend.forward(low, rays)
    assert out.dtype == torch.float32
    _assert_close(out, march_forward(low.float(), rays), rtol=1e-5)


def test_public_api_values_and_volume_gradient_match_reference():
    b, v, c, shape = 2, 2, 2, (5, 6, 4)
    geometry = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(5, 4), pixel_spacing=(7.0, 8.0))
    affines = torch.stack([_affine((4.0, 3.5, 3.0), shear=0.4), _affine((3.0, 3.0, 4.5))]).to(DEVICE)
    poses = geometry.poses(torch.tensor([-30.0, 40.0, 80.0, 10.0]), torch.tensor([0.0, -15.0, 20.0, 5.0])).to(DEVICE)
    weights = torch.rand(b * v, c, 5, 4, device=DEVICE)
    grads, images = {}, {}
    for backend in ("triton", "reference"):
        vol = torch.rand(b, c, *shape, generator=torch.Generator().manual_seed(4)).to(DEVICE).requires_grad_()
        images[backend] = forward_project(vol, affines, poses, geometry, num_samples=6, backend=backend)
        (images[backend] * weights).sum().backward()
        grads[backend] = vol.grad
    _assert_close(images["triton"], images["reference"])
    _assert_close(grads["triton"], grads["reference"])
    fpt = forward_project_adjoint(weights, affines, poses, geometry, shape, num_samples=6, backend="triton")
    _assert_close(fpt, grads["reference"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sampling", [{}, {"num_samples": 11}, {"step_mm": 1.7}])
def test_one_launch_ray_setup_matches_build_rays(dtype, sampling):
    """``xraysyn.projector.triton.build_rays`` (the kernel the public API uses on the GPU) equals the torch
    ``build_rays`` contract: same directions, entries, steps, chords and sample counts, with rays that
    miss the box (a wide detector, an off-centre isocenter) and sheared, translated affines."""
    geometry = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(9, 13), pixel_spacing=(6.0, 7.0),
                                principal_point=(3.6, 7.2))
    affines = torch.stack([_affine((3.0, 2.5, 3.5), dtype=dtype),
                           _affine((2.0, 2.2, 2.4), shear=0.3, origin=(5.0, -3.0, 2.0), dtype=dtype)])
    poses = geometry.poses(torch.tensor([0.0, 35.0, -50.0, 95.0], dtype=dtype),
                           torch.tensor([5.0, -10.0, 20.0, 0.0], dtype=dtype))
    iso = torch.tensor([[4.0, -6.0, 3.0], [0.0, 0.0, 0.0]], dtype=dtype)
    shape = (10, 12, 9)
    args = (poses.to(DEVICE), affines.to(DEVICE), shape, geometry)
    expected = build_rays(*args, isocenter=iso.to(DEVICE), **sampling)
    actual = triton_pkg.build_rays(*args, isocenter=iso.to(DEVICE), **sampling)
    hits = expected.n_samples > 0
    assert 0.2 < float(hits.float().mean()) < 0.95, "the geometry must have rays that hit and rays that miss"
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for name in ("origin", "direction"):
        _assert_close(getattr(actual, name), getattr(expected, name), rtol=tol)
    # distances along the ray: chords and steps are differences of entry and exit distances (~ the
    # source-detector distance), so their rounding error is absolute, a few ulps of those distances
    far = float((expected.t_near + expected.length).max())
    for name in ("t_near", "delta", "length"):
        err = float((getattr(actual, name) - getattr(expected, name)).abs().max())
        assert err <= tol * far, f"{name}: max error {err:.3g} mm exceeds {tol:g} × {far:.3g} mm"
    assert torch.equal(actual.n_samples, expected.n_samples)
    assert torch.equal(actual.volume_index, expected.volume_index)
    assert getattr(actual.volume_index, "_xraysyn_index_bound") == 2  # lets the march skip its device check


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_public_api_passes_low_precision_volumes_to_the_kernels(dtype, monkeypatch):
    """``forward_project(..., backend="triton")`` hands fp16/bf16 volumes to the kernels as stored: the
    line integrals equal those of the upcast volume (float32 output) and the gradient, in the volume's
    dtype, is the float32 adjoint rounded once."""
    geometry = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(7, 9), pixel_spacing=6.0)
    affine = _affine((3.0, 2.5, 3.5)).to(DEVICE)
    poses = geometry.poses(torch.tensor([0.0, 40.0]), torch.tensor([5.0, -15.0])).to(DEVICE)
    low = torch.rand(2, 2, 9, 10, 8, device=DEVICE).to(dtype).requires_grad_(True)
    upcast = low.detach().float().requires_grad_(True)
    weights = torch.rand(2, 2, 7, 9, device=DEVICE)
    seen = []
    kernel_forward = TritonBackend.forward

    def spy(volume, *args, **kwargs):
        seen.append(volume.dtype)
        return kernel_forward(volume, *args, **kwargs)

    monkeypatch.setattr(TritonBackend, "forward", staticmethod(spy))
    out_low = forward_project(low, affine, poses, geometry, backend="triton")
    assert seen == [dtype], "the kernels must receive the volume as stored, not an upcast copy"
    out_ref = forward_project(upcast, affine, poses, geometry, backend="reference")
    assert out_low.dtype == torch.float32
    _assert_close(out_low, out_ref)
    (out_low * weights).sum().backward()
    (out_ref * weights).sum().backward()
    assert low.grad.dtype == dtype
    _assert_close(low.grad.float(), upcast.grad.to(dtype).float(), rtol=1e-2)


def test_public_api_copies_the_frames_to_the_host_once(monkeypatch):
    """Validation and the Triton ray set-up (and BP) share one float64 host copy of poses, affines and
    isocenter: one device→host transfer for them per call. The forward queues the volume's packing pass
    (which also scans it for NaN/inf) first, then that copy (on a stream beside it), then the ray set-up; the
    scan's one-value probe is copied back right before the march's launch (a second, late transfer) and
    waited for and checked right after it: the GPU packs while the host validates, sets up rays and prepares
    the launch, and goes on to the march without waiting for the host. BP copies the frames with the images'
    extrema, in one transfer."""
    from xraysyn.projector import frames

    events, given = [], []
    host_copy = frames.HostCopy

    class SpyCopy(host_copy):
        def __init__(self, tensors):
            events.append(f"copy{len(tensors)}")
            self.spied = len(tensors)
            super().__init__(tensors)

        def wait(self):
            events.append(f"wait{self.spied}")
            return super().wait()

    pack, build_rays, on_host = triton_layout.pack_corners, triton_backend_module.build_rays, triton_rays.frames_on_host
    monkeypatch.setattr(frames, "HostCopy", SpyCopy)
    monkeypatch.setattr(triton_layout, "pack_corners",
                        lambda *args: events.append("pack+scan" if args[2] is not None else "pack") or pack(*args))
    monkeypatch.setattr(triton_backend_module, "build_rays",
                        lambda *args, **kwargs: events.append("rays") or build_rays(*args, **kwargs))
    for module in (triton_rays, triton_backprojection):
        monkeypatch.setattr(module, "frames_on_host", lambda *args: given.append(args[-2]) or on_host(*args))
    ray_args, launch = triton_backend_module._ray_args, triton_backend_module.launch
    monkeypatch.setattr(triton_backend_module, "_ray_args", lambda *args: events.append("ray args") or ray_args(*args))
    monkeypatch.setattr(triton_backend_module, "launch",
                        lambda *args, **kwargs: events.append("march") or launch(*args, **kwargs))
    geometry = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(5, 6), pixel_spacing=6.0)
    affines = torch.stack([_affine((4.0, 3.5, 3.0)), _affine((3.0, 3.5, 4.0), shear=0.2)]).to(DEVICE)
    poses = geometry.poses(torch.tensor([10.0, -40.0]), torch.tensor([0.0, 15.0])).to(DEVICE)
    iso = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 3.0]], device=DEVICE)
    volume = torch.rand(2, 2, 5, 6, 4, device=DEVICE)
    out = forward_project(volume, affines, poses, geometry, num_samples=5, isocenter=iso, backend="triton")
    # the packing pass with its scan; poses, affines, iso copied and read; rays; the forward's set-up; the probe's
    # copy queued; the march; the probe read
    assert events == ["pack+scan", "copy3", "wait3", "rays", "ray args", "copy1", "march", "wait1"], events
    assert len(given) == 1 and given[0] is not None  # the ray set-up reused the validation's host copy
    expected = forward_project(volume, affines, poses, geometry, num_samples=5, isocenter=iso, backend="reference")
    _assert_close(out, expected)
    events.clear()
    given.clear()
    images = torch.rand(2, 2, 5, 6, device=DEVICE)
    bp = backproject(images, affines, poses, geometry, (5, 6, 4), isocenter=iso, backend="triton")
    assert events == ["copy5", "wait5"] and len(given) == 1 and given[0] is not None  # poses, affines, iso, extrema
    _assert_close(bp, backproject(images, affines, poses, geometry, (5, 6, 4), isocenter=iso, backend="reference"))


def test_bad_inputs_raise_one_clear_error(monkeypatch):
    volume, rays = _case(CASES[0])
    with pytest.raises(TritonBackendInputError, match="t_near must have shape"):
        TritonBackend.forward(volume, dataclasses.replace(rays, t_near=rays.t_near[:, :-1]))
    with pytest.raises(TritonBackendInputError, match="volume_index must lie in"):
        TritonBackend.forward(volume, dataclasses.replace(rays, volume_index=rays.volume_index + 5))
    with pytest.raises(TritonBackendInputError, match="grad_out must have shape"):
        TritonBackend.adjoint(torch.zeros(1, 1, 1, device=DEVICE), volume.shape, rays)
    with pytest.raises(TritonBackendInputError, match=r"\(B, C, D, H, W\)"):
        TritonBackend.forward(volume[0], rays)
    assert issubclass(TritonBackendInputError, ValueError)
    if DEVICE.type == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(TritonBackendInputError, match="needs CUDA tensors"):
            TritonBackend.forward(volume, rays)


def test_available_follows_the_device_and_the_interpreter(monkeypatch):
    """available(device): CUDA devices always (with triton installed), CPU ones only under the interpreter;
    False for every device without triton."""
    from xraysyn.projector import triton as triton_pkg
    from xraysyn.projector.triton import runtime

    assert triton_pkg.available("cuda") is True
    assert triton_pkg.available(torch.device("cpu")) is triton_pkg.interpreting()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_pkg.interpreting() and triton_pkg.available("cpu") and triton_pkg.available()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_pkg.interpreting() and not triton_pkg.available("cpu")
    monkeypatch.setattr(runtime, "_triton_importable", lambda: False)
    assert not any(triton_pkg.available(device) for device in (None, "cuda", "cpu"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backproject_gather_matches_reference(dtype):
    geometry = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(7, 9), pixel_spacing=(3.0, 3.5))
    affines = torch.stack([_affine((4.0, 3.5, 3.0), shear=0.3), _affine((3.0, 3.0, 4.5), origin=(5.0, -3.0, 2.0))])
    poses = geometry.poses(torch.tensor([-30.0, 75.0]), torch.tensor([10.0, -5.0]))
    images = torch.rand(2, 9, 3, 7, generator=torch.Generator().manual_seed(5)).permute(0, 2, 3, 1)  # odd strides
    args = (images.to(DEVICE, dtype), affines.to(DEVICE, dtype), poses.to(DEVICE, dtype), geometry, (6, 7, 5))
    out = triton_pkg.backproject(*args)
    ref = backproject(*args)
    assert out.dtype == dtype and (ref == 0).any() and (ref > 0).any(), "need voxels on and off the detector"
    _assert_close(out, ref, rtol=RTOL if dtype == torch.float32 else 1e-12)


def test_backproject_gather_central_ray_closed_form():
    """PA view of a centred odd-sized volume: the voxels on the central ray hold I / (H · spacing_j)."""
    spacing, shape = (3.0, 2.5, 2.0), (5, 7, 9)
    geometry = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(5, 7), pixel_spacing=4.0)
    images = torch.full((1, 2, 5, 7), 3.0, device=DEVICE)
    images[:, 1] = 5.0
    out = triton_pkg.backproject(images, _affine(spacing)[None].to(DEVICE), geometry.poses(0.0, 0.0).to(DEVICE),
                                     geometry, shape)
    central = out[0, :, shape[0] // 2, :, shape[2] // 2].cpu()  # (C, H): the voxels along the beam
    expected = torch.tensor([3.0, 5.0])[:, None] / (shape[1] * spacing[1])
    torch.testing.assert_close(central, expected.expand_as(central), rtol=1e-6, atol=0)


# (volume dtype, accumulator, channels, VEC, TILE_W, adjoint corner carry, PACK of the forward and the adjoint)
# compiled for sm_90 without a GPU; the forward with FORWARD_UNROLL samples per loop iteration
FORWARD_UNROLL = 2
COMPILE_VARIANTS = [("fp32", "fp32", 2, 2, 16, True, 1), ("fp16", "fp32", 3, 1, 0, False, 1),
                    ("fp64", "fp64", 1, 1, 16, True, 1), ("fp32", "fp32", 2, 2, 8, True, 2),
                    ("fp32", "fp32", 1, 1, 8, True, 4)]


def test_kernels_compile_for_sm90():
    """The real compiler (not the interpreter) accepts every kernel variant; channel vectors become vector
    loads and vector atomics, and the adjoint issues its atomics as fire-and-forget reductions."""
    from support.triton_compile import compile_ptx

    kernels = "xraysyn.projector.triton.kernels."
    ints = {"nsamp_ptr": "*i32", "vidx_ptr": "*i64"}
    aligned = ["vol_ptr", "grad_ptr", "out_ptr", "s_vb", "s_vd", "s_vh"]
    specs = []
    for i, (vol_type, acc_type, channels, vec, tile_w, carry, pack) in enumerate(COMPILE_VARIANTS):
        block_c = 1 << max(0, channels - 1).bit_length()
        common = {"BLOCK_R": 128, "BLOCK_C": block_c, "ACC": "tl." + {"fp32": "float32", "fp64": "float64"}[acc_type],
                  "VEC": vec, "TILE_W": tile_w}
        adjoint_vec = vec if pack == 1 else channels * pack
        specs.append({"module": kernels + "march", "kernel": "march_forward_kernel",
                      "constexprs": {**common, "VEC": adjoint_vec, "UNROLL": FORWARD_UNROLL, "PACK": pack,
                                     "BRICK": 4 * (i % 2)},
                      "pointer_types": {**ints, "vol_ptr": "*" + vol_type, "occ_ptr": "*u8"},
                      "default_pointer": "*" + acc_type,
                      "aligned": aligned})
        specs.append({"module": kernels + "adjoint", "kernel": "march_adjoint_kernel",
                      "constexprs": {**common, "VEC": adjoint_vec, "PACK": pack, "CARRY": carry, "PLANE": 0},
                      "pointer_types": ints, "default_pointer": "*" + acc_type, "aligned": aligned})
        specs.append({"module": kernels + "backproject", "kernel": "backproject_gather_kernel",
                      "constexprs": {"BLOCK_V": 256, "BLOCK_C": block_c, "ACC": common["ACC"]},
                      "default_pointer": "*" + acc_type})
    packed_variants = [variant for variant in COMPILE_VARIANTS if variant[6] > 1]
    pack_specs = [{"module": kernels + "layout", "kernel": "pack_corners_kernel", "default_pointer": "*" + vol_type,
                   "pointer_types": {"probe_ptr": "*fp32", "occ_ptr": "*u8"}, "aligned": ["dst_ptr"],
                   "constexprs": {"BLOCK_V": 256, "PACK": pack, "K": channels * pack, "CHECK_FINITE": i % 2 == 0,
                                  "BRICK": 0}}
                  for i, (vol_type, _, channels, _, _, _, pack) in enumerate(packed_variants)]
    pack_specs += [{"module": kernels + "layout", "kernel": "unpack_corners_kernel", "default_pointer": "*fp32",
                    "constexprs": {"BLOCK_V": 256, "BLOCK_C": channels, "PACK": pack}}
                   for _, _, channels, _, _, _, pack in packed_variants]
    # 4 slots packed across y and x with the plane carry, and their unpacking (across z: the variants above)
    plane_specs = [{"module": kernels + "adjoint", "kernel": "march_adjoint_kernel", "pointer_types": ints,
                    "default_pointer": "*fp32", "aligned": aligned,
                    "constexprs": {"BLOCK_R": 128, "BLOCK_C": 1, "ACC": "tl.float32", "VEC": 4, "TILE_W": 8,
                                   "PACK": 4, "CARRY": True, "PLANE": plane}} for plane in (1, 2)]
    plane_specs += [{"module": kernels + "layout", "kernel": "unpack_corners_kernel", "default_pointer": "*fp32",
                     "constexprs": {"BLOCK_V": 256, "BLOCK_C": 1, "PACK": 4, "PLANE": plane}} for plane in (1, 2)]
    # empty space skipping's marking (in the packing pass, or on its own for any layout) and dilation
    marking_specs = [{"module": kernels + "layout", "kernel": "pack_corners_kernel", "default_pointer": "*fp32",
                      "pointer_types": {"probe_ptr": "*fp32", "occ_ptr": "*u8"}, "aligned": ["dst_ptr"],
                      "constexprs": {"BLOCK_V": 256, "PACK": 2, "K": 4, "CHECK_FINITE": True, "BRICK": 4}},
                     {"module": kernels + "layout", "kernel": "mark_occupied_kernel", "default_pointer": "*fp16",
                      "pointer_types": {"occ_ptr": "*u8"}, "constexprs": {"BLOCK_V": 256, "BLOCK_C": 4, "BRICK": 8}},
                     {"module": kernels + "layout", "kernel": "dilate_occupancy_kernel", "default_pointer": "*u8",
                      "constexprs": {"BLOCK": 256}}]
    ptx = compile_ptx(specs + pack_specs + plane_specs + marking_specs)
    for variant_ptx in ptx[-len(marking_specs):]:
        assert ".entry" in variant_ptx
    for i in range(len(COMPILE_VARIANTS)):  # the walk's one-byte look-ups are in the variants that skip
        assert bool(re.search(r"ld\.global(\.\w+)*\.[ub]8", ptx[3 * i])) == (i % 2 == 1), i
    for plane_ptx in ptx[len(specs) + len(pack_specs):len(specs) + len(pack_specs) + 2]:
        atomics = re.findall(r"\b(?:red|atom)\.global\.[\w.]+", plane_ptx)
        assert len(atomics) == 4 and all(a.endswith(".v4.f32") for a in atomics), set(atomics)  # 2 flush sites × 2
    n_packed = len(pack_specs) // 2
    for pack_ptx, spec in zip(ptx[len(specs):len(specs) + n_packed], pack_specs):
        assert "st.global.v4.b32" in pack_ptx  # each voxel's slots in one 16-byte vector store
        # the fused NaN/inf scan adds one scalar store (the probe), nothing else
        assert ("st.global.b32" in pack_ptx) == spec["constexprs"]["CHECK_FINITE"]
    for i, variant in enumerate(COMPILE_VARIANTS):
        forward, adjoint = ptx[3 * i], ptx[3 * i + 1]
        # relaxed, GPU-scoped atomics: Triton >= 3.7 emits them as fire-and-forget reductions (red), 3.6 as
        # atom with an unused result (which ptxas lowers to the same RED instruction)
        atomics = re.findall(r"\b(?:red|atom)\.global\.[\w.]+", adjoint)
        assert atomics and all(".gpu.relaxed.add." in a for a in atomics), (variant, set(atomics))
        if variant[3] == 2 and variant[6] == 1:
            assert "ld.global.v2" in forward, variant
        if variant[6] == 1 and variant[3] == 2:
            assert all(a.endswith(".v2.f32") for a in atomics), (variant, set(atomics))
        if variant[6] > 1:  # packed forward: 8 / PACK 16-byte vector loads per sample
            loads = re.findall(r"ld\.global\.v4\.b32", forward)
            assert len(loads) == FORWARD_UNROLL * 8 // variant[6], (variant, len(loads))
        if variant[6] > 1:  # packed adjoint: 16-byte vector atomics, 8 / PACK per cell flush
            assert all(a.endswith(".v4.f32") for a in atomics), (variant, set(atomics))
            plain = ptx[3 * COMPILE_VARIANTS.index(("fp32", "fp32", 2, 2, 16, True, 1)) + 1]
            plain_count = len(re.findall(r"\b(?:red|atom)\.global\.", plain))
            assert len(atomics) * variant[6] == plain_count, (variant, len(atomics), plain_count)


# ------------------------------------------------------------------------------------------ GPU
def _gpu_case(seed=0, b=2, v=3, c=2, shape=(40, 48, 36), det=(61, 67)):
    gen = torch.Generator().manual_seed(seed)
    geometry = ConeBeamGeometry(sdd=1200.0, sid=1000.0, detector_shape=det, pixel_spacing=(3.1, 2.9))
    affines = torch.stack([_affine((2.0, 1.8, 2.2), shear=0.1 * i) for i in range(b)])
    az = (torch.rand(b * v, generator=gen) * 360 - 180).tolist()
    el = (torch.rand(b * v, generator=gen) * 60 - 30).tolist()
    rays = _rays(geometry, affines, shape, az, el, device=torch.device("cuda"), step_mm=0.9)
    return torch.rand(b, c, *shape, generator=gen).cuda(), rays


@pytest.mark.cuda
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_cuda_forward_and_adjoint_match_reference(scheme, triton_config):
    volume, rays = _gpu_case()
    assert (rays.n_samples == 0).any()
    _assert_close(TritonBackend.forward(volume, rays), march_forward(volume, rays))
    triton_config(carry_max_pack=SCHEMES[scheme])
    grad = torch.rand(*rays.t_near.shape, volume.shape[1], device="cuda")
    _assert_close(TritonBackend.adjoint(grad, volume.shape, rays), march_adjoint(grad, volume.shape, rays))
    _assert_close(TritonBackend.forward(volume.half(), rays), march_forward(volume.half().float(), rays), 1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("channels, pack", [(2, 2), (1, 2), (1, 4)])
def test_cuda_packed_adjoint_matches_reference(channels, pack, triton_config):
    volume, rays = _gpu_case(seed=4, c=channels)
    triton_config(adjoint_pack=pack)
    grad = torch.rand(*rays.t_near.shape, channels, device="cuda")
    _assert_close(TritonBackend.adjoint(grad, volume.shape, rays), march_adjoint(grad, volume.shape, rays))


@pytest.mark.cuda
@pytest.mark.parametrize("channels, pack", [(2, 2), (1, 2), (1, 4)])
def test_cuda_packed_forward_matches_reference(channels, pack, triton_config):
    volume, rays = _gpu_case(seed=5, c=channels)
    triton_config(forward_pack=pack)
    _assert_close(TritonBackend.forward(volume, rays), march_forward(volume, rays))
    _assert_close(TritonBackend.forward(volume.bfloat16(), rays), march_forward(volume.bfloat16().float(), rays))


@pytest.mark.cuda
@pytest.mark.parametrize("plane", [-1, 0, 1, 2])
def test_cuda_plane_carry_matches_reference(plane, triton_config):
    """One channel, 4 slots with the plane carry across each axis (and the rays' dominant one)."""
    volume, rays = _gpu_case(seed=8, c=1)
    triton_config(adjoint_pack=4, carry_max_pack=4, adjoint_plane_axis=plane)
    grad = torch.rand(*rays.t_near.shape, 1, device="cuda")
    _assert_close(TritonBackend.adjoint(grad, volume.shape, rays), march_adjoint(grad, volume.shape, rays))


@pytest.mark.cuda
def test_cuda_autotuned_plane_carry_matches_reference():
    """The shipped defaults with one channel: the autotuner times the 4-slot adjoint with the plane carry on
    and off and keeps one; the result is the reference adjoint, and the choice is one of its configurations."""
    volume, rays = _gpu_case(seed=9, c=1)
    grad = torch.rand(*rays.t_near.shape, 1, device="cuda")
    _assert_close(TritonBackend.adjoint(grad, volume.shape, rays), march_adjoint(grad, volume.shape, rays))
    tuner = triton_launch.kernel_objects().adjoint_carry_tuned
    assert tuner.best_config.kwargs["CARRY"] in (False, True)
    timings = getattr(tuner, "configs_timings", None)  # kept by Triton >= 3.2
    assert timings is None or {c.kwargs["CARRY"] for c in timings} == {False, True}


@pytest.mark.cuda
def test_cuda_pinned_launch_configuration_matches_reference(monkeypatch, triton_config):
    """Pinned launch configurations bypass the autotuner (its kernel is launched directly) and still match."""
    volume, rays = _gpu_case(seed=7)
    grad = torch.rand(*rays.t_near.shape, volume.shape[1], device="cuda")
    triton_config(forward_launch=(64, 2), adjoint_launch=(256, 8))
    monkeypatch.setattr(triton_launch.kernel_objects().forward, "run", None)  # the autotuners must not run
    monkeypatch.setattr(triton_launch.kernel_objects().adjoint, "run", None)
    _assert_close(TritonBackend.forward(volume, rays), march_forward(volume, rays))
    _assert_close(TritonBackend.adjoint(grad, volume.shape, rays), march_adjoint(grad, volume.shape, rays))


@pytest.mark.cuda
def test_cuda_unpacked_forward_and_adjoint_without_carry_match_reference(triton_config, unpacked):
    volume, rays = _gpu_case(seed=6)
    _assert_close(TritonBackend.forward(volume, rays), march_forward(volume, rays))
    triton_config(carry_max_pack=0)
    grad = torch.rand(*rays.t_near.shape, volume.shape[1], device="cuda")
    _assert_close(TritonBackend.adjoint(grad, volume.shape, rays), march_adjoint(grad, volume.shape, rays))


@pytest.mark.cuda
def test_cuda_adjoint_identity_float64_and_auto_selection():
    from xraysyn.projector.api import _select_backend

    assert _select_backend("auto", torch.device("cuda"), ray_grad=False) is TritonBackend
    volume, rays = _gpu_case(seed=1, b=1, v=2, c=3, shape=(20, 24, 18), det=(33, 31))
    rays64 = converted(rays, torch.float64)
    v = volume.double()
    w = torch.rand(*rays.t_near.shape, 3, dtype=torch.float64, device="cuda")
    assert_adjoint_identity(lambda x: TritonBackend.forward(x, rays64),
                            lambda y: TritonBackend.adjoint(y, v.shape, rays64), v, w, rtol=1e-11)


@pytest.mark.cuda
def test_cuda_backproject_gather_matches_reference():
    geometry = ConeBeamGeometry(sdd=1200.0, sid=1000.0, detector_shape=(61, 67), pixel_spacing=(3.1, 2.9))
    affines = torch.stack([_affine((2.0, 1.8, 2.2), shear=0.1 * i) for i in range(3)]).cuda()
    poses = geometry.poses(torch.tensor([-40.0, 0.0, 70.0]), torch.tensor([5.0, 0.0, -20.0])).cuda()
    images = torch.rand(3, 2, 61, 67, device="cuda")
    out = triton_pkg.backproject(images, affines, poses, geometry, (40, 48, 36))
    _assert_close(out, backproject(images, affines, poses, geometry, (40, 48, 36)))


def test_public_backproject_routes_to_the_triton_gather():
    """``backproject(..., backend="triton")`` equals the differentiable torch path; with gradients
    required the Triton path is refused with one clear error."""
    from xraysyn.projector import ProjectorInputError, backproject

    geom = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(6, 7), pixel_spacing=5.0)
    images = torch.rand(2, 2, 6, 7, device=DEVICE)
    affine = torch.diag(torch.tensor([3.0, 2.5, 3.5, 1.0], device=DEVICE)).expand(2, 4, 4)
    poses = geom.poses(torch.tensor([0.0, 30.0]), torch.tensor([5.0, -10.0])).to(DEVICE)
    ref = backproject(images, affine, poses, geom, (5, 6, 4), backend="reference")
    fast = backproject(images, affine, poses, geom, (5, 6, 4), backend="triton")
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ProjectorInputError, match="gradients"):
        backproject(images.requires_grad_(True), affine, poses, geom, (5, 6, 4), backend="triton")


def test_gpu_autotuners_build_with_valid_keys():
    """The GPU (non-interpreter) kernel objects build: autotuning keys and reset names are kernel arguments
    (Triton >= 3.7 checks this when the autotuner is made; older versions would silently never re-tune)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("from xraysyn.projector.triton import launch as tb; "
            "k = tb.kernel_objects(); assert k.tuned; "
            "both = {(c.kwargs['BLOCK_R'], c.num_warps, c.kwargs['CARRY']) for c in k.adjoint_carry_tuned.configs}; "
            "assert both == {(b, w, c) for b, w in tb._TUNING_CONFIGS for c in (False, True)}, both; "
            "assert 'CARRY' not in k.adjoint_carry_tuned.keys and 'CARRY' in k.adjoint.keys; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
