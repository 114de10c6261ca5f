"""``xraysyn phantom``: write a procedural chest CT phantom and its bone mask as NIfTI.

The files of one run (CT, mask, optional labels) are written as a set, by the rule of
:mod:`xraysyn.outputs`: earlier files of the same names are refused unless ``--overwrite`` (then
replaced together, a labels file the new run does not write included), and everything is staged
in a temporary folder beside ``OUT`` and moved onto the final names only when all files are
complete, so a failure or an interruption never leaves a partial set or mixes two runs.
"""

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


def phantom_paths(out: Path) -> dict[str, Path]:
    """The files a run with output ``out`` may write: ``ct`` (``out``), ``mask`` and ``labels``."""
    stem, suffix = _split_nifti_name(out)
    return {"ct": out, "mask": out.with_name(f"{stem}_mask{suffix}"),
            "labels": out.with_name(f"{stem}_labels{suffix}")}


@app.command("phantom")
def phantom_command(
    out: Path = typer.Argument(..., help="Output CT, e.g. phantom.nii.gz; the mask goes to phantom_mask.nii.gz."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same phantom)."),
    size: int = typer.Option(128, "--size", help="Voxels along each axis."),
    spacing: float = typer.Option(None, "--spacing", help="Voxel size in mm (default: 384 mm field of view / size)."),
    noise: float = typer.Option(8.0, "--noise", help="Gaussian noise standard deviation in HU."),
    labels: bool = typer.Option(False, "--labels", help="Also write the structure labels to OUT_labels.nii.gz."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier run's files of the same OUT name "
                                   "(CT, mask and labels, as a whole)."),
) -> None:
    """Write a seeded chest CT phantom (HU, float32, RAS+ affine) and its bone mask (uint8)."""
    with user_errors():
        from xraysyn.data.ct_io import write_nifti_array
        from xraysyn.data.phantom import make_chest_phantom
        from xraysyn.outputs import check_output_files, staged_output_files

        paths = phantom_paths(out)
        if out.parent.exists() and not out.parent.is_dir():
            raise NotADirectoryError(f"output folder {str(out.parent)!r} is not a folder")
        if not out.parent.is_dir():
            raise NotADirectoryError(f"output folder {str(out.parent)!r} does not exist")
        kinds = ["ct", "mask", "labels"] if labels else ["ct", "mask"]
        targets = [paths[k] for k in kinds]
        stale = [] if labels else [paths["labels"]]
        check_output_files(targets, stale, overwrite=overwrite, option="OUT")
        ph = make_chest_phantom((size, size, size), spacing_mm=spacing, seed=seed, noise_hu=noise)
        arrays = {"ct": ph.hu, "mask": ph.bone_mask, "labels": ph.labels}
        with staged_output_files(targets, stale, overwrite=overwrite, option="OUT") as staged:
            for kind, tmp in zip(kinds, staged):
                write_nifti_array(arrays[kind], ph.world_from_voxel, tmp)
        typer.echo(f"CT: {paths['ct']}")
        typer.echo(f"bone mask: {paths['mask']}")
        if labels:
            typer.echo(f"labels: {paths['labels']}  ({', '.join(f'{v}={k}' for k, v in ph.label_names.items())})")
