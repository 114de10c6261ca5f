"""``xraysyn demo``: XraySyn with the shipped weights on the example chest radiograph (novel views, bone image and
suppression) and the simulator on the example chest CT, shown by an ``index.html``."""

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
    weights: str = typer.Option(None, "--weights", help="A file made by `xraysyn export` (default: shipped)."),
):
    """Fetch the example data; synthesise 20 novel views (±9°), the bone image and the bone-suppressed radiograph
    of the real chest radiograph with the shipped weights; simulate CT2Xray views, thickness maps and bone
    suppression of the real chest CT; writes OUT/index.html (start there), OUT/figure.png and the files."""
    with user_errors():
        from xraysyn.data.example import fetch_example_data
        from xraysyn.demo import MIN_SIZE, DemoConfig
        from xraysyn.synthesis.demo_page import run_full_demo
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
        if paths.radiograph is None:
            raise ValueError("the example data holds no radiograph to synthesise from")
        summary = run_full_demo(out, radiograph_path=paths.radiograph, ct_path=paths.ct, labels_path=paths.labels,
                                structures_path=paths.structures, weights=weights, simulation_config=config,
                                overwrite=overwrite)
        simulation = summary["simulation"]
        if "dice_threshold_vs_labels" in simulation:
            typer.echo(f"bone mask from labels; Dice of the 350 HU threshold mask: "
                       f"{simulation['dice_threshold_vs_labels']}")
        typer.echo("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in summary["timings_s"].items()))
        typer.echo(f"wrote {out}; open {out / 'index.html'} in a browser")
