"""Projector benchmark: prints one JSON line per (implementation, workload, mode).

    python benchmarks/projector.py [--device cpu|cuda] [--workloads W1-cpu,W1,W2] [--volumes DIR]

Workloads (the same as ../shared/bench/peers_*.py, so peer numbers compare one to one):
  W1      8 different 128^3 volumes x 2 material channels, 256^2 detector (2.0 mm pixels),
          256 samples/ray, one view each (azimuth -18..18), fwd and fwd+bwd (volume gradient)
  W2      one 256x256x133 CT (one channel, mu), 16 views, 512^2 detector (1.0 mm), 512 samples/ray
  W1-cpu  4 different 64^3 volumes x 2 channels, 128^2 detector (4.0 mm), 128 samples/ray
  W2-rect W2 with a 384 x 512 (rows x columns) detector: non-square rasters (no peer numbers)
Each case is also run through a naive baseline that materialises every sample point and calls
``grid_sample`` once (same rays, same sampling), in the same process; ``ratio_vs_naive`` is
baseline time / our time. On CPU every case runs in a fresh subprocess so ``peak_mib`` (growth
of the peak resident set) is its own; on CUDA it is the peak of allocated memory in steady state
(measured after a first call, which autotunes the kernels).

Volumes: ``--volumes DIR`` with ``ct128.npy`` / ``ct256.npy`` as written by
``../shared/bench/prepare_volumes.py`` (the example chest CT), else the procedural phantom.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from xraysyn.geometry import ConeBeamGeometry
from xraysyn.projector import build_rays, forward_project, forward_project_adjoint, mark_static_volume

WORKLOADS = {
    "W1": dict(batch=8, size=128, spacing=(2.5, 2.5, 2.6), detector=256, pixel=2.0, samples=256, views=1, channels=2),
    "W2": dict(batch=1, size=None, spacing=(1.40625, 1.40625, 2.5), detector=512, pixel=1.0, samples=512, views=16,
               channels=1),
    "W1-cpu": dict(batch=4, size=64, spacing=(5.0, 5.0, 5.2), detector=128, pixel=4.0, samples=128, views=1,
                   channels=2),
    # W2 with a non-square (4:3) detector, 384 rows × 512 columns: ours only (the peers' script has no such case)
    "W2-rect": dict(batch=1, size=None, spacing=(1.40625, 1.40625, 2.5), detector=(384, 512), pixel=1.0, samples=512,
                    views=16, channels=1),
}
# the developers' GPU tools (tools/gpu/trace_breakdown.py serves --trace)
TOOLS_GPU = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "gpu")
MU_WATER_PER_MM = 0.02  # the peers' benchmark conversion: mu = 0.02 * (1 + HU / 1000) per mm
BONE_HU = 200.0  # the peers' benchmark material split


def load_hu(workload: str, volumes_dir: str | None) -> tuple[torch.Tensor, str]:
    """HU volume ``(X, Y, Z)`` for a workload and a word on where it came from."""
    spec = WORKLOADS[workload]
    if volumes_dir:
        if spec["size"] is None:
            return torch.from_numpy(np.load(os.path.join(volumes_dir, "ct256.npy")).astype(np.float32)), "example-ct"
        ct = np.load(os.path.join(volumes_dir, "ct128.npy")).astype(np.float32)
        if spec["size"] != 128:
            from scipy.ndimage import zoom

            ct = zoom(ct, spec["size"] / 128, order=1).astype(np.float32)
        return torch.from_numpy(ct), "example-ct"
    from xraysyn.data.phantom import make_chest_phantom

    shape = (256, 256, 133) if spec["size"] is None else (spec["size"],) * 3
    spacing = tuple(s * (128 / shape[0]) if spec["size"] else s for s in spec["spacing"])
    return torch.from_numpy(make_chest_phantom(shape=shape, spacing_mm=spacing, seed=0).hu), "phantom"


def materials(hu: torch.Tensor, channels: int = 2) -> torch.Tensor:
    """``(channels, X, Y, Z)`` 1/mm: bone and other tissue (2), or the attenuation alone (1), as the peers' script."""
    mu = (MU_WATER_PER_MM * (1 + hu.clamp(min=-1000) / 1000)).clamp(min=0)
    if channels == 1:
        return mu[None]
    bone = (hu > BONE_HU).float()
    return torch.stack([mu * bone, mu * (1 - bone)])


