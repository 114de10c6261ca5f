"""The projector's host-side path: the exact memo of validations and ray set-up numbers, and the Triton
backend's volume work started ahead of the rays (layout copy and fused NaN/inf scan) — Triton interpreter
without a GPU."""

import os
import threading

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from support.projector_truth import assert_close_to_scale
from xraysyn.geometry import ConeBeamGeometry
from xraysyn.projector import ProjectorInputError, api, forward_project, frames
from xraysyn.projector import build_rays as build_rays_reference
from xraysyn.host_cache import HostMemo, array_key

GEOMETRY = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(6, 5), pixel_spacing=(6.0, 7.0))
AFFINE = torch.diag(torch.tensor([4.0, 3.5, 3.0, 1.0]))


# ------------------------------------------------------------------------------------------ memo
def test_host_memo_keeps_the_most_recently_used_entries():
    memo = HostMemo(max_entries=2)
    memo.put("a", 1)
    memo.put("b", 2)
    assert memo.get("a") == 1  # "a" is now the most recent: "b" goes first
    memo.put("c", 3)
    assert memo.get("b") is None and memo.get("a") == 1 and memo.get("c") == 3 and len(memo) == 2
    memo.put("a", 4)  # replacing keeps one entry per key
    assert memo.get("a") == 4 and len(memo) == 2
    memo.clear()
    assert len(memo) == 0 and memo.get("a") is None
    with pytest.raises(ValueError, match="None"):
        memo.put("d", None)
    with pytest.raises(ValueError, match="max_entries"):
        HostMemo(0)


def test_host_memo_is_safe_across_threads():
    memo = HostMemo(max_entries=8)
    errors = []

    def work(offset):
        try:
            for i in range(2000):
                memo.put((offset, i % 16), i)
                memo.get((offset, (i + 3) % 16))
        except Exception as exc:  # noqa: BLE001 - any failure in a thread is what the test looks for
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(memo) == 8


def test_array_key_tells_apart_exactly_what_differs():
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    assert array_key(a) == array_key(a.copy())
    assert array_key(a) != array_key(a.reshape(4, 3))  # same bytes, other shape
    assert array_key(a) != array_key(a.astype(np.float32))
    b = a.copy()
    b[2, 3] = np.nextafter(b[2, 3], np.inf)  # one ulp
    assert array_key(a) != array_key(b)
    assert array_key(a.T) == array_key(np.ascontiguousarray(a.T))  # by values, not by memory layout
    assert array_key(None) is None


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("changed", ["poses", "affine", "isocenter"])
def test_frames_changed_in_place_give_the_new_projection(backend, changed):
    """The memo is keyed by values: writing into the poses, affine or isocenter tensor between calls gives
    the new rays."""
    volume = torch.rand(1, 1, 5, 6, 4, generator=torch.Generator().manual_seed(0))
    poses = GEOMETRY.poses(torch.tensor([25.0, -40.0]))
    affine = AFFINE.clone()
    iso = torch.tensor([1.0, -2.0, 0.5])
    first = forward_project(volume, affine, poses, GEOMETRY, step_mm=2.0, isocenter=iso, backend=backend)
    if changed == "poses":
        poses.copy_(GEOMETRY.poses(torch.tensor([70.0, 5.0])))
    elif changed == "affine":
        affine[0, 0], affine[1, 3] = 5.0, 4.0
    else:
        iso[2] = -6.0
    second = forward_project(volume, affine, poses, GEOMETRY, step_mm=2.0, isocenter=iso, backend=backend)
    expected = forward_project(volume, affine.clone(), poses.clone(), GEOMETRY, step_mm=2.0, isocenter=iso.clone(),
                               backend="reference")
    # float32 agreement relative to the largest value (the backends' tolerance elsewhere)
    torch.testing.assert_close(second, expected, rtol=0, atol=1e-4 * float(expected.abs().max()))
    assert not torch.allclose(first, second)


