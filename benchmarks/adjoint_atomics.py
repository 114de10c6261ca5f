"""Exact count of the atomic requests each adjoint scheme of the Triton backend issues (no GPU needed).

    python benchmarks/adjoint_atomics.py [--workloads W1,W2] [--ray-stride 64]

The measured adjoint time has followed its number of atomics (naive → cell-run merging: 2.5× fewer
atomics, 2.5× faster on an H200, both workloads), so this count predicts what a scheme can gain
before device time is spent on it. For every sampled ray it replays the kernels' sampling (float64
positions, the same clamping) and counts, per ray and channel group, the memory requests of:

  per-sample      8 corners per sample                                 (MERGE_RUNS = False)
  merged          8 corners each time the ray leaves a cell            (MERGE_RUNS, the measured default)
  merged+carry    only the corners the next cell does not share        (CARRY_CORNERS)
  packedP[+carry] the same with P = 2 (x pairs) or 4 (x and y quads) corners per vector request
  packed4+carry[plane A]  4 slots packed across axis A (quads over the other two axes): the plane carry
                  keeps the shared quad when a ray steps one cell along A (ADJOINT_PLANE_AXIS; A = z is
                  packed4+carry); [dominant]: A = the axis with the most single-axis steps

Prints one JSON line per workload with the counts and their ratios to ``per-sample``.
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
    shape = spec["shape"]
    rays = workload_rays(spec)
    pick = torch.arange(0, spec["detector"] ** 2, ray_stride)
    k = torch.arange(spec["samples"], dtype=torch.float64)
    t = rays.t_near[:, pick, None] + (k + 0.5) * rays.delta[:, pick, None]
    p = rays.origin[:, None, None, :] + t[..., None] * rays.direction[:, pick, None, :]
    size = torch.tensor(shape, dtype=torch.float64)
    cells = torch.minimum(p.clamp(min=0).minimum(size - 1).floor(), size - 2).long()
    live = k < rays.n_samples[:, pick, None]
    return cells, live


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


def count(cells: torch.Tensor, live: torch.Tensor) -> dict:
    """Atomic requests per scheme (see the module docstring) for cell paths of shape ``(..., S, 3)``."""
    n_live = int(live.sum())
    rays_hit = int(live[..., 0].sum())
    both = live[..., 1:] & live[..., :-1]
    step = cells[..., 1:, :] - cells[..., :-1, :]
    change = (step != 0).any(-1) & both
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
            single = [int((change & (step[..., axis].abs() == 1) & (step.abs().sum(-1) == 1)).sum()) for axis in range(3)]
            for plane in range(3):
                result[f"packed4+carry[plane {_AXES[plane]}]"] = (_flushed(_groups(4, plane), shared, change)
                                                                 + 2 * rays_hit)
            result["packed4+carry[dominant]"] = result[f"packed4+carry[plane {_AXES[single.index(max(single))]}]"]
    base = result["per-sample"]
    result["ratio_to_per_sample"] = {k: round(v / base, 3) for k, v in result.items()
                                     if k not in ("samples", "per-sample")}
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="W1,W2")
    parser.add_argument("--ray-stride", type=int, default=64, help="count every n-th ray of each view")
    args = parser.parse_args(argv)
    for name in args.workloads.split(","):
        if name not in WORKLOADS:
            sys.exit(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
        cells, live = cell_paths(WORKLOADS[name], args.ray_stride)
        print(json.dumps({"workload": name, "ray_stride": args.ray_stride, **count(cells, live)}), flush=True)


if __name__ == "__main__":
    main()
