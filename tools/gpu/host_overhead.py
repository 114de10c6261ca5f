"""Host-side cost of one public projector call on the Triton path, without a GPU.

    python tools/gpu/host_overhead.py [--calls 500] [--profile]

On a GPU the benchmark timings include everything the host does before the kernels run (validation,
ray set-up parameters, launches): with the device idle at the start of a call, W1's forward pays it in
full. Here the Triton kernels are replaced by no-op launchers and the tensors are tiny CPU tensors
(the interpreter path), so what is timed is Python, numpy and torch dispatch — the part a GPU cannot
hide — per call of ``forward_project`` (8 volumes, 8 views, 2 channels; the same poses every call, as
the benchmarks; ``[rays not kept]``: the same with ``keep_rays_mib=0`` (a :class:`TritonConfig`), the ray
set-up queued every call; ``[no skipping]``: ``skip_empty_brick=0``; ``[new poses]``: different poses every
call, so no per-geometry memo can hit — a training loop drawing random views) and ``backproject``. Prints one JSON line per call kind (median over ``--calls``
calls, µs) and ``after_last_sync_us``: from the call's last device→host wait before its main kernel's
launch (the march, or BP's gather) to that launch — for BP the part of the host's work during which a GPU
has finished everything queued and idles; for the forward, whose frames are copied beside the packing pass
and whose scan result is read after the launch, only the host's work after the frames arrived, while the
GPU may still pack —, and ``before_first_kernel_us``: from the call's start to its
first kernel launch (the forward's packing pass ahead of the rays), which a GPU idle at the call's start
waits for, and ``until_main_us``: from the call's start to the main kernel's launch — on a GPU idle at the
call's start the main kernel starts no earlier, so whatever of it exceeds the GPU work queued before the
main kernel (W1: packing pass ≈ 0.13 ms, ray set-up) adds to the call's wall time; ``--profile`` adds the top
functions by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import time

os.environ["TRITON_INTERPRET"] = "1"  # the Triton path with CPU tensors; the kernels are replaced below

import torch  # noqa: E402


# (event, perf_counter seconds) of the current call: "sync" when a device→host copy has been waited for (a GPU
# synchronisation on CUDA tensors), "main" when the call's main kernel (the march, or BP's gather) is launched
_EVENTS: list[tuple[str, float]] = []


class _NoLaunch:
    """Stands in for a kernel: ``kernel[grid](*args, **meta)`` does nothing but note when it was launched
    (``"main"`` for the call's main kernel, else ``"kernel"``)."""

    def __init__(self, main: bool = False) -> None:
        self.event = "main" if main else "kernel"

    def __getitem__(self, grid):
        return lambda *args, **meta: _EVENTS.append((self.event, time.perf_counter()))


def _stub_kernels() -> None:
    from xraysyn.projector import frames
    from xraysyn.projector.triton import launch

    # the backend's kernel objects (launch.kernel_objects() returns them once set): forward, adjoint, tuned,
    # BP gather, ray set-up, pack, unpack, brick marking, marks dilation
    launch._KERNELS = launch._Kernels(_NoLaunch(True), _NoLaunch(), False, _NoLaunch(True), *([_NoLaunch()] * 5))
    wait = frames.HostCopy.wait

    def noted_wait(self):
        result = wait(self)
        _EVENTS.append(("sync", time.perf_counter()))
        return result

    frames.HostCopy.wait = noted_wait
    read_values = getattr(frames, "read_values", None)  # (older versions have no such read)

    def noted_read(tensor):
        result = read_values(tensor)
        _EVENTS.append(("sync", time.perf_counter()))
        return result

    if read_values is not None:
        frames.read_values = noted_read


def _before_first_kernel_us(start: float) -> float | None:
    """µs from the call's start to its first Triton kernel launch (on a GPU idle at the start of the call,
    the time before any of the call's real work begins there)."""
    first = next((t for name, t in _EVENTS if name in ("kernel", "main")), None)
    return None if first is None else (first - start) * 1e6


def _until_main_us(start: float) -> float | None:
    """µs from the call's start to its main kernel's launch (the march, or BP's gather): on a GPU idle at the
    start of the call, the main kernel cannot start earlier, so when this exceeds the GPU work queued before
    it (the forward's packing pass and ray set-up) the difference is added to the call's wall time."""
    main = next((t for name, t in _EVENTS if name == "main"), None)
    return None if main is None else (main - start) * 1e6


def _after_last_sync_us() -> float | None:
    """µs from the last synchronisation to the main kernel's launch in the call just made: on a GPU, the
    time the device idles (host-bound) within the call, once the work queued before the sync is done."""
    main = next((t for name, t in _EVENTS if name == "main"), None)
    syncs = [t for name, t in _EVENTS if name == "sync" and main is not None and t <= main]
    return (main - syncs[-1]) * 1e6 if syncs else None


def _configured(call, **fields):
    """``call()`` under the Triton configuration with ``fields`` changed from the defaults."""
    from dataclasses import replace

    from xraysyn.projector.triton import DEFAULT_CONFIG, use_config

    with use_config(replace(DEFAULT_CONFIG, **fields)):
        return call()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    _stub_kernels()
    from xraysyn.geometry import ConeBeamGeometry
    from xraysyn.projector import backproject, forward_project

    volume = torch.rand(8, 2, 8, 8, 8)
    affine = torch.diag(torch.tensor([40.0, 40.0, 41.6, 1.0]))
    geometry = ConeBeamGeometry(sdd=1200.0, sid=1000.0, detector_shape=(16, 16), pixel_spacing=32.0)
    poses = geometry.poses(torch.linspace(-18, 18, 8))
    # more distinct pose sets than any memo of the host-side set-up keeps, cycled through
    pose_sets = [geometry.poses(torch.linspace(-18, 18, 8) + 0.01 * k) for k in range(1000)]
    next_set = iter(range(10**9))
    images = torch.rand(8, 2, 16, 16)
    calls = {
        "forward_project": lambda: forward_project(volume, affine, poses, geometry, num_samples=256, backend="triton"),
        # the same without the ray sets kept on the device (keep_rays_mib=0): the set-up every call
        "forward_project[rays not kept]": lambda: _configured(
            lambda: forward_project(volume, affine, poses, geometry, num_samples=256, backend="triton"),
            keep_rays_mib=0),
        # the same without empty space skipping (skip_empty_brick=0: no marks, no dilation)
        "forward_project[no skipping]": lambda: _configured(
            lambda: forward_project(volume, affine, poses, geometry, num_samples=256, backend="triton"),
            skip_empty_brick=0),
        "forward_project[new poses]": lambda: forward_project(volume, affine, pose_sets[next(next_set) % len(pose_sets)],
                                                              geometry, num_samples=256, backend="triton"),
        "backproject": lambda: backproject(images, affine, poses, geometry, (8, 8, 8), backend="triton"),
    }
    with torch.no_grad():
        for name, call in calls.items():
            for _ in range(20):
                call()
            times, gaps, leads, untils = [], [], [], []
            for _ in range(args.calls):
                _EVENTS.clear()
                start = time.perf_counter()
                call()
                times.append((time.perf_counter() - start) * 1e6)
                for values, value in ((gaps, _after_last_sync_us()), (leads, _before_first_kernel_us(start)),
                                      (untils, _until_main_us(start))):
                    if value is not None:
                        values.append(value)
            print(json.dumps({"call": name, "host_us_median": round(statistics.median(times), 1),
                              "host_us_min": round(min(times), 1),
                              "before_first_kernel_us_median": round(statistics.median(leads), 1) if leads else None,
                              "after_last_sync_us_median": round(statistics.median(gaps), 1) if gaps else None,
                              "until_main_us_median": round(statistics.median(untils), 1) if untils else None,
                              "until_main_us_min": round(min(untils), 1) if untils else None,
                              "calls": args.calls, "torch": torch.__version__}), flush=True)
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                for _ in range(args.calls):
                    call()
                profiler.disable()
                pstats.Stats(profiler).sort_stats("cumtime").print_stats(15)


if __name__ == "__main__":
    main()