def test_failed_validations_are_not_remembered():
    """Bad frames raise on every call; good frames made bad in place raise too."""
    volume = torch.rand(1, 1, 5, 6, 4)
    poses = GEOMETRY.poses(torch.tensor([10.0]))
    singular = AFFINE.clone()
    singular[2, 2] = 0.0
    for _ in range(2):
        with pytest.raises(ProjectorInputError, match="zero voxel spacing|singular"):
            forward_project(volume, singular, poses, GEOMETRY, step_mm=2.0)
    affine = AFFINE.clone()
    forward_project(volume, affine, poses, GEOMETRY, step_mm=2.0)  # validated, remembered
    affine[1, 1] = 0.0
    with pytest.raises(ProjectorInputError, match="zero voxel spacing|singular"):
        forward_project(volume, affine, poses, GEOMETRY, step_mm=2.0)
    skewed = poses.clone()
    skewed[0, 0, 0] = 1.5
    with pytest.raises(ProjectorInputError, match="orthonormal"):
        forward_project(volume, AFFINE, skewed, GEOMETRY, step_mm=2.0)


def test_repeated_frames_skip_the_checks(monkeypatch):
    """The point of the memo: the same frames again are not validated again (and a different isocenter is
    a different key)."""
    frames._VALID_POSES.clear()
    frames._VALID_VOLUME_FRAMES.clear()
    calls = []
    check = frames._check_poses_host
    monkeypatch.setattr(frames, "_check_poses_host", lambda host: calls.append(1) or check(host))
    volume = torch.rand(1, 1, 5, 6, 4)
    poses = GEOMETRY.poses(torch.tensor([33.0, -12.0]))  # angles no other test uses: not yet remembered
    for _ in range(3):
        forward_project(volume, AFFINE, poses, GEOMETRY, step_mm=2.0)
    assert len(calls) == 1
    forward_project(volume, AFFINE, poses, GEOMETRY, step_mm=2.0, isocenter=torch.tensor([1.0, 0.0, 0.0]))
    assert len(calls) == 1  # other volume frames, same poses: only the affine and isocenter are checked
    validated = []
    validate = frames.validate_affine
    monkeypatch.setattr(frames, "validate_affine", lambda a: validated.append(1) or validate(a))
    forward_project(volume, AFFINE, poses.flip(0), GEOMETRY, step_mm=2.0)  # new poses, known affine
    assert len(calls) == 2 and not validated


