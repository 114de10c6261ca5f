"""How many samples the forward march still runs with empty space skipping (CPU replay, exact).

    python tools/gpu/empty_space.py [--volumes DIR] [--workloads W1,W2] [--bricks 2,4,8] [--every 1]

For each workload of ``benchmarks/projector.py`` (its volumes, poses, detector and sampling; with
``--volumes`` the example CT of the GPU runs, else the phantom) and each brick edge, the torch statement of
the kernels' rule (:func:`xraysyn.projector.empty_space.occupied_range` over the dilated marks) gives each
ray's range of marched samples. Printed as JSON lines:

* ``kept_per_ray``: samples marched / samples of the rays (what a ray-by-ray march would save);
* ``kept_per_program_R``: the march's loop runs to the largest range of a program's ``R`` rays (tiles 4 pixels
  wide, as ``TritonConfig.forward_tile_width``): Σ largest range / Σ largest sample count, programs of 64,
  128 and 256 rays; ``kept_per_warp``: the same for 8 × 4 pixel warps;
* ``walk_lookups_per_ray``: the look-ups of the walk that finds the range (one byte each), against
  ``samples_per_ray`` (8 / PACK vector loads each);
* ``marks_bytes``: the dilated marks (1 byte per brick) of all volumes.

A prediction of the work the march skips, not of time (a GPU measures that: the forward under
``TritonConfig(skip_empty_brick=0)`` against the default, e.g. with ``use_config``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

# the workloads of the user benchmark benchmarks/projector.py
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks"))
import projector as workloads  # noqa: E402

from xraysyn.projector import RaySet, build_rays  # noqa: E402
from xraysyn.projector.empty_space import dilate_bricks, occupied_bricks, occupied_range, walk_stride  # noqa: E402

TILE_WIDTH = 4
PROGRAM_RAYS = (64, 128, 256)
WARP_ROWS = 8  # a 32-lane warp of a 4-wide tile: 8 rows × 4 columns
RAY_CHUNK = 1 << 15


def _largest_per_tile(values: torch.Tensor, rows: int, cols: int, tile_rows: int) -> torch.Tensor:
    """Largest value per ``tile_rows × TILE_WIDTH`` tile of a ``(rows · cols,)`` raster (edges padded with 0)."""
    grid = values.reshape(rows, cols)
    pad_r, pad_c = -rows % tile_rows, -cols % TILE_WIDTH
    grid = torch.nn.functional.pad(grid, (0, pad_c, 0, pad_r))
    return grid.reshape(grid.shape[0] // tile_rows, tile_rows, grid.shape[1] // TILE_WIDTH, TILE_WIDTH).amax((1, 3))


def replay(workload: str, volumes_dir: str | None, brick: int, every: int) -> dict:
    vols, affine, poses, geometry, spec, source = workloads.setup(workload, "cpu", volumes_dir)
    shape = tuple(vols.shape[2:])
    rays = build_rays(poses, affine.expand(vols.shape[0], 4, 4), shape, geometry, num_samples=spec["samples"])
    occupancy = dilate_bricks(occupied_bricks(vols, brick))
    rows, cols = geometry.detector_shape
    totals = {"samples": 0, "kept": 0, "walks": 0, "rays": 0, "warp": [0, 0],
              **{r: [0, 0] for r in PROGRAM_RAYS}}
    for view in range(0, rays.n_samples.shape[0], every):
        one = slice(view, view + 1)
        first, end = [], []
        for start in range(0, rays.n_samples.shape[1], RAY_CHUNK):
            part = slice(start, start + RAY_CHUNK)
            chunk = RaySet(origin=rays.origin[one], direction=rays.direction[one, part],
                           t_near=rays.t_near[one, part], delta=rays.delta[one, part],
                           n_samples=rays.n_samples[one, part], volume_index=rays.volume_index[one],
                           length=rays.length[one, part])
            f, e = occupied_range(chunk, occupancy, shape, brick)
            first.append(f[0])
            end.append(e[0])
        kept = torch.cat(end) - torch.cat(first)
        n = rays.n_samples[view].long()
        stride = walk_stride(rays.direction[view], rays.delta[view], brick).long()
        totals["samples"] += int(n.sum())
        totals["kept"] += int(kept.sum())
        totals["walks"] += int(((n + stride - 1) // stride).sum())
        totals["rays"] += n.numel()
        for key, tile_rows in [("warp", WARP_ROWS), *((r, r // TILE_WIDTH) for r in PROGRAM_RAYS)]:
            totals[key][0] += int(_largest_per_tile(kept, rows, cols, tile_rows).sum())
            totals[key][1] += int(_largest_per_tile(n, rows, cols, tile_rows).sum())
    return {
        "workload": workload, "volume": source, "brick": brick, "views_replayed": math.ceil(rays.n_samples.shape[0] / every),
        "kept_per_ray": round(totals["kept"] / totals["samples"], 4),
        **{f"kept_per_program_{r}": round(totals[r][0] / totals[r][1], 4) for r in PROGRAM_RAYS},
        "kept_per_warp": round(totals["warp"][0] / totals["warp"][1], 4),
        "walk_lookups_per_ray": round(totals["walks"] / totals["rays"], 1),
        "samples_per_ray": round(totals["samples"] / totals["rays"], 1),
        "marks_bytes": occupancy.numel(),
        "non_zero_voxels": round(float((vols != 0).any(dim=1).float().mean()), 4),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", default=None, help="folder of ct128.npy / ct256.npy (default: the phantom)")
    parser.add_argument("--workloads", default="W1,W2")
    parser.add_argument("--bricks", default="2,4,8")
    parser.add_argument("--every", type=int, default=1, help="replay every n-th view only")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    for workload in args.workloads.split(","):
        for brick in (int(b) for b in args.bricks.split(",")):
            print(json.dumps(replay(workload, args.volumes, brick, args.every)), flush=True)


if __name__ == "__main__":
    main()