def setup(workload: str, device: str, volumes_dir: str | None):
    spec = WORKLOADS[workload]
    hu, source = load_hu(workload, volumes_dir)
    vols = torch.stack([materials(hu + 5.0 * b, spec["channels"]) for b in range(spec["batch"])]).to(device)
    shape = vols.shape[2:]
    affine = torch.diag(torch.tensor([*spec["spacing"], 1.0]))
    affine[:3, 3] = -torch.tensor(spec["spacing"]) * (torch.tensor(shape, dtype=torch.float32) - 1) / 2
    detector = spec["detector"] if isinstance(spec["detector"], tuple) else (spec["detector"],) * 2
    geom = ConeBeamGeometry(sdd=1200.0, sid=1000.0, detector_shape=detector, pixel_spacing=spec["pixel"])
    n = spec["batch"] * spec["views"]
    poses = geom.poses(torch.linspace(-18, 18, n)).to(device)
    return vols, affine.to(device), poses, geom, spec, source


def naive_grid_sample(vols, affine, poses, geom, samples):
    """Every sample point materialised at once, one grid_sample call (the usual autograd approach)."""
    rays = build_rays(poses, affine.expand(vols.shape[0], 4, 4), vols.shape[2:], geom, num_samples=samples)
    k = torch.arange(samples, device=vols.device, dtype=vols.dtype) + 0.5
    t = rays.t_near[..., None] + k * rays.delta[..., None]  # (N, R, K)
    p = rays.origin[:, None, None, :] + t[..., None] * rays.direction[:, :, None, :]  # (N, R, K, 3) (i, j, k)
    size = torch.tensor(vols.shape[2:], device=vols.device, dtype=vols.dtype)
    grid = (2 * p / (size - 1) - 1).flip(-1)  # grid_sample wants (x=k, y=j, z=i) in [-1, 1]
    src = vols[rays.volume_index]
    out = torch.nn.functional.grid_sample(src, grid[:, :, :, None, :], align_corners=True, padding_mode="border")
    valid = (rays.n_samples > 0).to(vols.dtype)
    return (out[..., 0].sum(-1) * (rays.delta * valid)[:, None, :]).reshape(*out.shape[:2], *geom.detector_shape)


def timed(fn, device, reps, warm=1):
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def run_case(impl: str, workload: str, mode: str, device: str, reps: int, volumes_dir: str | None,
             trace: int = 0) -> dict:
    vols, affine, poses, geom, spec, source = setup(workload, device, volumes_dir)
    samples = spec["samples"]
    backend = "reference" if impl == "xraysyn-reference" else "auto" if impl.startswith("xraysyn") else None
    static = impl == "xraysyn-static"  # the volume marked static: its scan and marched copy kept between calls
    if static:
        mark_static_volume(vols)

    def project(v):
        if impl == "naive-grid_sample":
            return naive_grid_sample(v, affine, poses, geom, samples)
        return forward_project(v, affine, poses, geom, num_samples=samples, backend=backend)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "adj":  # the exact transpose alone (public forward_project_adjoint) of an image-sized input
        images = torch.rand(poses.shape[0], vols.shape[1], *geom.detector_shape, device=vols.device)

        def step():
            return forward_project_adjoint(images, affine, poses, geom, vols.shape[2:], num_volumes=vols.shape[0],
                                           num_samples=samples, backend=backend)
    elif mode == "fwd":
        def step():
            with torch.no_grad():
                return project(vols)
    else:
        leaf = vols.clone().requires_grad_(True)
        if static:
            mark_static_volume(leaf)

        def step():
            leaf.grad = None
            project(leaf).square().mean().backward()
    if device == "cuda":
        step()  # first call: Triton autotuning (its 256 MB cache-flush buffer) and compilation
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
        if impl.startswith("xraysyn"):
            from xraysyn.projector.triton import forget_launch_choices

            forget_launch_choices()
    ms = timed(step, device, reps)
    configs = launch_configs(mode) if device == "cuda" and impl.startswith("xraysyn") else {}
    if trace:  # after the timed calls: where each call's time goes (profiler trace, tools/gpu/trace_breakdown.py)
        sys.path.insert(0, TOOLS_GPU)
        from trace_breakdown import traced_breakdown

        def synced_step():
            step()
            if device == "cuda":
                torch.cuda.synchronize()

        try:  # a profiler that cannot trace here must not cost the timing row
            configs["trace"] = traced_breakdown(synced_step, trace)
        except Exception as error:  # noqa: BLE001 - reported in the row
            configs["trace_error"] = repr(error)[:300]
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base_mem) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    with torch.no_grad():
        check = float(project(vols).double().mean())
    n_rays = poses.shape[0] * geom.rows * geom.cols
    return dict(impl=impl, workload=workload, mode=mode, device=device, ms=round(ms, 2),
                gsamples_per_s=round(n_rays * samples / (ms * 1e-3) / 1e9, 3), peak_mib=round(peak, 1),
                mean=check, volumes=source, threads=torch.get_num_threads(), torch=torch.__version__, **configs)