# ------------------------------------------------------------------------------------------ Triton
triton_pkg = pytest.importorskip("xraysyn.projector.triton")
from xraysyn.projector.triton import launch as triton_launch  # noqa: E402
from xraysyn.projector.triton import layout as triton_layout  # noqa: E402
from xraysyn.projector.triton import rays as triton_rays  # noqa: E402
needs_triton = pytest.mark.skipif(not (api._triton_backend() is not None), reason="Triton cannot run here")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@needs_triton
@pytest.mark.parametrize("layout", ["packed", "channels-last copy", "in place"])
@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_non_finite_volumes_raise_on_every_layout(layout, triton_config):
    """The scan runs fused into the packing pass, or as one reduction for the unpacked layouts (a channels-first
    volume's channels-last copy, or a channels-last volume read in place); either way a NaN or inf anywhere
    raises one clear error and nothing is returned (the march, queued before the check's result is read, runs
    over the bad values and its result is dropped: the interpreter's numpy warns about them)."""
    channels = 2
    if layout != "packed":
        triton_config(forward_pack=1)
    memory_format = torch.channels_last_3d if layout == "in place" else torch.contiguous_format
    poses = GEOMETRY.poses(torch.tensor([25.0, -40.0])).to(DEVICE)
    for bad in (float("nan"), float("inf"), -float("inf")):
        volume = torch.rand(2, channels, 5, 6, 4, device=DEVICE).contiguous(memory_format=memory_format)
        volume[1, 1, 4, 5, 3] = bad
        with pytest.raises(ProjectorInputError, match="non-finite"):
            forward_project(volume, AFFINE.to(DEVICE), poses, GEOMETRY, step_mm=2.0, backend="triton")
    volume = torch.rand(2, channels, 5, 6, 4, device=DEVICE)
    out = forward_project(volume, AFFINE.to(DEVICE), poses, GEOMETRY, step_mm=2.0, backend="triton")
    ref = forward_project(volume, AFFINE.to(DEVICE), poses, GEOMETRY, step_mm=2.0, backend="reference")
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@needs_triton
def test_the_layout_prepared_ahead_is_the_one_marched(monkeypatch):
    """forward_project packs the volume once (ahead of the rays) and the march reads that copy; a prepared
    layout handed to the backend for another tensor is ignored (the backend makes its own)."""
    from xraysyn.projector.triton import TritonBackend

    packs = []
    pack = triton_layout.pack_corners
    monkeypatch.setattr(triton_layout, "pack_corners", lambda *args: packs.append(1) or pack(*args))
    volume = torch.rand(1, 2, 5, 6, 4, device=DEVICE, requires_grad=True)
    poses = GEOMETRY.poses(torch.tensor([25.0, -40.0])).to(DEVICE)
    out = forward_project(volume, AFFINE.to(DEVICE), poses, GEOMETRY, step_mm=2.0, backend="triton")
    assert len(packs) == 1
    out.square().sum().backward()  # the backward does not need (or keep) the prepared copy
    reference = volume.detach().clone().requires_grad_(True)
    ref = forward_project(reference, AFFINE.to(DEVICE), poses, GEOMETRY, step_mm=2.0, backend="reference")
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(volume.grad, reference.grad, rtol=1e-4, atol=1e-5)

    other = torch.rand(1, 2, 5, 6, 4, device=DEVICE)
    prepared = TritonBackend.prepare_volume(other, check_finite=True)
    assert prepared.finite_probe is not None and torch.isfinite(prepared.finite_probe).all()
    march = api.prepare_march(volume.detach(), AFFINE.to(DEVICE), poses, GEOMETRY, step_mm=2.0, backend="triton")
    mismatched = TritonBackend.forward(march.volume, march.rays, prepared=prepared)
    torch.testing.assert_close(mismatched, TritonBackend.forward(march.volume, march.rays, prepared=march.prepared))
    torch.testing.assert_close(mismatched.permute(0, 2, 1).reshape(out.shape), out.detach(), rtol=1e-6, atol=1e-7)


def test_the_volume_work_is_queued_before_the_frames(monkeypatch):
    """prepare_march starts the volume's layout copy (the packing pass) before it places and copies the
    frames, so the GPU begins it as early as the call allows; bad frames still raise their own error."""
    from xraysyn.projector.triton import TritonBackend

    order = []
    prepare, placed = TritonBackend.prepare_volume, frames.placed_frame_tensors
    monkeypatch.setattr(TritonBackend, "prepare_volume",
                        staticmethod(lambda *args, **kwargs: order.append("volume") or prepare(*args, **kwargs)))
    monkeypatch.setattr(frames, "placed_frame_tensors", lambda *args: order.append("frames") or placed(*args))
    volume = torch.rand(1, 2, 5, 6, 4, device=DEVICE)
    poses = GEOMETRY.poses(torch.tensor([25.0])).to(DEVICE)
    api.prepare_march(volume, AFFINE.to(DEVICE), poses, GEOMETRY, step_mm=2.0, backend="triton")
    assert order == ["volume", "frames"]
    with pytest.raises(ProjectorInputError, match="poses must have shape"):
        api.prepare_march(volume, AFFINE.to(DEVICE), poses[0, :3], GEOMETRY, step_mm=2.0, backend="triton")


def test_to_device_copies_without_sharing_memory():
    """``frames.to_device``: the values (converted to the dtype asked for) in fresh memory, also from a
    read-only array (the host memo's) and from a CPU tensor on the CPU device."""
    memo_like = np.arange(6.0).reshape(2, 3)
    memo_like.flags.writeable = False
    out = frames.to_device(memo_like, torch.device("cpu"), torch.float32)
    assert out.dtype == torch.float32 and out.tolist() == memo_like.tolist()
    out += 1.0  # writable, and the array is untouched
    assert memo_like[1, 2] == 5.0
    source = torch.arange(4, dtype=torch.int64)
    copy = frames.to_device(source, torch.device("cpu"))
    copy[0] = 9
    assert source[0] == 0 and copy.dtype == torch.int64


