"""Kernel-level GPU benchmark of the Triton backend: prints one JSON line per case.

    python tools/gpu/gpu_kernels.py                      # W1 and W2 on the GPU
    python tools/gpu/gpu_kernels.py --smoke              # tiny sizes; on a CPU-only machine runs the
                                                         # kernels through TRITON_INTERPRET=1 (checks the script)

Cases (same volumes sizes, detectors and samples as benchmarks/projector.py's W1/W2, rays built
once outside the timed region, so these are the kernels alone):
  march-fwd                forward line integrals, all channels in one march
  march-adj[merged+carry|merged]  volume adjoint: per-cell run merging that also carries the corners a
                           ray's next cell shares / run merging alone
  march-*[tiles8|runs]     2-D detector tiles 8 pixels wide / runs of consecutive rays;
                           march-fwd[tiles4|tiles16]: other tile widths
  march-adj[...,packedP]   the adjoint into packed corner slots (P = 2: x pairs, 4: x and y pairs in one
                           16-byte vector atomic), summed into the gradient afterwards (included)
  march-fwd[bf16 volume]   the forward march reading a bfloat16 copy of the volume (float32 accumulation)
  march-fwd[...,packedP]   the forward reading packed corners (P = 2: x pairs, 4: x and y pairs stored with
                           each voxel: 8 / P vector loads per sample); the packing is included and
  pack-corners[P]          timed alone too
  gather-only[packedP,..]  the packed forward's accesses without arithmetic
  ray-setup[triton|torch]  the rays of every view: the one-launch kernel / the torch build_rays
  gather-only              the forward's access pattern with no interpolation arithmetic (8 corner loads
                           per sample, summed): the gather throughput limit the forward is compared to
  bp-gather / bp-torch     voxel-driven BP (eq. 7): the Triton gather kernel / the torch reference
  atten-triton / atten-torch  polychromatic attenuation (120 kVp spectrum), forward + backward
  ct2xray[march + atten-triton]  projection + attenuation, forward + backward (two channels)
  march-*[defaults(,api rays)]  the shipped configuration, on the torch rays / the Triton ray set-up's rays (one
                           channel: the autotuner also chooses the plane carry; ``carry_trials_ms`` gives its
                           trials' best with the carry off and on); ``...,no plane carry`` / ``+plane carry``:
                           the carry off / forced on
Each case changes one field of BASELINE (a TritonConfig: tiles 8, unpacked, the carry at every pack: the
defaults before the 2026-11-26 sweep); adjoint and forward rows also give the launch configuration the
autotuner chose (``config``) and the configuration they ran with (``switches``).
``--only march-adj,ct2xray`` times only the cases whose name contains one of the parts.
``gsamples_per_s`` counts ray samples (each reads 8 corners × C channels); ``gather_gb_per_s``
the corner bytes those samples read (an upper bound of the traffic the caches serve).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

WORKLOADS = {  # as in benchmarks/projector.py
    "W1": {"batch": 8, "shape": (128, 128, 128), "spacing": (2.5, 2.5, 2.6), "detector": 256, "pixel": 2.0,
           "samples": 256, "views": 1, "channels": 2},
    "W2": {"batch": 1, "shape": (256, 256, 133), "spacing": (1.40625, 1.40625, 2.5), "detector": 512, "pixel": 1.0,
           "samples": 512, "views": 16, "channels": 1},
    "smoke": {"batch": 2, "shape": (12, 10, 8), "spacing": (5.0, 6.0, 7.0), "detector": 16, "pixel": 6.0,
              "samples": 6, "views": 2, "channels": 2},
    # one channel (4 corner slots): --smoke runs only its cases that two channels cannot have
    "smoke-1ch": {"batch": 1, "shape": (12, 10, 8), "spacing": (5.0, 6.0, 7.0), "detector": 16, "pixel": 6.0,
                  "samples": 6, "views": 2, "channels": 1},
}
ONE_CHANNEL_ONLY = ("plane carry",)  # the cases of --smoke's one-channel workload
# the configuration each case changes one field of (the defaults before the 2026-11-26 sweep, with the corner
# carry allowed at any pack so the carry cases carry)
BASELINE = {"forward_tile_width": 8, "adjoint_tile_width": 8, "forward_pack": 1, "adjoint_pack": 1,
            "carry_max_pack": 4, "tune_plane_carry": False, "adjoint_plane_axis": 0}
TILE_WIDTHS = (8, 0)  # 2-D detector tiles 8 wide and runs of consecutive rays
FORWARD_ONLY_TILE_WIDTHS = (4, 16)  # other tile shapes, timed for the forward only
GATHER_TILE_WIDTHS = (4, 8)  # the gather limit: the best of these tile widths (the forward's default is 4)
# channels: bone and soft tissue for W1, the attenuation alone for W2, as in the peers' benchmark


def _gather_limit(volume, rays, detector_cols: int, timed, pack: int = 1) -> tuple[float, dict]:
    """Best time (ms) of the gather-only kernel over a few launch configurations, and that configuration;
    ``pack > 1``: the packed-corner layout's accesses (``8 / pack`` vector loads per sample)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gather_only_kernel import gather_only_kernel, gather_only_packed_kernel

    from xraysyn.projector.triton.launch import program_count
    from xraysyn.projector.triton.layout import pack_corners

    b, c, d, h, w = volume.shape
    n, r = rays.t_near.shape
    ray_args = (rays.origin.contiguous(), rays.direction.contiguous(), rays.t_near.contiguous(),
                rays.delta.contiguous(), rays.n_samples.to(torch.int32).contiguous(), rays.volume_index, r,
                detector_cols, d, h, w)
    if pack > 1:
        vol = pack_corners(volume, pack)
        out = torch.empty(n, r, c * pack, device=volume.device)
        args = (vol, out, *ray_args, d * h * w, h * w, w)
        meta = {"K": c * pack, "PACK": pack}
        kernel = gather_only_packed_kernel
    else:
        vol = volume.permute(0, 2, 3, 4, 1).contiguous()  # channels-last, as the backend marches it
        out = torch.empty(n, r, c, device=volume.device)
        args = (vol, out, *ray_args, d * h * w, h * w, w, 1)
        meta = {"C": c}
        kernel = gather_only_kernel
    best = (float("inf"), {})
    for tile_w in GATHER_TILE_WIDTHS:
        for block_r, warps in ((64, 2), (128, 4), (256, 8)):
            grid = (program_count(r, block_r, detector_cols, tile_w), n)
            ms = timed(lambda: kernel[grid](*args, BLOCK_R=block_r, TILE_W=tile_w, num_warps=warps, **meta))
            if ms < best[0]:
                best = (ms, {"BLOCK_R": block_r, "num_warps": warps, "TILE_W": tile_w})
    return best


