"""``xraysyn phantom``: write a procedural chest CT phantom and its bone mask as NIfTI."""

from __future__ import annotations

from pathlib import Path

import typer

from xraysyn.cli import app
from xraysyn.cli.common import user_errors

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _split_nifti_name(path: Path) -> tuple[str, str]:
    name = path.name
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    raise ValueError(f"output must be a NIfTI file ending in .nii.gz or .nii, got {str(path)!r}")


@app.command("phantom")
def phantom_command(
    out: Path = typer.Argument(..., help="Output CT, e.g. phantom.nii.gz; the mask goes to phantom_mask.nii.gz."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same phantom)."),
    size: int = typer.Option(128, "--size", help="Voxels along each axis."),
    spacing: float = typer.Option(None, "--spacing", help="Voxel size in mm (default: 384 mm field of view / size)."),
    noise: float = typer.Option(8.0, "--noise", help="Gaussian noise standard deviation in HU."),
    labels: bool = typer.Option(False, "--labels", help="Also write the structure labels to OUT_labels.nii.gz."),
) -> None:
    """Write a seeded chest CT phantom (HU, float32, RAS+ affine) and its bone mask (uint8)."""
    with user_errors():
        from xraysyn.data.ct_io import write_nifti_array
        from xraysyn.data.phantom import make_chest_phantom

        stem, suffix = _split_nifti_name(out)
        if not out.parent.is_dir():
            raise NotADirectoryError(f"output folder {str(out.parent)!r} does not exist")
        ph = make_chest_phantom((size, size, size), spacing_mm=spacing, seed=seed, noise_hu=noise)
        mask_path = out.with_name(f"{stem}_mask{suffix}")
        write_nifti_array(ph.hu, ph.world_from_voxel, out)
        write_nifti_array(ph.bone_mask, ph.world_from_voxel, mask_path)
        typer.echo(f"CT: {out}")
        typer.echo(f"bone mask: {mask_path}")
        if labels:
            labels_path = out.with_name(f"{stem}_labels{suffix}")
            write_nifti_array(ph.labels, ph.world_from_voxel, labels_path)
            typer.echo(f"labels: {labels_path}  ({', '.join(f'{v}={k}' for k, v in ph.label_names.items())})")