def launch_configs(mode: str) -> dict:
    """The launch configuration each march kernel of ``mode`` ran with in the timed calls (the autotuner's
    choice, or the one the Triton configuration pins), e.g. ``{"adjoint_config": "BLOCK_R=128 warps=4"}``, and
    ``adjoint_carry_trials_ms`` when the autotuner chose the plane carry
    (:func:`xraysyn.projector.triton.launch_choice`)."""
    from xraysyn.projector.triton import active_config, launch_choice

    configs = {}
    for name, forward in (("forward", True), ("adjoint", False)):
        if (forward and mode == "adj") or (not forward and mode == "fwd"):
            continue
        pinned = active_config().forward_launch if forward else active_config().adjoint_launch
        if pinned is not None:
            configs[f"{name}_config"] = f"pinned BLOCK_R={pinned[0]} warps={pinned[1]}"
            continue
        configs.update({f"{name}_{key}": value for key, value in launch_choice(forward).items()})
    return configs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--workloads", default=None, help="comma list; default W1-cpu on CPU, W1,W2 on CUDA")
    parser.add_argument("--impls", default="naive-grid_sample,xraysyn",
                        help="comma list of naive-grid_sample, xraysyn (auto backend), xraysyn-reference and "
                             "xraysyn-static (the volume marked static)")
    parser.add_argument("--modes", default="fwd,fwd+bwd", help="comma list of fwd, fwd+bwd, adj (the adjoint alone)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--trace", type=int, default=0, metavar="N",
                        help="after timing, profile N more calls per case and add where their time goes (row 'trace': "
                             "host lead, GPU busy, gaps, tail, per-kernel ms; see tools/gpu/trace_breakdown.py)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch and numba)")
    parser.add_argument("--volumes", default=os.environ.get("PEERS_VOLUMES"), help="folder with ct128.npy / ct256.npy")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one case in this process
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        import numba

        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    if args.case:
        impl, workload, mode = args.case.split("|")
        print(json.dumps(run_case(impl, workload, mode, args.device, args.reps, args.volumes, args.trace)), flush=True)
        return
    workloads = (args.workloads or ("W1-cpu" if args.device == "cpu" else "W1,W2")).split(",")
    baseline: dict[tuple[str, str], float] = {}
    for workload in workloads:
        for mode in args.modes.split(","):
            for impl in args.impls.split(","):
                if mode == "adj" and impl == "naive-grid_sample":
                    continue  # the naive baseline has no adjoint of its own: it is timed in fwd and fwd+bwd
                if args.device == "cpu":  # a fresh process per case: its own peak memory
                    cmd = [sys.executable, __file__, "--case", f"{impl}|{workload}|{mode}", "--device", "cpu",
                           "--reps", str(args.reps), "--threads", str(args.threads), "--trace", str(args.trace)]
                    if args.volumes:
                        cmd += ["--volumes", args.volumes]
                    proc = subprocess.run(cmd, capture_output=True, text=True)
                    if proc.returncode != 0:
                        print(json.dumps(dict(impl=impl, workload=workload, mode=mode, error=proc.stderr[-400:])))
                        continue
                    row = json.loads(proc.stdout.strip().splitlines()[-1])
                else:
                    row = run_case(impl, workload, mode, args.device, args.reps, args.volumes, args.trace)
                if impl == "naive-grid_sample":
                    baseline[(workload, mode)] = row["ms"]
                elif (workload, mode) in baseline:
                    row["ratio_vs_naive"] = round(baseline[(workload, mode)] / row["ms"], 2)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
