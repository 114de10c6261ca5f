"""One radiograph → 20 novel views + bone image + suppression with the shipped weights: seconds and peak memory
by stage, and the throughput of batches. Prints one JSON line per (batch size) and one for the stage split.

Stages (each timed on its own after one warm-up call, CUDA synchronised): ``load_and_normalise`` (read the file,
crop, area-average, normalise), ``bp`` (backprojection into the 3DPN's grid), ``prior_3dpn`` (the network),
``ct2xray_views`` (thickness maps of the input view and the 20 views), ``refine_2drn`` (F with M, and the physics to
the display), ``reverse_ct2xray`` (Algorithm 1 at the input's full resolution, :func:`suppress_bone_upsampled`), ``write`` (every file of
``xraysyn synthesize`` and ``suppress``). ``peak_mib``: CUDA ``max_memory_allocated``; CPU growth of the peak RSS
(``getrusage``) over the whole run. ``throughput_per_s``: radiographs per second of ``synthesize`` for batches of
1, 2 and 4 copies of the input (each ``--reps`` times, median). On the CPU also ``synthesize_refine_passes``: the
2DRN in passes of ``CPU_REFINE_PIXELS_PER_PASS`` against all 21 views in one pass. ``cli_batch``: the ``synthesize``
and ``suppress`` commands on 4 copies of the input, writing in the background against computing and writing each
input in turn.

    python benchmarks/synthesize.py [--input RG1_UNCR.dcm] [--device cpu|cuda] [--reps 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

VIEWS = 20
MAX_AZIMUTH_DEG = 9.0
CLI_INPUTS = 4


def _timer(device):
    def now():
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()
    return now


def _median_time(fn, reps, now):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = now()
        fn()
        times.append(now() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=None, help="a radiograph (default: the example CR RG1_UNCR.dcm)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from xraysyn.data.input_domain import normalise_radiograph
    from xraysyn.data.radiograph import load_radiograph
    from xraysyn.physics import ct2xray
    from xraysyn.physics.suppression import suppress_bone_upsampled
    from xraysyn.synthesis.model import XraySyn
    from xraysyn.synthesis.writers import write_suppression, write_synthesis
    from xraysyn.train.stage1 import network_input_from_radiograph, view_poses

    path = args.input
    if path is None:
        from xraysyn.data.example import fetch_example_data

        path = str(fetch_example_data(progress=False).radiograph)
    device = torch.device(args.device)
    now = _timer(device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = now()
    model = XraySyn.from_pretrained(device=device)
    load_model_s = now() - start
    prior = model.prior
    azimuth = torch.cat([torch.zeros(1, dtype=torch.float64),
                         torch.linspace(-MAX_AZIMUTH_DEG, MAX_AZIMUTH_DEG, VIEWS, dtype=torch.float64)])
    state = {}

    def load_and_normalise():
        radiograph = load_radiograph(path)
        crop, transform = model.crop(radiograph)
        state.update(radiograph=radiograph, crop=crop[None].to(device), transform=transform)
        small = F.interpolate(state["crop"], size=prior.geometry.detector_shape, mode="area")
        state["normalised"] = normalise_radiograph(small)

    def bp():
        poses = prior.frontal_pose()
        state["volume_input"] = network_input_from_radiograph(state["normalised"], prior.world_from_voxel(), poses,
                                                              prior.geometry, (prior.volume_size,) * 3)

    def prior_3dpn():
        from xraysyn.train.stage1 import predict_volumes

        with torch.no_grad():
            _, state["hu"], state["mask"] = predict_volumes(prior.network, state["volume_input"], prior.hu_scale)

    def ct2xray_views():
        poses = view_poses(azimuth[None].to(device), torch.zeros_like(azimuth)[None].to(device), prior.geometry)
        with torch.no_grad():
            state["thickness_ct"] = ct2xray(state["hu"], state["mask"], prior.world_from_voxel(), poses,
                                            prior.geometry, num_samples=model.num_samples).thickness

    def refine_2drn():
        from xraysyn.data.input_domain import window_to_unit
        from xraysyn.physics import radiograph_from_thickness

        with torch.no_grad():
            refined = model.refine_views(state["thickness_ct"], state["crop"].expand(azimuth.numel(), -1, -1, -1))
            state["refined"] = refined
            state["display"] = window_to_unit(radiograph_from_thickness(refined).line_integral)

    def reverse_ct2xray():
        transform, image = state["transform"], state["radiograph"].image
        window = torch.from_numpy(image[transform.row0:transform.row0 + transform.crop_rows,
                                        transform.col0:transform.col0 + transform.crop_cols].astype("float64"))
        suppress_bone_upsampled(window[None, None].to(device), state["refined"][:1].double().clamp_min(0))

    stages = {"load_and_normalise": load_and_normalise, "bp": bp, "prior_3dpn": prior_3dpn,
              "ct2xray_views": ct2xray_views, "refine_2drn": refine_2drn, "reverse_ct2xray": reverse_ct2xray}
    split = {name: round(_median_time(fn, args.reps, now), 4) for name, fn in stages.items()}
    with tempfile.TemporaryDirectory() as folder:
        result = model.synthesize(path, torch.linspace(-MAX_AZIMUTH_DEG, MAX_AZIMUTH_DEG, VIEWS))
        suppression = model.suppress_bones(path)[0]
        counter = iter(range(10**6))

        def write():
            target = Path(folder) / str(next(counter))
            write_synthesis(result, 0, target / "synthesis")
            write_suppression(suppression, target / "suppression", dicom=True)
        split["write"] = round(_median_time(write, args.reps, now), 4)
    end_to_end = _median_time(lambda: (model.synthesize(path, torch.linspace(-MAX_AZIMUTH_DEG, MAX_AZIMUTH_DEG,
                                                                                VIEWS)),
                                       model.suppress_bones(path)), args.reps, now)
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    print(json.dumps({"benchmark": "synthesize", "device": str(device), "threads": torch.get_num_threads(),
                      "input": Path(path).name, "input_shape": list(state["radiograph"].image.shape),
                      "views": VIEWS, "load_model_s": round(load_model_s, 4), "split_s": split,
                      "split_total_s": round(sum(split.values()), 4),
                      "end_to_end_s": round(end_to_end, 4), "peak_mib": round(peak_mib, 1)}))
    from xraysyn.data.radiograph import load_radiograph as read
    from xraysyn.synthesis import model as model_module

    radiograph = read(path)
    if device.type == "cpu":  # the CPU's 2DRN pass size against all views in one pass, same run
        chosen = model_module.CPU_REFINE_PIXELS_PER_PASS
        seconds = {}
        for name, pixels in (("passes", chosen), ("one_pass", 10**12)):
            model_module.CPU_REFINE_PIXELS_PER_PASS = pixels
            seconds[name] = _median_time(lambda: model.synthesize(radiograph, torch.linspace(-9, 9, VIEWS)),
                                         args.reps, now)
        model_module.CPU_REFINE_PIXELS_PER_PASS = chosen
        print(json.dumps({"benchmark": "synthesize_refine_passes", "device": str(device),
                          "refine_pixels_per_pass": chosen, "seconds_passes": round(seconds["passes"], 4),
                          "seconds_one_pass": round(seconds["one_pass"], 4),
                          "speedup": round(seconds["one_pass"] / seconds["passes"], 3)}))
    single = None
    for batch in (1, 2, 4):
        seconds = _median_time(lambda: model.synthesize([radiograph] * batch, torch.linspace(-9, 9, VIEWS),
                                                        batch_size=batch), args.reps, now)
        single = single or seconds
        print(json.dumps({"benchmark": "synthesize_batch", "device": str(device), "batch": batch,
                          "seconds": round(seconds, 4), "throughput_per_s": round(batch / seconds, 3),
                          "throughput_ratio_vs_batch_1": round(single * batch / seconds, 3)}))
    _cli_batches(model, path, args.reps, now, device)


def _cli_batches(model, path, reps, now, device) -> None:
    """``xraysyn synthesize`` / ``suppress`` on ``CLI_INPUTS`` copies of the input: the CLI's batch runner (writing
    input k in a background thread while input k+1 is computed) against computing and writing each in turn."""
    import os

    os.environ["TQDM_DISABLE"] = "1"
    from xraysyn.cli.synthesize import _run_batch, _write_staged
    from xraysyn.synthesis.inputs import prepare_inputs
    from xraysyn.synthesis.writers import write_suppression, write_synthesis

    azimuths = torch.linspace(-MAX_AZIMUTH_DEG, MAX_AZIMUTH_DEG, VIEWS).tolist()
    commands = {
        "synthesize": (lambda name, radiograph: model.synthesize([radiograph], azimuths, check_view=False),
                       lambda result, folder: write_synthesis(result, 0, folder)),
        "suppress": (lambda name, radiograph: model.suppress_bones([radiograph], check_view=False)[0],
                     lambda result, folder: write_suppression(result, folder, dicom=True)),
    }
    inputs = [Path(path)] * CLI_INPUTS
    for command, (compute, write) in commands.items():
        with tempfile.TemporaryDirectory() as folder:
            counter = iter(range(10**6))

            def in_turn():
                out = Path(folder) / f"serial{next(counter)}"
                for k, (name, radiograph) in enumerate(prepare_inputs([str(p) for p in inputs], check_view=False)):
                    _write_staged(write, compute(name, radiograph), out / str(k))

            def pipelined():
                _run_batch(inputs, Path(folder) / f"cli{next(counter)}", False, command, compute, write, False)

            serial_s = _median_time(in_turn, reps, now)
            pipelined_s = _median_time(pipelined, reps, now)
        print(json.dumps({"benchmark": "cli_batch", "command": command, "device": str(device),
                          "inputs": CLI_INPUTS, "seconds_in_turn": round(serial_s, 3),
                          "seconds_pipelined": round(pipelined_s, 3),
                          "throughput_per_s": round(CLI_INPUTS / pipelined_s, 3),
                          "throughput_ratio_vs_in_turn": round(serial_s / pipelined_s, 3)}))


if __name__ == "__main__":
    main()
