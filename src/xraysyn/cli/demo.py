"""``xraysyn demo``: the simulation pipeline on the example chest CT and radiograph."""

from __future__ import annotations

from pathlib import Path

import typer

from xraysyn.cli import app
from xraysyn.cli.common import user_errors

DEMO_FIELD_OF_VIEW_MM = 1.6 * 256
"""Detector width in mm (256 pixels of 1.6 mm); --detector changes the pixel count, not the field."""


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="Output folder (a non-empty one needs --overwrite)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out folder as a whole."),
    size: int = typer.Option(128, help="CT cube size (voxels per side), as in the paper."),
    detector: int = typer.Option(256, help="Detector rows = cols (pixels)."),
    cache_dir: Path = typer.Option(None, help="Example-data cache (default $XRAYSYN_CACHE or ~/.cache/xraysyn)."),
):
    """Fetch the example data, then simulate CT2Xray views at -18..18 deg azimuth, bone and tissue
    thickness maps, Algorithm-1 bone suppression and a prepared real radiograph; writes
    OUT/montage.png, per-view .npy/.png and OUT/summary.json."""
    with user_errors():
        from xraysyn.data.example import fetch_example_data
        from xraysyn.demo import MIN_SIZE, DemoConfig, run_demo
        from xraysyn.memory import require_memory
        from xraysyn.outputs import check_output_folder

        # Options first (before the fetch and the CT load): sizes, the output folder, memory.
        if detector < MIN_SIZE["detector"]:
            raise ValueError(f"--detector must be at least {MIN_SIZE['detector']} pixel(s), got {detector}")
        if size < MIN_SIZE["cube_size"]:
            raise ValueError(f"--size must be at least {MIN_SIZE['cube_size']} voxels per side, got {size}")
        config = DemoConfig(cube_size=size, detector=detector,
                            pixel_spacing_mm=DEMO_FIELD_OF_VIEW_MM / detector)
        check_output_folder(out, overwrite=overwrite)
        require_memory(config.memory_estimate_bytes(), f"the demo at --size {size} --detector {detector}")
        paths = fetch_example_data(cache_dir, progress=True)
        summary = run_demo(out, paths.ct, labels_path=paths.labels, structures_path=paths.structures,
                           radiograph_path=paths.radiograph, config=config, overwrite=overwrite)
        typer.echo(f"bone mask from labels; Dice of the 350 HU threshold mask: {summary['dice_threshold_vs_labels']}")
        typer.echo(f"timings (s): {summary['timings_s']}")
        typer.echo(f"wrote {len(summary['outputs'])} files to {out}; start with {out / 'montage.png'}")
