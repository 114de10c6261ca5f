"""CT preprocessing benchmark (what ``xraysyn prepare ct`` does per CT): prints one JSON line per CT.

    python benchmarks/prepare_ct.py [--size 128] [--reps 1] [--no-example] [--shape 512,512,133]

Two methods on the same CT, both ending in a ``size``³ cube and bone mask (threshold bone mask):

* ``old``: the method before issue 25, reproduced here as the reference — body mask with the 3 mm
  opening, labelling and slice-by-slice ``binary_fill_holes`` at full resolution; the threshold bone
  mask (closing, ``binary_fill_holes``, small-component removal) on the whole CT; the crop; the
  resampling by one 3-D Gaussian and ``map_coordinates`` (``resample_to_grid(..., separable=False)``).
* ``new``: :func:`xraysyn.data.preprocess.preprocess_ct` (body morphology on a ~2 mm grid with the
  surface refined at full resolution, bone mask on the cropped CT, hole filling by labelling,
  one-axis-at-a-time resampling).

CTs: a synthetic chest (``--shape``, default 512 x 512 x 133 at 0.703 x 0.703 x 2.5 mm: body with
lungs, spine and ribs, a couch under a thin cushion, arms beside the body, air, noise) and the
example CT when ``xraysyn data example`` has fetched it (never downloaded here).

Per CT: ``old_s`` / ``new_s`` (median wall seconds over ``--reps``, ``time.perf_counter``) and
``old_cpu_s`` / ``new_cpu_s`` (process CPU seconds; the work is single-threaded, so these are less
disturbed by other load on the machine), ``speedup`` (old_s / new_s), ``load_s`` for the example
file, ``body_dice`` (new body mask against the old one on the full grid), ``bone_dice`` (the two
output bone cubes), ``hu_max_abs_diff`` and ``hu_mean_abs_diff`` of the two output cubes (HU; the largest differences sit
where the two body masks differ) and ``hu_fraction_over_1``, the fraction of cube voxels differing by more than 1 HU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from xraysyn.data import preprocess
from xraysyn.data.bone_mask import (
    BONE_THRESHOLD_HU,
    CLOSING_RADIUS_MM,
    MIN_BONE_COMPONENT_MM3,
    dice,
)
from xraysyn.data.ct_io import CTVolume

SYNTHETIC_SPACING_MM = (360.0 / 512, 360.0 / 512, 2.5)
# HU of the synthetic chest's materials (typical values: Buzug 2008, Kalender 2011)
AIR_HU, LUNG_HU, TISSUE_HU, BONE_HU = -1000.0, -850.0, 40.0, 700.0
CUSHION_HU, COUCH_HU = -300.0, 250.0  # foam pad (above the -500 HU body threshold) and a carbon couch
NOISE_HU = 15.0


def synthetic_chest(shape: Sequence[int] = (512, 512, 133), spacing_mm: Sequence[float] = SYNTHETIC_SPACING_MM,
                    seed: int = 0) -> CTVolume:
    """An axial chest CT in HU: ``(I, J, K)`` = (left-right, anterior-posterior, inferior-superior).

    Body ellipse (its width varies along k) with two lungs, a spine and rib arcs; two arms 3 mm
    beside the body; below it a 4 mm foam cushion over a 12 mm couch that spans the field of view.
    """
    rng = np.random.default_rng(seed)
    ni, nj, nk = (int(n) for n in shape)
    x = ((np.arange(ni) - (ni - 1) / 2) * spacing_mm[0])[:, None, None]
    y = ((np.arange(nj) - (nj - 1) / 2) * spacing_mm[1])[None, :, None]
    z = (np.arange(nk) / max(nk - 1, 1))[None, None, :]  # 0 .. 1 along the scan
    width = 135.0 + 15.0 * np.sin(np.pi * z)  # body half-width, mm
    depth = 95.0  # body half-depth, mm
    body_y0 = -10.0
    radial = (x / width) ** 2 + ((y - body_y0) / depth) ** 2
    hu = np.full((ni, nj, nk), AIR_HU, dtype=np.float32)
    hu[np.broadcast_to(radial <= 1.0, hu.shape)] = TISSUE_HU
    lungs = (((np.abs(x) - 0.5 * width) / (0.33 * width)) ** 2 + ((y - body_y0 + 5.0) / 60.0) ** 2 <= 1.0) & (z > 0.1) & (z < 0.9)
    hu[np.broadcast_to(lungs, hu.shape)] = LUNG_HU
    ribs = (np.abs(np.sqrt(radial) - 0.9) < 0.03) & (np.sin(z * 40.0) > 0.3)
    spine = x**2 + (y - body_y0 - 0.65 * depth) ** 2 <= 14.0**2
    hu[np.broadcast_to(ribs | spine, hu.shape)] = BONE_HU
    arm_x = width + 3.0 + 28.0  # arms of radius 28 mm, 3 mm of air from the body's widest point
    arms = ((np.abs(x) - arm_x) ** 2 + (y - body_y0) ** 2 <= 28.0**2) & np.ones_like(z, dtype=bool)
    hu[np.broadcast_to(arms & (radial > 1.0), hu.shape)] = TISSUE_HU
    bottom = body_y0 + depth
    cushion = (y > bottom - 2.0) & (y <= bottom + 4.0) & (np.abs(x) < 150.0)
    hu[np.broadcast_to(cushion & (radial > 1.0), hu.shape)] = CUSHION_HU
    couch = (y > bottom + 4.0) & (y <= bottom + 16.0)
    hu[np.broadcast_to(couch, hu.shape)] = COUCH_HU
    hu += rng.normal(0.0, NOISE_HU, size=hu.shape).astype(np.float32)
    affine = np.diag([*map(float, spacing_mm), 1.0])
    affine[:3, 3] = [-(ni - 1) / 2 * spacing_mm[0], -(nj - 1) / 2 * spacing_mm[1], 0.0]
    return CTVolume(hu=hu, world_from_voxel=affine, meta={"format": "synthetic"})


# ------------------------------------------------------------------ the method before issue 25
def old_body_mask(hu: np.ndarray, world_from_voxel: np.ndarray) -> np.ndarray:
    """Body mask as computed before issue 25: every step at full resolution."""
    spacing = np.linalg.norm(np.asarray(world_from_voxel, dtype=np.float64)[:3, :3], axis=0)
    candidate = hu > preprocess.BODY_THRESHOLD_HU
    ball = preprocess._ball(preprocess.BODY_OPENING_RADIUS_MM, spacing)
    pad = [(h, h) for h in np.array(ball.shape) // 2]
    opened = ndimage.binary_opening(np.pad(candidate, pad, mode="edge"), structure=ball)
    candidate = opened[tuple(slice(a, a + n) for (a, _), n in zip(pad, candidate.shape))]
    components, _ = ndimage.label(candidate)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    body = components == int(np.argmax(sizes))
    axial = preprocess._superior_axis(np.asarray(world_from_voxel, dtype=np.float64))
    filled = np.moveaxis(body, axial, 0).copy()
    for index in range(filled.shape[0]):
        filled[index] = ndimage.binary_fill_holes(filled[index])
    return np.moveaxis(filled, 0, axial)


def old_bone_mask(hu: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """Threshold bone mask as computed before issue 25 (scipy's iterative hole filling)."""
    mask = hu > BONE_THRESHOLD_HU
    ball = preprocess._ball(CLOSING_RADIUS_MM, spacing_mm)
    pad = [(h, h) for h in (np.array(ball.shape) // 2)]
    mask = ndimage.binary_closing(np.pad(mask, pad), structure=ball)[tuple(slice(p[0], -p[0] or None) for p in pad)]
    mask = ndimage.binary_fill_holes(mask)
    components, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    sizes_mm3 = np.bincount(components.ravel())[1:] * float(np.prod(spacing_mm))
    return np.concatenate([[False], sizes_mm3 >= MIN_BONE_COMPONENT_MM3])[components]


def old_preprocess(ct: CTVolume, size: int) -> tuple[CTVolume, np.ndarray, np.ndarray]:
    """``(cube, bone cube, full-grid body mask)`` by the method before issue 25."""
    bone = old_bone_mask(ct.hu, ct.spacing_mm)
    body = old_body_mask(ct.hu, ct.world_from_voxel)
    first, last = preprocess._bounding_box(body)
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(first, last))
    hu = np.where(body, ct.hu, np.float32(preprocess.AIR_HU)).astype(np.float32)[box]
    affine = preprocess._translate_affine(ct.world_from_voxel, first)
    out_affine = preprocess.cube_grid(hu.shape, affine, size, "stretch")
    cube = preprocess.resample_to_grid(hu, affine, (size,) * 3, out_affine, separable=False)
    fraction = preprocess.resample_to_grid((bone & body)[box].astype(np.float32), affine, (size,) * 3, out_affine,
                                           fill_value=0.0, separable=False)
    return CTVolume(hu=cube, world_from_voxel=out_affine), fraction > 0.5, body


def _timed(function: Callable[[], object], reps: int) -> tuple[object, float, float]:
    walls, cpus, result = [], [], None
    for _ in range(reps):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return result, statistics.median(walls), statistics.median(cpus)


def compare(name: str, ct: CTVolume, size: int, reps: int) -> dict:
    """Time both methods on ``ct`` and compare their results (see the module docstring)."""
    (old_cube, old_bone, old_body), old_s, old_cpu = _timed(lambda: old_preprocess(ct, size), reps)
    (new_cube, new_bone), new_s, new_cpu = _timed(lambda: preprocess.preprocess_ct(ct, size=size), reps)
    new_body = preprocess.body_mask(ct.hu, ct.world_from_voxel)
    difference = np.abs(old_cube.hu.astype(np.float64) - new_cube.hu)
    return {
        "ct": name, "shape": list(ct.shape), "spacing_mm": [round(s, 4) for s in ct.spacing_mm], "size": size,
        "reps": reps, "old_s": round(old_s, 3), "new_s": round(new_s, 3), "speedup": round(old_s / new_s, 2),
        "old_cpu_s": round(old_cpu, 3), "new_cpu_s": round(new_cpu, 3), "cpu_speedup": round(old_cpu / new_cpu, 2),
        "body_dice": round(dice(old_body, new_body), 5), "bone_dice": round(dice(old_bone, new_bone), 5),
        "hu_max_abs_diff": round(float(difference.max()), 2), "hu_mean_abs_diff": round(float(difference.mean()), 3),
        "hu_fraction_over_1": round(float(np.mean(difference > 1.0)), 6),
        "same_cube_box": bool(np.allclose(old_cube.world_from_voxel, new_cube.world_from_voxel, atol=1e-6)),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=preprocess.DEFAULT_CUBE_SIZE, help="output cube side (voxels)")
    parser.add_argument("--reps", type=int, default=1, help="timed runs per method (median reported)")
    parser.add_argument("--shape", default="512,512,133", help="synthetic CT shape I,J,K")
    parser.add_argument("--no-example", action="store_true", help="skip the example CT")
    args = parser.parse_args(argv)
    shape = tuple(int(n) for n in args.shape.split(","))
    print(json.dumps(compare("synthetic", synthetic_chest(shape), args.size, args.reps)), flush=True)
    if args.no_example:
        return
    from xraysyn.data.ct_io import load_ct
    from xraysyn.data.example import example_paths

    path = example_paths().ct
    if not path.is_file():
        print(json.dumps({"ct": "example", "skipped": f"{path} not found; run `xraysyn data example` first"}))
        return
    ct, load_s, _ = _timed(lambda: load_ct(path), 1)
    row = compare("example", ct, args.size, args.reps)
    row["load_s"] = round(load_s, 3)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
