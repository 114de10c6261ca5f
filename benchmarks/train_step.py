"""Stage-1 training-step benchmark: prints one JSON line per projector backend.

    python benchmarks/train_step.py [--device cuda|cpu] [--preset paper|small] [--batch N] [--size S]
        [--detector P] [--num-samples N] [--backends auto,reference] [--reps 5] [--warmup 2] [--threads T]

A step is :func:`xraysyn.train.stage1_step`: CT2Xray of the true CT at T and T' (no grad), BP of
the input view, the 3DPN forward, CT2Xray of the prediction at T and T', the losses of eq. 9-10,
backward and an Adam step. Reported per backend: ``step_ms_median`` (and min/max) over ``--reps``
timed steps after ``--warmup`` untimed ones (CUDA synchronised around each step, perf_counter);
``targets_ms`` and ``backprojection_ms``, the no-grad CT2Xray of the true CT and the BP timed
on their own (a lower bound on the projector's share; the differentiable CT2Xray of the
prediction is inside the step); ``peak_mib`` (``torch.cuda.max_memory_allocated``, CUDA only).

Defaults on CUDA: the paper preset, 128³ volumes, batch 2, 128² detector, 128 samples per ray
(stage 1 of the paper). On CPU: the small preset, 32³, batch 1, 32² detector, 32 samples.
Volumes are procedural chest phantoms (:func:`xraysyn.data.phantom.make_chest_phantom`, its bone
labels as the mask), seeds 0…batch-1; nothing is downloaded. An out-of-memory or other failure
for a backend prints a JSON line with ``"error"`` and the benchmark goes on to the next backend.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from xraysyn.data.phantom import DEFAULT_FIELD_OF_VIEW_MM, make_chest_phantom
from xraysyn.models import PriorNet3D
from xraysyn.train import (
    Stage1Config,
    make_optimizer,
    sample_view_angles,
    simulate_targets,
    stage1_step,
)
from xraysyn.train.stage1 import (
    PROJECTOR_BACKENDS,
    network_input_from_backprojection,
    split_views,
)

DEFAULTS = {
    "cuda": {"preset": "paper", "size": 128, "batch": 2, "detector": 128, "num_samples": 128},
    "cpu": {"preset": "small", "size": 32, "batch": 1, "detector": 32, "num_samples": 32},
}
BYTES_PER_MIB = 2**20


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", choices=("paper", "small"))
    parser.add_argument("--batch", type=int)
    parser.add_argument("--size", type=int, help="volume edge in voxels")
    parser.add_argument("--detector", type=int, help="detector edge in pixels")
    parser.add_argument("--num-samples", type=int, help="projector samples per ray")
    parser.add_argument("--backends", default="auto,reference")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in PROJECTOR_BACKENDS]
    if unknown or not backends:
        parser.error(f"--backends must be a comma list of {PROJECTOR_BACKENDS}, got {args.backends!r}")
    args.backends = backends
    for name in ("batch", "size", "detector", "num_samples", "reps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    return args


def make_batch(batch: int, size: int, device: torch.device):
    """``(ct_hu, bone_mask, world_from_voxel)``: ``(B, 1, S, S, S)`` HU, ``(B, 1, S, S, S)`` {0, 1},
    ``(B, 4, 4)`` mm, phantoms with seeds 0…B-1 over a 384 mm field of view."""
    phantoms = [make_chest_phantom((size,) * 3, seed=seed) for seed in range(batch)]
    ct = torch.stack([torch.from_numpy(p.hu) for p in phantoms])[:, None].float()
    mask = torch.stack([torch.from_numpy(p.bone_mask) for p in phantoms])[:, None].float()
    affines = torch.stack([torch.from_numpy(p.world_from_voxel) for p in phantoms]).float()
    return ct.to(device), mask.to(device), affines.to(device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> tuple[float, object]:
    _synchronize(device)
    start = time.perf_counter()
    result = fn()
    _synchronize(device)
    return 1e3 * (time.perf_counter() - start), result


def bench_backend(args, backend: str, device: torch.device, batch) -> dict:
    config = Stage1Config(model_preset=args.preset, detector_pixels=args.detector, num_samples=args.num_samples,
                          field_of_view_mm=DEFAULT_FIELD_OF_VIEW_MM, projector_backend=backend)
    torch.manual_seed(0)
    model = PriorNet3D(config.model_config()).to(device)
    optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(0)
    ct, mask, affines = batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        stage1_step(model, optimizer, ct, mask, affines, config, generator)
    step_ms, losses = [], {}
    for _ in range(args.reps):
        ms, losses = _timed(lambda: stage1_step(model, optimizer, ct, mask, affines, config, generator), device)
        step_ms.append(ms)

    views = sample_view_angles(ct.shape[0], config.geometry(), config.max_angle_deg, generator=generator,
                               device=device)
    targets_ms, targets = _timed(lambda: simulate_targets(ct, mask, affines, views, config), device)
    line_integral, _ = split_views(targets.line_integral)
    with torch.no_grad():
        bp_ms, _ = _timed(lambda: network_input_from_backprojection(
            line_integral, affines, views.input_poses, config.geometry(), tuple(ct.shape[2:]), backend=backend), device)
    record = {
        "benchmark": "stage1_step", "backend": backend, "preset": args.preset, "batch": args.batch,
        "size": args.size, "detector": args.detector, "num_samples": args.num_samples,
        "parameters": sum(p.numel() for p in model.parameters()),
        "step_ms_median": round(statistics.median(step_ms), 2), "step_ms_min": round(min(step_ms), 2),
        "step_ms_max": round(max(step_ms), 2), "reps": args.reps,
        "targets_ms": round(targets_ms, 2), "backprojection_ms": round(bp_ms, 2),
        "last_losses": {k: round(v, 5) for k, v in losses.items()},
    }
    if device.type == "cuda":
        record["peak_mib"] = round(torch.cuda.max_memory_allocated(device) / BYTES_PER_MIB, 1)
    return record


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = make_batch(args.batch, args.size, device)
    failures = 0
    for backend in args.backends:
        if args.threads:
            # re-applied per backend: numba's OpenMP layer (the CPU "auto" projector) resets torch's thread count
            torch.set_num_threads(args.threads)
        try:
            record = bench_backend(args, backend, device, batch)
        except torch.cuda.OutOfMemoryError as error:
            failures += 1
            record = {"benchmark": "stage1_step", "backend": backend, "preset": args.preset, "batch": args.batch,
                      "size": args.size, "error": "out of memory", "detail": str(error).splitlines()[0]}
        except Exception as error:  # noqa: BLE001 - report and go on to the next backend
            failures += 1
            record = {"benchmark": "stage1_step", "backend": backend, "preset": args.preset, "batch": args.batch,
                      "size": args.size, "error": type(error).__name__, "detail": str(error).splitlines()[0][:500]}
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        record["device"] = device_name(device)
        print(json.dumps(record), flush=True)
    return 1 if failures == len(args.backends) else 0


if __name__ == "__main__":
    sys.exit(main())
