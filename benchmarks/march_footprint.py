"""Memory a march's programs touch while they run together, per program order (no GPU needed).

    python benchmarks/march_footprint.py [--workloads W2,W1] [--in-flight 1400] [--sample-stride 2]

The packed adjoint adds into a buffer of 4 slots per voxel (W2: 139 MB) and the packed forward reads a
copy of that size; an H200's L2 cache holds 60 MB. What the cache has to hold at a time is what the
programs running at the same time touch over their rays. This replays the launch order of the march
kernels (``_tile_and_view``: every tile of one view, then the next view — ``VIEWS_INNER`` off — or one
tile in each view of a volume, then the next tile — on) for ``--in-flight`` consecutive programs around
the one that takes the detector's middle tile (128 rays
each, tiles 4 pixels wide, the shipped defaults; ≈ 1400 is what an H200 keeps resident for the adjoint:
132 SMs × 11 blocks of 128 threads at its 46 registers), follows their rays (every ``--sample-stride``-th
sample) and counts the distinct 128-byte lines of the packed layout (16 bytes per voxel and channel group)
that their cells cover: both z-planes of every cell a sample falls in. One JSON line per workload and order.
"""

from __future__ import annotations

import argparse
import json

import torch

from adjoint_atomics import WORKLOADS, workload_rays  # noqa: I001 (sibling script: the same workloads)

from xraysyn.projector.triton_backend import _programs

BLOCK_R, TILE_W, LINE_BYTES, SLOT_BYTES = 128, 4, 128, 16


def launch_order(n_tiles: int, n_views: int, group: int) -> list[tuple[int, int]]:
    """``(tile, view)`` of every program in launch order (``_tile_and_view`` of the kernels)."""
    order = []
    for pid1 in range(n_views // group):
        for pid0 in range(n_tiles * group):
            tile = pid0 // group
            order.append((tile, pid1 * group + pid0 - tile * group))
    return order


def window(order: list[tuple[int, int]], n_tiles: int, count: int) -> list[tuple[int, int]]:
    """``count`` consecutive programs of ``order`` centred on the first one that takes the middle tile (the
    detector's centre, where the rays cross the volume: the first tiles, at the detector's edge, may miss it)."""
    middle = next(i for i, (tile, _) in enumerate(order) if tile == n_tiles // 2)
    start = max(0, middle - count // 2)
    return order[start:start + count]


def tile_rays(tile: int, width: int) -> torch.Tensor:
    """Ray indices of one ``(BLOCK_R / TILE_W) × TILE_W`` tile of a ``width``-wide raster (``_ray_block``)."""
    tiles_per_row = -(-width // TILE_W)
    tile_row, tile_col = divmod(tile, tiles_per_row)
    lane = torch.arange(BLOCK_R)
    row = tile_row * (BLOCK_R // TILE_W) + lane // TILE_W
    col = tile_col * TILE_W + lane % TILE_W
    keep = (col < width) & (row < width)
    return (row * width + col)[keep]


def footprint_mb(rays, order, shape, samples: int, sample_stride: int) -> float:
    """MB of distinct 128-byte lines of the packed layout the programs in ``order`` touch."""
    d, h, w = shape
    size = torch.tensor(shape, dtype=torch.float64)
    k = torch.arange(0, samples, sample_stride, dtype=torch.float64)
    lines = []
    by_view: dict[int, list[torch.Tensor]] = {}
    for tile, view in order:
        by_view.setdefault(view, []).append(tile_rays(tile, int(round(rays.t_near.shape[1] ** 0.5))))
    for view, picks in by_view.items():
        pick = torch.cat(picks)
        for chunk in pick.split(8192):
            t = rays.t_near[view, chunk, None] + (k + 0.5) * rays.delta[view, chunk, None]
            p = rays.origin[view, None, None, :] + t[..., None] * rays.direction[view, chunk, None, :]
            cell = torch.minimum(p.clamp(min=0).minimum(size - 1).floor(), size - 2).long()
            live = k < rays.n_samples[view, chunk, None]
            cell = cell[live]
            base = (cell[:, 0] * h + cell[:, 1]) * w + cell[:, 2]
            for plane in (base, base + h * w):  # the cell's two z-planes of packed slots
                lines.append(torch.unique(plane * SLOT_BYTES // LINE_BYTES))
    return float(torch.unique(torch.cat(lines)).numel() * LINE_BYTES / 1e6)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="W2,W1")
    parser.add_argument("--in-flight", type=int, default=1400)
    parser.add_argument("--sample-stride", type=int, default=2)
    args = parser.parse_args(argv)
    for name in args.workloads.split(","):
        spec = WORKLOADS[name]
        rays = workload_rays(spec)
        width = spec["detector"]
        n_tiles = _programs(width * width, BLOCK_R, width, TILE_W)  # the kernels' programs per view
        views = spec["views"]
        # W1's views look at 8 different volumes (one each): the groups are of one view, nothing to interleave
        per_volume = views if name != "W1" else 1
        buffer_mb = spec["shape"][0] * spec["shape"][1] * spec["shape"][2] * SLOT_BYTES / 1e6
        for label, group in (("view after view", 1), ("views inner", per_volume)):
            order = window(launch_order(n_tiles, views, group), n_tiles, args.in_flight)
            mb = footprint_mb(rays, order, spec["shape"], spec["samples"], args.sample_stride)
            print(json.dumps({"workload": name, "order": label, "programs": len(order),
                              "views_in_flight": len({v for _, v in order}), "footprint_mb": round(mb, 1),
                              "packed_buffer_mb_per_volume": round(buffer_mb, 1)}), flush=True)


if __name__ == "__main__":
    main()