# ------------------------------------------------------------------------------------------ GPU
# The GPU tests compare with the float64 reference within a fraction of its largest value
# (projector_truth.assert_close_to_scale), not element by element: on the public forward's case below (seed 0,
# CPU) the float32 torch reference itself is 8.6e-5 × max |grad| from float64 (forward 6.8e-6 × max), up to 2.4×
# the element-wise rtol = atol = 1e-4 these tests used to apply between two float32 results; the Triton kernels
# (CPU interpreter) 9.2e-5 (forward 7.7e-6). A volume gradient carries the forward's rounding too (the cotangent
# of out.square().sum() is 2 · out), and kernels compiled for a GPU contract sample positions into FMAs, rounded
# otherwise than the reference's separate operations.
def _queue_long_gpu_work() -> torch.cuda.Stream:
    """Queue a kernel that spins for ~0.5 s on the current stream; returns the stream (``query()`` is False
    while it runs)."""
    torch.cuda.synchronize()
    torch.cuda._sleep(1_000_000_000)
    return torch.cuda.current_stream()


@pytest.mark.cuda
def test_cuda_host_to_device_copies_do_not_wait_for_queued_work(triton_config):
    """``frames.to_device``, the one-launch ray set-up from host frames and frames given (partly or wholly)
    in host memory for a GPU queue their host→device copies without synchronising the stream (a plain
    ``.to("cuda")`` from pageable memory would wait for the long kernel queued before them, as it would
    wait for the volume's packing pass), and the values arrive."""
    triton_config(keep_rays_mib=0)  # the set-up's copies, every call
    geometry = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(6, 5), pixel_spacing=6.0)
    poses = geometry.poses(torch.tensor([25.0, -40.0]))
    host = frames.HostFrames(poses.double().numpy(), AFFINE[None].double().numpy(), None)
    poses_gpu, affines_gpu = poses.cuda(), AFFINE[None].cuda()  # before the long kernel: .cuda() would wait
    cuda = torch.device("cuda")

    def copies():
        values = frames.to_device(np.arange(5.0), cuda, torch.float32)
        rays = triton_pkg.build_rays(poses_gpu, affines_gpu, (5, 6, 4), geometry, step_mm=1.0, host_frames=host)
        mixed = frames.frame_tensors(AFFINE.numpy(), poses_gpu, [1.0, 2.0, 3.0], 1, torch.float32, cuda)  # host + GPU
        placed, _ = frames.placed_frame_tensors(AFFINE, poses, None, 1, torch.float32, cuda)  # all given on the host
        return values, rays, mixed, placed

    copies()  # once untimed: the set-up kernel's first call compiles it, which can outlast the long kernel
    stream = _queue_long_gpu_work()
    values, rays, mixed, placed = copies()
    assert not stream.query(), "a host→device copy waited for the GPU work queued before it"
    assert all(t.is_cuda for t in (*mixed, *placed[:2]))
    torch.cuda.synchronize()
    assert values.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    expected = build_rays_reference(poses, AFFINE[None], (5, 6, 4), geometry, step_mm=1.0)
    torch.testing.assert_close(rays.t_near.cpu(), expected.t_near, rtol=1e-5, atol=1e-4)
    assert torch.equal(rays.n_samples.cpu(), expected.n_samples.to(rays.n_samples.dtype))


@pytest.mark.cuda
def test_cuda_host_copy_sees_the_work_queued_before_it():
    """The pinned, non-blocking frame copy returns the values the GPU computed before it was queued, even
    with more GPU work queued after it (which it does not wait for)."""
    values = torch.zeros(64, 4, 4, device="cuda")
    big = torch.rand(4096, 4096, device="cuda")
    values += (big @ big).sum() * 0 + 3.0  # ready only after a long kernel
    pending = frames.HostCopy([values, values[:2, :3, :3].double()])
    later = big @ big  # queued after the copy
    copied = pending.wait()
    assert copied[0].shape == (64, 4, 4) and copied[1].shape == (2, 3, 3)
    assert (copied[0] == 3.0).all() and (copied[1] == 3.0).all()
    assert torch.isfinite(later).all()


