"""Exact count of the atomic requests each adjoint scheme of the Triton backend issues (no GPU needed).

    python tools/gpu/adjoint_atomics.py [--workloads W1,W2] [--ray-stride 64]
    python tools/gpu/adjoint_atomics.py --workloads W2 --cross-ray 16 [--block-r 256 --tile-w 4]

The measured adjoint time has followed its number of atomics (naive → cell-run merging: 2.5× fewer
atomics, 2.5× faster on an H200, both workloads), so this count predicts what a scheme can gain
before device time is spent on it. For every sampled ray it replays the kernels' sampling (float64
positions, the same clamping) and counts, per ray and channel group, the memory requests of:

  per-sample      8 corners per sample                                 (a naive scatter, for reference)
  merged          8 corners each time the ray leaves a cell            (the adjoint kernel)
  merged+carry    only the corners the next cell does not share        (TritonConfig.carry_max_pack)
  packedP[+carry] the same with P = 2 (x pairs) or 4 (x and y quads) corners per vector request
  packed4+carry[plane A]  4 slots packed across axis A (quads over the other two axes): the plane carry
                  keeps the shared quad when a ray steps one cell along A (TritonConfig.adjoint_plane_axis; A = z is
                  packed4+carry); [dominant]: A = the axis with the most single-axis steps

Prints one JSON line per workload with the counts and their ratios to ``per-sample``.

``--cross-ray N`` instead counts what merging *across rays* could still save on top of the plane carry
(``packed4+carry[dominant]``, the 4-slot default). It replays every N-th program of the adjoint (its
2-D ray tiles: ``--block-r`` rays, ``--tile-w`` detector columns wide, lanes in row-major order) and
reports, per group of ``G`` consecutive lanes, how many distinct vectors the flushes of one march step
address (``same step, G lanes``: a merge of equal addresses among G lanes before the atomics), for the
whole program at one step, and for the whole program over its whole march (``program, any step``: the
floor for any scheme that accumulates a program's rays locally before writing, e.g. plane by plane).
A flush happens at the step where a ray leaves its cell (the kernel's ``leaving``), at ``n_samples``
for a ray that ends inside the march and after the loop for one that runs to the last step.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

WORKLOADS = {  # as in benchmarks/projector.py
    "W1": {"shape": (128, 128, 128), "spacing": (2.5, 2.5, 2.6), "detector": 256, "pixel": 2.0, "samples": 256,
           "views": 8},
    "W2": {"shape": (256, 256, 133), "spacing": (1.40625, 1.40625, 2.5), "detector": 512, "pixel": 1.0,
           "samples": 512, "views": 16},
    "smoke": {"shape": (12, 10, 8), "spacing": (5.0, 6.0, 7.0), "detector": 16, "pixel": 6.0, "samples": 20,
              "views": 2},
}


def workload_rays(spec: dict):
    """The float64 torch :class:`~xraysyn.projector.rays.RaySet` of a workload's views (one volume)."""
    from xraysyn.geometry import ConeBeamGeometry
    from xraysyn.projector import build_rays

    shape = spec["shape"]
    affine = torch.diag(torch.tensor([*spec["spacing"], 1.0], dtype=torch.float64))
    affine[:3, 3] = -torch.tensor(spec["spacing"], dtype=torch.float64) * (torch.tensor(shape) - 1) / 2
    geometry = ConeBeamGeometry(sdd=1200.0, sid=1000.0, detector_shape=(spec["detector"],) * 2,
                                pixel_spacing=spec["pixel"])
    poses = geometry.poses(torch.linspace(-18, 18, spec["views"], dtype=torch.float64))
    return build_rays(poses, affine[None], shape, geometry, num_samples=spec["samples"])


def cell_paths(spec: dict, ray_stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cells (N, R', S, 3) int64, live (N, R', S) bool)`` of every ``ray_stride``-th ray of every view."""
    return _sample_cells(spec, workload_rays(spec), slice(None), torch.arange(0, spec["detector"] ** 2, ray_stride))


def _sample_cells(spec: dict, rays, views, pick: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cells, live)`` of rays ``pick`` of ``views`` (an index or a slice), sampled as the kernels do."""
    k = torch.arange(spec["samples"], dtype=torch.float64)
    t = rays.t_near[views, pick, None] + (k + 0.5) * rays.delta[views, pick, None]
    p = rays.origin[views, None, None, :] + t[..., None] * rays.direction[views, pick, None, :]
    size = torch.tensor(spec["shape"], dtype=torch.float64)
    cells = torch.minimum(p.clamp(min=0).minimum(size - 1).floor(), size - 2).long()
    return cells, k < rays.n_samples[views, pick, None]


