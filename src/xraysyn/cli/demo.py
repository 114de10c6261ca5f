"""``xraysyn demo``: the simulation pipeline on the example chest CT and radiograph."""

from __future__ import annotations

from pathlib import Path

import typer

from xraysyn.cli import app
from xraysyn.cli.common import user_errors


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="Output folder."),
    size: int = typer.Option(128, help="CT cube size (voxels per side), as in the paper."),
    detector: int = typer.Option(256, help="Detector rows = cols (pixels)."),
    cache_dir: Path = typer.Option(None, help="Example-data cache (default $XRAYSYN_CACHE or ~/.cache/xraysyn)."),
):
    """Fetch the example data, then simulate CT2Xray views at -18..18 deg azimuth, bone and tissue
    thickness maps, Algorithm-1 bone suppression and a prepared real radiograph; writes
    OUT/montage.png, per-view .npy/.png and OUT/summary.json."""
    with user_errors():
        from xraysyn.data.example import fetch_example_data
        from xraysyn.demo import DemoConfig, run_demo

        paths = fetch_example_data(cache_dir, progress=True)
        config = DemoConfig(cube_size=size, detector=detector, pixel_spacing_mm=1.6 * 256 / detector)
        summary = run_demo(out, paths.ct, labels_path=paths.labels, structures_path=paths.structures,
                           radiograph_path=paths.radiograph, config=config)
        typer.echo(f"bone mask from labels; Dice of the 350 HU threshold mask: {summary['dice_threshold_vs_labels']}")
        typer.echo(f"timings (s): {summary['timings_s']}")
        typer.echo(f"wrote {len(summary['outputs'])} files to {out}; start with {out / 'montage.png'}")