@needs_triton
@pytest.mark.cuda
@pytest.mark.parametrize("pose_dtype", [torch.float32, torch.float64])
def test_cuda_frames_are_copied_beside_the_volume_work(pose_dtype, monkeypatch, triton_config):
    """With a long kernel standing in for the packing pass, prepare_march validates the frames (converted
    and copied back on a stream beside it) and sets up the rays while that kernel still runs; the march
    then gives the reference's values (float64 poses: converted beside, read after the join)."""
    from xraysyn.projector.triton import TritonBackend

    prepare = TritonBackend.prepare_volume
    triton_config(keep_rays_mib=0)  # the set-up's copies, every call (the warm-up's too)
    volume = torch.rand(2, 2, 5, 6, 4, device="cuda")
    poses = GEOMETRY.poses(torch.tensor([31.0, -8.0])).to("cuda", pose_dtype)
    # once untimed: the first call compiles the packing and set-up kernels, which can outlast the long kernel
    api.prepare_march(volume, AFFINE.cuda(), poses, GEOMETRY, step_mm=1.0, backend="triton")

    def slow(volume, memory_budget_mib=512.0, check_finite=False):
        torch.cuda._sleep(1_000_000_000)  # ~0.5 s on the current stream, queued before the packing pass
        return prepare(volume, memory_budget_mib, check_finite=check_finite)

    monkeypatch.setattr(TritonBackend, "prepare_volume", staticmethod(slow))
    torch.cuda.synchronize()
    march = api.prepare_march(volume, AFFINE.cuda(), poses, GEOMETRY, step_mm=1.0, backend="triton")
    assert not torch.cuda.current_stream().query(), "the frames' copy waited for the volume work"
    out = api.march_prepared(march, GEOMETRY)
    expected = forward_project(volume.cpu().double(), AFFINE.double(), poses.cpu().double(), GEOMETRY, step_mm=1.0,
                               backend="reference")
    assert_close_to_scale(out.cpu(), expected, 5e-5, "forward")


@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["packed", "channels-last copy", "in place"])
def test_cuda_public_forward_scans_and_matches_reference(layout, triton_config):
    """The public forward and its volume gradient on the GPU, with each marched layout (a channels-last volume
    is read in place), against the float64 reference; a NaN or inf in the last voxel raises."""
    if layout != "packed":
        triton_config(forward_pack=1)
    memory_format = torch.channels_last_3d if layout == "in place" else torch.contiguous_format
    geometry = ConeBeamGeometry(sdd=1200.0, sid=1000.0, detector_shape=(61, 67), pixel_spacing=(3.1, 2.9))
    affine = torch.diag(torch.tensor([2.0, 1.8, 2.2, 1.0])).cuda()
    poses = geometry.poses(torch.tensor([-40.0, 10.0, 75.0])).cuda()
    volume = torch.rand(3, 2, 40, 48, 36, device="cuda").contiguous(memory_format=memory_format).requires_grad_(True)
    out = forward_project(volume, affine, poses, geometry, step_mm=0.9)
    out.square().sum().backward()
    truth = volume.detach().double().requires_grad_(True)
    ref = forward_project(truth, affine.double(), poses.double(), geometry, step_mm=0.9, backend="reference")
    ref.square().sum().backward()
    assert_close_to_scale(out, ref, 5e-5, "forward")
    assert_close_to_scale(volume.grad, truth.grad, 5e-4, "volume gradient")
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = volume.detach().clone()
        broken[2, 1, 39, 47, 35] = bad
        with pytest.raises(ProjectorInputError, match="non-finite"):
            forward_project(broken, affine, poses, geometry, step_mm=0.9)


