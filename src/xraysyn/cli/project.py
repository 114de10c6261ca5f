"""``xraysyn project``: forward-project the raw voxel values of a volume (paper eq. 1)."""

from __future__ import annotations

from pathlib import Path

import typer

from xraysyn.cli import app
from xraysyn.cli.common import user_errors

OUTPUT_SUFFIXES = (".npy", ".png")


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


@app.command("project")
def project_command(
    volume: Path = typer.Argument(..., help="NIfTI (.nii/.nii.gz), NRRD, MHA/MHD file or DICOM series folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npy (float line integrals) or .png (windowed)."),
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
    is a PA view (row 0 superior, column 0 the patient's right).
    """
    with user_errors():
        import torch
        from tqdm import tqdm

        from xraysyn.data.ct_io import load_volume_tensor
        from xraysyn.geometry import ConeBeamGeometry
        from xraysyn.imageio import save_npy, save_png
        from xraysyn.projector import forward_project

        az, el = view_angles(azimuth, elevation)
        paths = output_paths(out, len(az))
        geometry = ConeBeamGeometry(sdd=sdd, sid=sid, detector_shape=parse_detector(detector),
                                    pixel_spacing=pixel_spacing)
        vol, affine = load_volume_tensor(volume)
        poses = geometry.poses(torch.tensor(az), torch.tensor(el))
        images = []
        with torch.no_grad():
            for i in tqdm(range(len(az)), desc="projecting", unit="view", disable=len(az) < 2):
                images.append(forward_project(vol, affine, poses[i:i + 1], geometry, step_mm=step)[0, 0].numpy())
        for path, image in zip(paths, images):
            (save_npy if path.suffix.lower() == ".npy" else save_png)(image, path)
            typer.echo(str(path))