_CORNERS = [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]
_AXES = "zyx"


def _groups(pack: int, plane: int = 0) -> list[list[tuple[int, int, int]]]:
    """Corners ``(dz, dy, dx)`` that share one vector request in the packed layout (4 slots: the two quads
    across axis ``plane``)."""
    if pack == 1:
        return [[corner] for corner in _CORNERS]
    if pack == 2:
        return [[(a, b, 0), (a, b, 1)] for a in (0, 1) for b in (0, 1)]
    return [[corner for corner in _CORNERS if corner[plane] == side] for side in (0, 1)]


def _flushed(groups, shared, change) -> int:
    """Groups flushed at cell changes: all but those whose every corner the next cell shares."""
    flushed = 0
    for group in groups:
        all_kept = torch.stack([shared[_CORNERS.index(c)] for c in group]).all(0)
        flushed += int((change & ~all_kept).sum())
    return flushed


def _cell_steps(cells: torch.Tensor, live: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(step (..., S-1, 3), change (..., S-1))`` of cell paths ``(..., S, 3)``: each sample's move from the
    previous one's cell, and whether a live ray left its cell there (both samples live)."""
    step = cells[..., 1:, :] - cells[..., :-1, :]
    return step, (step != 0).any(-1) & live[..., 1:] & live[..., :-1]


def count(cells: torch.Tensor, live: torch.Tensor) -> dict:
    """Atomic requests per scheme (see the module docstring) for cell paths of shape ``(..., S, 3)``."""
    n_live = int(live.sum())
    rays_hit = int(live[..., 0].sum())
    step, change = _cell_steps(cells, live)
    result = {"samples": n_live, "per-sample": 8 * n_live}
    for pack in (1, 2, 4):
        groups = _groups(pack)
        label = "merged" if pack == 1 else f"packed{pack}"
        # without carrying: every group at every cell change and at the end of each ray
        runs = int(change.sum()) + rays_hit
        result[label] = len(groups) * runs
        # carrying: a corner (a, b, c) of the old cell is shared when a - step_z etc. lie in {0, 1}
        shared = []
        for corner in _CORNERS:
            ok = torch.ones_like(change)
            for axis, index in enumerate(corner):
                moved = index - step[..., axis]
                ok &= (moved >= 0) & (moved <= 1)
            shared.append(ok)
        result[label + "+carry"] = _flushed(groups, shared, change) + len(groups) * rays_hit
        if pack == 4:  # the plane carry across each axis, and across the axis with the most single steps
            for plane in range(3):
                result[f"packed4+carry[plane {_AXES[plane]}]"] = (_flushed(_groups(4, plane), shared, change)
                                                                 + 2 * rays_hit)
            result["packed4+carry[dominant]"] = result[f"packed4+carry[plane {_AXES[dominant_plane(cells, live)]}]"]
    base = result["per-sample"]
    result["ratio_to_per_sample"] = {k: round(v / base, 3) for k, v in result.items()
                                     if k not in ("samples", "per-sample")}
    return result


def plane_carry_flushes(cells: torch.Tensor, live: torch.Tensor, plane: int):
    """The vector atomics of the 4-slot plane carry across ``plane`` for cell paths ``(R, S, 3)``:
    ``(ray, step, voxel)`` per flushed vector, ``voxel`` the packed voxel it adds to (the near quad of a
    cell goes to the cell's base voxel, the far one to the next voxel along ``plane``), as one int64 key."""
    step, change = _cell_steps(cells, live)
    others = [axis for axis in range(3) if axis != plane]
    single = change & (step[..., others[0]] == 0) & (step[..., others[1]] == 0)
    up = single & (step[..., plane] == 1)  # the far quad becomes the next cell's near one: kept
    down = single & (step[..., plane] == -1)  # the near quad becomes the next cell's far one: kept
    across = torch.zeros(3, dtype=torch.long)
    across[plane] = 1
    ends = live.sum(1)  # a ray's last cell is flushed at the first dead step (or after the loop)
    hit = torch.nonzero(ends > 0).flatten()
    last_cells = cells[hit, ends[hit] - 1]
    rays, steps, voxels = [], [], []
    for flushed, offset in ((change & ~down, 0), (change & ~up, across)):
        ray, index = torch.nonzero(flushed, as_tuple=True)
        rays += [ray]
        steps += [index + 1]  # leaving the cell of sample ``index`` is seen at step ``index + 1``
        voxels += [cells[ray, index] + offset]
    for offset in (0, across):
        rays += [hit]
        steps += [ends[hit]]
        voxels += [last_cells + offset]
    voxel = torch.cat(voxels)
    key = (voxel[:, 0] * (1 << 20) + voxel[:, 1]) * (1 << 20) + voxel[:, 2]
    return torch.cat(rays), torch.cat(steps), key


def dominant_plane(cells: torch.Tensor, live: torch.Tensor) -> int:
    """The axis with the most single-axis cell steps of cell paths ``(..., S, 3)`` (the ``[dominant]`` plane)."""
    step, change = _cell_steps(cells, live)
    single = [int((change & (step[..., axis].abs() == 1) & (step.abs().sum(-1) == 1)).sum()) for axis in range(3)]
    return single.index(max(single))


CROSS_RAY_GROUPS = (2, 4, 8, 16, 32)


def cross_ray_count(cells: torch.Tensor, live: torch.Tensor, plane: int, groups=CROSS_RAY_GROUPS) -> dict:
    """Distinct vector atomics of one program's plane-carry flushes (cell paths ``(R, S, 3)``, rays in lane
    order) if equal addresses were merged among ``G`` consecutive lanes at the same step, among all lanes
    at the same step, and among all lanes over the whole march."""
    ray, step, key = plane_carry_flushes(cells, live, plane)

    def distinct(*columns) -> int:
        return int(torch.stack(columns).unique(dim=1).shape[1]) if ray.numel() else 0

    result = {"samples": int(live.sum()), "plane carry": int(ray.numel())}
    for lanes in groups:
        result[f"same step, {lanes} lanes"] = distinct(ray // lanes, step, key)
    result["same step, program"] = distinct(step, key)
    result["program, any step"] = int(key.unique().numel())
    return result


def cross_ray_main(spec: dict, every: int, block_r: int, tile_w: int) -> dict:
    """:func:`cross_ray_count` summed over every ``every``-th program (tile, view) of a workload."""
    rays = workload_rays(spec)
    side = spec["detector"]
    rows_per_tile = block_r // tile_w
    tiles = [(view, top, left) for view in range(spec["views"]) for top in range(0, side, rows_per_tile)
             for left in range(0, side, tile_w)][::every]
    total: dict = {}
    for view, top, left in tiles:
        rows = torch.arange(top, min(top + rows_per_tile, side))
        cols = torch.arange(left, min(left + tile_w, side))
        cells, live = _sample_cells(spec, rays, view, (rows[:, None] * side + cols[None, :]).reshape(-1))
        for name, value in cross_ray_count(cells, live, dominant_plane(cells, live)).items():
            total[name] = total.get(name, 0) + value
    base = total["plane carry"]
    return {"programs": len(tiles), "block_r": block_r, "tile_w": tile_w, **total,
            "ratio_to_plane_carry": {name: round(value / base, 3) for name, value in total.items()
                                     if name not in ("samples", "plane carry")}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="W1,W2")
    parser.add_argument("--ray-stride", type=int, default=64, help="count every n-th ray of each view")
    parser.add_argument("--cross-ray", type=int, default=0, metavar="N",
                        help="count cross-ray merges of the plane carry over every N-th program instead")
    parser.add_argument("--block-r", type=int, default=256, help="rays per program (--cross-ray)")
    parser.add_argument("--tile-w", type=int, default=4, help="detector columns per program tile (--cross-ray)")
    args = parser.parse_args(argv)
    for flag, value in (("--ray-stride", args.ray_stride), ("--block-r", args.block_r), ("--tile-w", args.tile_w)):
        if value < 1:
            sys.exit(f"{flag} must be a positive integer, got {value}")
    if args.cross_ray < 0:
        sys.exit(f"--cross-ray must be 0 (off) or a positive integer, got {args.cross_ray}")
    for name in args.workloads.split(","):
        if name not in WORKLOADS:
            sys.exit(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
        pixels = WORKLOADS[name]["detector"] ** 2
        if args.ray_stride > pixels:
            sys.exit(f"--ray-stride {args.ray_stride} exceeds {name}'s {pixels} detector pixels per view")
        if args.cross_ray > 0:
            if args.block_r % args.tile_w:
                sys.exit(f"--block-r {args.block_r} is not a multiple of --tile-w {args.tile_w}")
            print(json.dumps({"workload": name, "every": args.cross_ray,
                              **cross_ray_main(WORKLOADS[name], args.cross_ray, args.block_r, args.tile_w)}),
                  flush=True)
            continue
        cells, live = cell_paths(WORKLOADS[name], args.ray_stride)
        print(json.dumps({"workload": name, "ray_stride": args.ray_stride, **count(cells, live)}), flush=True)


if __name__ == "__main__":
    main()