@pytest.mark.cuda
def test_cuda_frames_given_on_the_host_are_not_copied_back(monkeypatch):
    """Poses and affines given in host memory for a GPU volume are validated from their CPU copies: the only
    device→host transfer of the call is the volume scan's probe."""
    copied = []
    host_copy = frames.HostCopy

    class SpyCopy(host_copy):
        def __init__(self, tensors):
            copied.append([t.device.type for t in tensors])
            super().__init__(tensors)

    monkeypatch.setattr(frames, "HostCopy", SpyCopy)
    geometry = ConeBeamGeometry(sdd=1200.0, sid=1000.0, detector_shape=(33, 31), pixel_spacing=3.0)
    poses = geometry.poses(torch.tensor([-40.0, 75.0]))  # CPU tensors
    volume = torch.rand(2, 2, 20, 24, 18, device="cuda")
    out = forward_project(volume, AFFINE, poses, geometry, step_mm=0.9)
    assert copied == [["cpu", "cpu"], ["cuda"]], copied  # frames from the host; the probe from the GPU
    ref = forward_project(volume.double(), AFFINE.cuda().double(), poses.cuda().double(), geometry, step_mm=0.9,
                          backend="reference")
    assert_close_to_scale(out, ref, 5e-5, "forward")
    with pytest.raises(ProjectorInputError, match="orthonormal"):
        forward_project(volume, AFFINE, poses * 1.5, geometry, step_mm=0.9)


