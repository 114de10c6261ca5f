"""``xraysyn evaluate simulated|real``: the paper's evaluation of trained models (Table 1, Table 4)."""

from __future__ import annotations

from pathlib import Path

import typer

from xraysyn.cli import app
from xraysyn.cli.common import user_errors

evaluate_app = typer.Typer(help="Evaluate trained models: held-out simulated cases (Table 1, Table 4) and real "
                                "radiographs (Table 1 real part, FID).", no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")


def _model_files(options: list[str]) -> dict[str, Path]:
    """``NAME=FILE`` options → ``{name: path}``; one clear error for a malformed or repeated name."""
    models: dict[str, Path] = {}
    for text in options:
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--model {text!r}: expected NAME=FILE, e.g. 3dpn=runs/prior-cpu64.pt")
        if name in models:
            raise ValueError(f"--model: the name {name!r} is given twice")
        models[name] = Path(path)
    return models


@evaluate_app.command("simulated")
def evaluate_simulated_command(
    data: list[str] = typer.Option(..., "--data", help="`phantom` (held-out procedural phantoms) or a folder of "
                                                       "held-out `prepare ct` shards; repeat for several."),
    model: list[str] = typer.Option(..., "--model", help="NAME=FILE: an `xraysyn export` of a 3DPN (also DRR mode), "
                                                         "refiner2d or x2ct; repeat for several."),
    cases: int = typer.Option(8, "--cases", help="Cases per data source."),
    views: int = typer.Option(20, "--views", help="Novel views T' from -max to +max azimuth."),
    max_azimuth: float = typer.Option(9.0, "--max-azimuth", help="Largest |azimuth| of the views T' (degrees)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda (cuda:N) or auto."),
    out: Path = typer.Option(..., "--out", help="Results folder: table1/table4 .md/.csv, per_case.csv, fig3.png, "
                                                "evaluation.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing results folder as a whole."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Table 1 (simulated part) and Table 4 of the paper on held-out simulated cases, and a Fig. 3-like grid."""
    with user_errors():
        from xraysyn.evaluation.simulated import evaluate_simulated

        result = evaluate_simulated(_model_files(model), data, cases=cases, views=views, max_azimuth_deg=max_azimuth,
                                    device=device, out_dir=out, overwrite=overwrite, progress=progress)
    for warning in result.warnings:
        typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
    typer.echo(result.table1_markdown, nl=False)
    typer.echo(f"results: {result.out_dir} ({len(result.case_ids)} cases × {len(result.models)} models, "
               f"{result.seconds:.0f} s)")


@evaluate_app.command("real")
def evaluate_real_command(
    data: list[Path] = typer.Option(None, "--data", help="Real radiographs: files or folders; repeat for several."),
    model: list[str] = typer.Option(..., "--model", help="NAME=FILE: a stage-2 export (XraySyn, XraySyn without M) "
                                                         "or a 3DPN export; `shipped` for the shipped weights; "
                                                         "repeat for several."),
    held_out_of: Path = typer.Option(None, "--held-out-of", help="Use the radiographs this stage-2 export's run "
                                                                 "held out for validation (instead of --data)."),
    views: int = typer.Option(20, "--views", help="Novel views from -max to +max azimuth per radiograph."),
    max_azimuth: float = typer.Option(9.0, "--max-azimuth", help="Largest |azimuth| of the novel views (degrees)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    out: Path = typer.Option(..., "--out", help="Results folder: table1_real .md/.csv, per_image.csv, fig4.png, "
                                                "evaluation.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing results folder as a whole."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Table 1 (real part) of the paper: input-view PSNR/SSIM and FID (Mixed_6e and pool features) of the novel
    views against the inputs, and a Fig. 4-like grid."""
    with user_errors():
        from xraysyn.evaluation.real import evaluate_real, held_out_radiographs
        from xraysyn.synthesis.model import pretrained_path

        models = {name: (pretrained_path() if str(path) == "shipped" else path)
                  for name, path in _model_files(model).items()}
        if (held_out_of is None) == (not data):
            raise ValueError("give the radiographs with --data, or --held-out-of a stage-2 export (one of the two)")
        if held_out_of is not None:
            held = str(held_out_of)
            data = held_out_radiographs(pretrained_path() if held == "shipped" else held_out_of)
        result = evaluate_real(models, list(data), out, views=views, max_azimuth_deg=max_azimuth, device=device,
                               overwrite=overwrite, progress=progress)
    for item in result["skipped"]:
        typer.secho(f"skipped {item['input']}: {item['error']}", err=True, fg=typer.colors.YELLOW)
    typer.echo((out / "table1_real.md").read_text(encoding="utf-8"), nl=False)
    typer.echo(f"results: {out} ({len(result['images'])} radiographs × {len(models)} models)")