def _timer(device: torch.device, reps: int):
    def run(fn) -> float:
        fn()  # warm-up (and autotuning on the first call)
        times = []
        for _ in range(reps):
            if device.type == "cuda":
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                stop.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(stop))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    return run


def run_workload(name: str, device: torch.device, timed, gpu: str, only: tuple[str, ...] = ()) -> None:
    """Time every case of one workload (those whose name contains one of ``only``, if given) and print its
    JSON lines. Each case runs under its own :class:`~xraysyn.projector.triton.TritonConfig` (``use_config``)."""
    import dataclasses

    from xraysyn.geometry import ConeBeamGeometry
    from xraysyn.physics import tube_spectrum
    from xraysyn.physics.attenuation import attenuate
    from xraysyn.physics.ct2xray import project_and_attenuate
    from xraysyn.projector import backproject, build_rays
    from xraysyn.projector.triton import (
        DEFAULT_CONFIG,
        TritonBackend,
        active_config,
        forget_launch_choices,
        march_autotuners,
        use_config,
    )
    from xraysyn.projector.triton import backproject as bp_gather
    from xraysyn.projector.triton import build_rays as triton_build_rays
    from xraysyn.projector.triton.launch import tuner_choice
    from xraysyn.projector.triton.layout import pack_corners

    spec = WORKLOADS[name]
    shape, b, channels = spec["shape"], spec["batch"], spec["channels"]
    gen = torch.Generator().manual_seed(0)
    volume = torch.rand(b, channels, *shape, generator=gen).to(device)
    affine = torch.diag(torch.tensor([*spec["spacing"], 1.0]))
    affine[:3, 3] = -torch.tensor(spec["spacing"]) * (torch.tensor(shape, dtype=torch.float32) - 1) / 2
    affines = affine.expand(b, 4, 4).to(device)
    geometry = ConeBeamGeometry(sdd=1200.0, sid=1000.0, detector_shape=(spec["detector"],) * 2,
                                pixel_spacing=spec["pixel"])
    n_views = b * spec["views"]
    poses = geometry.poses(torch.linspace(-18, 18, n_views)).to(device)
    rays = build_rays(poses, affines, shape, geometry, num_samples=spec["samples"])
    samples = int(rays.n_samples.sum())
    grad = torch.rand(*rays.t_near.shape, channels, generator=gen).to(device)

    def wanted(case: str) -> bool:
        return not only or any(part in case for part in only)

    def emit(case: str, ms: float, counted_samples: int | None = samples, **extra) -> None:
        row = {"case": case, "workload": name, "ms": round(ms, 3), "device": gpu, "torch": torch.__version__}
        if counted_samples:
            row["gsamples_per_s"] = round(counted_samples / (ms * 1e-3) / 1e9, 2)
            row["gather_gb_per_s"] = round(counted_samples * 8 * channels * 4 / (ms * 1e-3) / 1e9, 1)
        print(json.dumps({**row, **extra}), flush=True)

    fwd_tuners, adj_tuners = march_autotuners(True), march_autotuners(False)
    baseline = dataclasses.replace(DEFAULT_CONFIG, **BASELINE)

    def measure(case: str, fn, counted_samples: int | None = samples, tuners=None, config=None) -> None:
        """Time ``fn`` under ``config`` (default: the one in force) and print the case (if wanted); ``tuners``:
        the march's autotuned kernel objects, whose choice for it (launch configuration, and the plane carry's
        trials when tuned) the row also gives, with the configuration the case ran with."""
        if not wanted(case):
            return
        with use_config(config or active_config()):
            if tuners is not None:
                forget_launch_choices(tuners)
            ms = timed(fn)
            extra = {}
            if tuners is not None:  # the configuration the case ran with, so a row's label can be checked
                extra.update(tuner_choice(tuners))
                extra["switches"] = dataclasses.asdict(active_config())
        emit(case, ms, counted_samples, **extra)

    def forward():
        return TritonBackend.forward(volume, rays)

    def adjoint():
        return TritonBackend.adjoint(grad, volume.shape, rays)

    def changed(**fields):
        return dataclasses.replace(baseline, **fields)

    for tile in TILE_WIDTHS:
        label = f"tiles{tile}" if tile else "runs"
        tiles = {"forward_tile_width": tile, "adjoint_tile_width": tile}
        measure(f"march-fwd[{label}]", forward, tuners=fwd_tuners, config=changed(**tiles))
        for scheme, carry_max_pack in (("merged+carry", 4), ("merged", 0)):
            measure(f"march-adj[{scheme},{label}]", adjoint, tuners=adj_tuners,
                    config=changed(**tiles, carry_max_pack=carry_max_pack))
    for tile in FORWARD_ONLY_TILE_WIDTHS:
        measure(f"march-fwd[tiles{tile}]", forward, tuners=fwd_tuners, config=changed(forward_tile_width=tile))
    for pack in (2, 4):
        if channels * pack <= 4:
            for scheme, carry_max_pack in (("merged+carry", 4), ("merged", 0)):
                measure(f"march-adj[{scheme},tiles8,packed{pack}]", adjoint, tuners=adj_tuners,
                        config=changed(adjoint_pack=pack, carry_max_pack=carry_max_pack))

    # the defaults as shipped, on rays from torch build_rays (as every case above) and from the Triton ray set-up
    # the public API uses: the two must time alike
    api_rays = triton_build_rays(poses, affines, shape, geometry, num_samples=spec["samples"])

    def api_adjoint():
        return TritonBackend.adjoint(grad, volume.shape, api_rays)

    measure("march-fwd[defaults]", forward, tuners=fwd_tuners, config=DEFAULT_CONFIG)
    measure("march-fwd[defaults,api rays]", lambda: TritonBackend.forward(volume, api_rays),
            tuners=fwd_tuners, config=DEFAULT_CONFIG)
    measure("march-adj[defaults]", adjoint, tuners=adj_tuners, config=DEFAULT_CONFIG)
    measure("march-adj[defaults,api rays]", api_adjoint, tuners=adj_tuners, config=DEFAULT_CONFIG)
    if channels == 1:  # 4 slots: the plane carry off, forced on across the rays' dominant axis, and across z
        measure("march-adj[defaults,no plane carry,api rays]", api_adjoint, tuners=adj_tuners,
                config=dataclasses.replace(DEFAULT_CONFIG, tune_plane_carry=False))
        forced = dataclasses.replace(DEFAULT_CONFIG, carry_max_pack=4)
        measure("march-adj[defaults+plane carry,api rays]", api_adjoint, tuners=adj_tuners, config=forced)
        measure("march-adj[defaults+plane carry z,api rays]", api_adjoint, tuners=adj_tuners,
                config=dataclasses.replace(forced, adjoint_plane_axis=0))
    if wanted("march-adj[defaults"):
        same = (api_rays.n_samples == rays.n_samples).float().mean()
        print(json.dumps({"check": "api rays vs torch rays", "workload": name, "n_samples_equal": float(same),
                          "t_near_max_abs_mm": float((api_rays.t_near - rays.t_near).abs().max()),
                          "delta_max_abs_mm": float((api_rays.delta - rays.delta).abs().max())}), flush=True)
    half = volume.to(torch.bfloat16)
    for pack in (2, 4):
        if channels * pack <= 4:
            measure(f"march-fwd[tiles8,packed{pack}]", forward, tuners=fwd_tuners, config=changed(forward_pack=pack))
            measure(f"pack-corners[{pack}]", lambda: pack_corners(volume, pack), None)
        if channels * pack <= 8:
            measure(f"march-fwd[bf16 volume,packed{pack}]", lambda: TritonBackend.forward(half, rays),
                    config=changed(forward_pack=pack))
    if device.type == "cuda" and channels & (channels - 1) == 0 and wanted("gather-only"):
        limit_ms, config = _gather_limit(volume, rays, spec["detector"], timed)
        emit(f"gather-only[{config['BLOCK_R']}x{config['num_warps']},tiles{config['TILE_W']}]", limit_ms)
        for pack in (2, 4):
            if channels * pack <= 4:
                limit_ms, config = _gather_limit(volume, rays, spec["detector"], timed, pack)
                emit(f"gather-only[packed{pack},{config['BLOCK_R']}x{config['num_warps']},tiles{config['TILE_W']}]",
                     limit_ms)
    measure("march-fwd[bf16 volume]", lambda: TritonBackend.forward(half, rays), config=baseline)
    sampling = {"num_samples": spec["samples"]}
    measure("ray-setup[triton]", lambda: triton_build_rays(poses, affines, shape, geometry, **sampling), None)
    measure("ray-setup[torch]", lambda: build_rays(poses, affines, shape, geometry, **sampling), None)

    images = torch.rand(b, channels, *geometry.detector_shape, generator=gen).to(device)
    first = poses[:: spec["views"]]
    measure("bp-gather", lambda: bp_gather(images, affines, first, geometry, shape), None)
    measure("bp-torch", lambda: backproject(images, affines, first, geometry, shape), None)

    spectrum = tube_spectrum(120.0)
    thickness = (torch.rand(n_views, 2, *geometry.detector_shape, generator=gen) * 30).to(device)

    def attenuation(implementation: str):
        t = thickness.clone().requires_grad_()
        i_atten, line = attenuate(t, spectrum, implementation=implementation)
        (i_atten.sum() + line.sum()).backward()

    measure("atten-triton", lambda: attenuation("triton"), None)
    measure("atten-torch", lambda: attenuation("torch"), None)

    if channels == 2:  # CT2Xray of bone / tissue densities, forward + backward through I and −log I
        densities = volume * 50.0  # g/cm³ from the random 0..1 values: a visibly attenuating body

        def ct2xray_step():
            leaf = densities.detach().requires_grad_(True)
            _, i_atten, line = project_and_attenuate(leaf, affines, poses, geometry, spectrum, implementation="triton",
                                                     backend="triton", num_samples=spec["samples"])
            (i_atten.sum() + line.sum()).backward()

        measure("ct2xray[march + atten-triton]", ct2xray_step, config=DEFAULT_CONFIG)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="W1,W2")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (the interpreter on CPU-only machines)")
    parser.add_argument("--only", default="", help="comma list: time only the cases whose name contains one of these")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        if not args.smoke:
            sys.exit("no CUDA device: use --smoke to check the script through Triton's interpreter")
        os.environ.setdefault("TRITON_INTERPRET", "1")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    timed = _timer(device, 1 if args.smoke else args.reps)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu-interpreter"
    only = tuple(part for part in args.only.split(",") if part)
    for name in ["smoke"] if args.smoke else args.workloads.split(","):
        run_workload(name, device, timed, gpu, only)
    if args.smoke and (not only or any(part in case for part in only for case in ONE_CHANNEL_ONLY)):
        run_workload("smoke-1ch", device, timed, gpu, ONE_CHANNEL_ONLY)


if __name__ == "__main__":
    main()
