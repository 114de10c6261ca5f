"""``xraysyn project``: forward-project the raw voxel values of a volume (paper eq. 1)."""

from __future__ import annotations

import glob
import re
from pathlib import Path

import typer

from xraysyn.cli import app
from xraysyn.cli.common import reduce_angles_deg, require_finite, user_errors

OUTPUT_SUFFIXES = (".npy", ".png")
PROJECT_FLOATS_PER_PIXEL = 12
"""float32 values held per detector pixel while one view is projected: the ray set-up (origin,
direction, entry/exit: 8), the line integral, its numpy copy and the picture/file buffers."""
MAX_SAMPLES_PER_RAY = 2**31 - 1
"""The projector holds each ray's sample count as an int32 (``projector.rays.sample_counts``); a
``--step`` needing more samples along the longest chord wraps around (measured: ``--step 1e-9`` on
an 80 mm volume gave an all-zero image)."""


def volume_diagonal_mm(world_from_voxel, shape) -> float:
    """Longest distance (mm) between two corners of the volume's box (voxel edges, not centres),
    the longest chord a ray can have inside it. ``world_from_voxel``: ``(4, 4)``; ``shape``: ``(I, J, K)``."""
    import itertools

    import numpy as np

    affine = np.asarray(world_from_voxel, dtype=np.float64)
    corners = np.array([[c - 0.5 for c in corner] for corner in itertools.product(*[(0, n) for n in shape])])
    world = corners @ affine[:3, :3].T
    return float(max(np.linalg.norm(a - b) for a, b in itertools.combinations(world, 2)))


def check_step_fits(step_mm: float | None, world_from_voxel, shape) -> None:
    """Refuse a ``--step`` (mm) that needs more than :data:`MAX_SAMPLES_PER_RAY` samples along the
    volume's diagonal."""
    if step_mm is None:
        return
    diagonal = volume_diagonal_mm(world_from_voxel, shape)
    if diagonal / step_mm > MAX_SAMPLES_PER_RAY:
        raise ValueError(f"--step {step_mm:g} mm needs up to {diagonal / step_mm:.3g} samples along the "
                         f"{diagonal:.1f} mm volume diagonal; the projector counts at most {MAX_SAMPLES_PER_RAY} "
                         "samples per ray")


def parse_detector(text: str) -> tuple[int, int]:
    """``"ROWSxCOLS"`` (or one number for a square detector) → ``(rows, cols)``."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--detector must look like 256x256, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"--detector must be ROWSxCOLS with positive sizes, got {text!r}")
    return values[0], values[1]


def view_angles(azimuth: str, elevation: str) -> tuple[list[float], list[float]]:
    """Pair azimuth and elevation lists (a single value is repeated for every view)."""
    from xraysyn.geometry import parse_angles

    az, el = parse_angles(azimuth), parse_angles(elevation)
    if len(az) == 1 and len(el) > 1:
        az = az * len(el)
    if len(el) == 1 and len(az) > 1:
        el = el * len(az)
    if len(az) != len(el):
        raise ValueError(f"--azimuth gives {len(az)} views but --elevation gives {len(el)}")
    return az, el


def output_paths(out: Path, count: int) -> list[Path]:
    """``out`` itself for one view, else ``name_000.ext``, ``name_001.ext``, …"""
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"--out must end in {' or '.join(OUTPUT_SUFFIXES)}, got {str(out)!r}")
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i:03d}{out.suffix}") for i in range(count)]


def earlier_outputs(out: Path) -> list[Path]:
    """Files an earlier run with the same ``--out`` may have written: ``out`` and ``name_NNN.ext``."""
    pattern = re.compile(rf"{re.escape(out.stem)}_\d{{3,}}{re.escape(out.suffix)}")
    siblings = out.parent.glob(f"{glob.escape(out.stem)}_*{glob.escape(out.suffix)}") if out.parent.is_dir() else []
    return sorted({out, *(p for p in siblings if pattern.fullmatch(p.name))})


@app.command("project")
def project_command(
    volume: Path = typer.Argument(..., help="NIfTI (.nii/.nii.gz), NRRD, MHA/MHD file or DICOM series folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npy (float line integrals) or .png (windowed)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier run's files of the same --out name "
                                   "(all of them, also views the new run does not write)."),
    azimuth: str = typer.Option("0", help="Degrees: one value, a list '-9,0,9' or 'start:stop:count'."),
    elevation: str = typer.Option("0", help="Degrees, same forms as --azimuth."),
    sdd: float = typer.Option(1200.0, help="Source-detector distance (mm)."),
    sid: float = typer.Option(1000.0, help="Source-isocenter distance (mm)."),
    detector: str = typer.Option("256x256", help="Detector size ROWSxCOLS in pixels."),
    pixel_spacing: float = typer.Option(1.6, help="Detector pixel size (mm)."),
    step: float = typer.Option(None, help="Sample spacing along rays (mm); default half the smallest voxel spacing."),
):
    """Integrate the raw voxel values of VOLUME along cone-beam rays (no HU conversion).

    Output unit: voxel value x mm. The isocenter is the volume's centre; azimuth 0 / elevation 0
    is a PA view (row 0 superior, column 0 the patient's right). Views are written one by one as
    they are computed (memory does not grow with the number of views) into a staging folder and
    moved onto their names only when every view succeeded.
    """
    with user_errors():
        import torch
        from tqdm import tqdm

        from xraysyn.data.ct_io import load_volume_tensor
        from xraysyn.geometry import ConeBeamGeometry
        from xraysyn.imageio import save_npy, save_png
        from xraysyn.memory import FLOAT32_BYTES, require_memory
        from xraysyn.outputs import check_output_files, staged_output_files
        from xraysyn.projector import forward_project

        require_finite(step, "--step", minimum=0.0, strict_minimum=True, unit="mm")
        az, el = view_angles(azimuth, elevation)
        paths = output_paths(out, len(az))
        geometry = ConeBeamGeometry(sdd=sdd, sid=sid, detector_shape=parse_detector(detector),
                                    pixel_spacing=pixel_spacing)
        if not volume.exists():
            raise FileNotFoundError(f"volume {str(volume)!r} does not exist")
        stale = [p for p in earlier_outputs(out) if p not in set(paths)]
        check_output_files(paths, stale, overwrite=overwrite)
        rows, cols = geometry.detector_shape
        require_memory(rows * cols * PROJECT_FLOATS_PER_PIXEL * FLOAT32_BYTES, f"one {rows}x{cols} view (--detector)")
        vol, affine = load_volume_tensor(volume)
        check_step_fits(step, affine[0].numpy(), vol.shape[-3:])
        poses = geometry.poses(reduce_angles_deg(az), reduce_angles_deg(el))
        with staged_output_files(paths, stale, overwrite=overwrite) as staged, torch.no_grad():
            for i in tqdm(range(len(az)), desc="projecting", unit="view", disable=len(az) < 2):
                image = forward_project(vol, affine, poses[i:i + 1], geometry, step_mm=step)[0, 0].numpy()
                (save_npy if staged[i].suffix.lower() == ".npy" else save_png)(image, staged[i])
        for path in paths:
            typer.echo(str(path))