# ------------------------------------------------------------------------------------------ kept ray sets
class _FakeRays:
    """A stand-in with a RaySet's tensor attributes: one float32 tensor of ``nbytes`` and a view of it."""

    def __init__(self, nbytes: int) -> None:
        self.origin = torch.zeros(nbytes // 4)
        self.direction = self.origin[:1]


def test_kept_rays_are_bounded_in_bytes_and_drop_the_least_recently_used():
    from xraysyn.projector.kept_rays import KeptRays, ray_set_bytes

    a, b, c = (_FakeRays(400) for _ in range(3))
    assert ray_set_bytes(a) == 400  # a view of the same storage is counted once
    kept = KeptRays()
    assert kept.put("a", a, max_bytes=1000) and kept.put("b", b, max_bytes=1000)
    assert kept.get("a") is a  # "a" is now the most recent: "b" goes first
    assert kept.put("c", c, max_bytes=1000)
    assert kept.get("b") is None and kept.get("a") is a and kept.get("c") is c
    assert len(kept) == 2 and kept.kept_bytes == 800
    assert not kept.put("big", _FakeRays(2000), max_bytes=1000)  # larger than the bound: never kept
    assert kept.get("big") is None and len(kept) == 2
    assert kept.put("a", a, max_bytes=400)  # a smaller bound drops the others
    assert len(kept) == 1 and kept.kept_bytes == 400 and kept.get("c") is None
    kept.clear()
    assert len(kept) == 0 and kept.kept_bytes == 0 and kept.get("a") is None


@pytest.fixture
def counted_ray_setups(monkeypatch):
    """The Triton ray set-up kernel's launches, counted (the kept ray sets forgotten before and after)."""
    triton_rays._KEPT_RAYS.clear()
    kernels = triton_launch.kernel_objects()
    launches = []

    class Counted:
        def __getitem__(self, grid):
            launches.append(grid)
            return kernels.ray_setup[grid]

    monkeypatch.setattr(triton_launch, "_KERNELS", kernels._replace(ray_setup=Counted()))
    yield launches
    triton_rays._KEPT_RAYS.clear()


@needs_triton
def test_a_geometry_met_again_reuses_its_ray_set(counted_ray_setups, triton_config):
    """Same frames, shape, detector and sampling: the kept ray set is returned and no set-up is launched;
    anything that changes the rays (sampling, detector, volume shape, dtype) gets its own set, with the
    values of the torch ray set-up; keep_rays_mib = 0 keeps none."""
    poses = GEOMETRY.poses(torch.tensor([17.0, -52.0])).to(DEVICE)
    affines = AFFINE[None].to(DEVICE)
    narrow = ConeBeamGeometry(sdd=300.0, sid=200.0, detector_shape=(6, 4), pixel_spacing=(6.0, 7.0))

    def rays(shape=(5, 6, 4), geometry=GEOMETRY, dtype=torch.float32, **sampling):
        sampling = sampling or {"step_mm": 1.5}
        return triton_pkg.build_rays(poses.to(dtype), affines.to(dtype), shape, geometry, **sampling)

    first = rays()
    assert rays().direction is first.direction and len(counted_ray_setups) == 1
    cases = {"step": ((5, 6, 4), GEOMETRY, {"step_mm": 1.25}), "samples": ((5, 6, 4), GEOMETRY, {"num_samples": 9}),
             "shape": ((5, 6, 5), GEOMETRY, {"step_mm": 1.5}), "detector": ((5, 6, 4), narrow, {"step_mm": 1.5})}
    made = {name: rays(shape, geometry, **sampling) for name, (shape, geometry, sampling) in cases.items()}
    made["float64"] = rays(dtype=torch.float64)
    assert len(counted_ray_setups) == 6 and len({id(r.direction) for r in (first, *made.values())}) == 6
    for name, (shape, geometry, sampling) in cases.items():
        reference = build_rays_reference(poses.cpu(), AFFINE[None], shape, geometry, **sampling)
        torch.testing.assert_close(made[name].t_near.cpu(), reference.t_near, rtol=1e-5, atol=1e-4)
        assert torch.equal(made[name].n_samples.cpu(), reference.n_samples.to(torch.int32))
    assert made["float64"].t_near.dtype == torch.float64
    assert rays(num_samples=9).direction is made["samples"].direction and len(counted_ray_setups) == 6
    triton_pkg.TritonBackend.clear_kept_rays()
    assert len(triton_rays._KEPT_RAYS) == 0
    assert rays().direction is not first.direction and len(counted_ray_setups) == 7  # made again, kept again
    triton_config(keep_rays_mib=0)
    assert rays().direction is not first.direction and len(counted_ray_setups) == 8


@needs_triton
def test_public_calls_with_kept_rays_match_the_reference(counted_ray_setups):
    """forward_project and its adjoint, called twice each with one geometry, run one ray set-up between them
    and give the reference's values every time."""
    gen = torch.Generator().manual_seed(3)
    volume = torch.rand(2, 2, 5, 6, 4, generator=gen).to(DEVICE)
    poses = GEOMETRY.poses(torch.tensor([5.0, 65.0, -20.0, 110.0])).to(DEVICE)
    images = torch.rand(4, 2, 6, 5, generator=gen).to(DEVICE)
    expected = forward_project(volume.cpu(), AFFINE, poses.cpu(), GEOMETRY, step_mm=1.0, backend="reference")
    expected_adj = api.forward_project_adjoint(images.cpu(), AFFINE, poses.cpu(), GEOMETRY, (5, 6, 4), num_volumes=2,
                                               step_mm=1.0, backend="reference")
    for _ in range(2):
        got = forward_project(volume, AFFINE, poses, GEOMETRY, step_mm=1.0, backend="triton")
        got_adj = api.forward_project_adjoint(images, AFFINE, poses, GEOMETRY, (5, 6, 4), num_volumes=2,
                                              step_mm=1.0, backend="triton")
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got_adj.cpu(), expected_adj, rtol=1e-4, atol=1e-5)
    assert len(counted_ray_setups) == 1


@needs_triton
@pytest.mark.cuda
def test_cuda_ray_sets_are_kept_per_stream(counted_ray_setups):
    """A ray set queued on one CUDA stream is not handed to a call on another (it may still be under way)."""
    poses = GEOMETRY.poses(torch.tensor([12.0])).cuda()
    affines = AFFINE[None].cuda()
    first = triton_pkg.build_rays(poses, affines, (5, 6, 4), GEOMETRY, step_mm=1.0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        other = triton_pkg.build_rays(poses, affines, (5, 6, 4), GEOMETRY, step_mm=1.0)
    torch.cuda.synchronize()
    assert other.direction is not first.direction and len(counted_ray_setups) == 2
    assert torch.equal(other.n_samples, first.n_samples)
    assert triton_pkg.build_rays(poses, affines, (5, 6, 4), GEOMETRY, step_mm=1.0).direction is first.direction
