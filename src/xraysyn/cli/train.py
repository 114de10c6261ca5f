"""``xraysyn train prior``: train the 3D PriorNet (stage 1); ``train refine``: the 2DRN (stage 2); ``train baseline
NAME``: an ablation baseline; ``xraysyn export``: a weights-only model file."""

from __future__ import annotations

from pathlib import Path

import typer

from xraysyn.cli import app
from xraysyn.cli.common import user_errors

train_app = typer.Typer(help="Train XraySyn's networks (one GPU, several with torchrun, or the CPU).",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")

#: Exit statuses of a run stopped by a signal after writing its checkpoint (128 + signal number).
EXIT_INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}


def _override(config, *, data, steps, batch_size, device, seed, workers):
    from xraysyn.train.prior_config import DataSource

    changes = {}
    if data:
        changes["data__sources"] = tuple(DataSource.parse(text) for text in data)
    if steps is not None:
        changes["loop__steps"] = steps
    if batch_size is not None:
        changes["loop__batch_size"] = batch_size
    if device is not None:
        changes["loop__device"] = device
    if seed is not None:
        changes["loop__seed"] = seed
    if workers is not None:
        changes["data__num_workers"] = workers
    return config.replace(**changes) if changes else config


def _resolved_config(*, resume: bool, out: Path, config, new_run_options_given: bool, saved, load,
                     kept: str = "its saved config"):
    """The run's config: ``saved(out)`` on resume (refusing options only a new run takes), else
    ``load(config)``; one clear error when ``--config`` is missing."""
    from xraysyn.train.config_io import ConfigError

    if resume:
        if config is not None or new_run_options_given:
            raise ConfigError(f"--resume continues a run with {kept}: give only --out and optionally "
                              "--steps, --device, --workers")
        return saved(out)
    if config is None:
        raise ConfigError("--config is required for a new run: a preset (paper, cpu64, small) or a YAML file")
    return load(config)


def _saved_config(read_mapping):
    """``saved(out)`` for :func:`_resolved_config`: the run folder's ``config.yaml`` through ``read_mapping``."""
    def saved(out: Path):
        from xraysyn.train.config_io import ConfigError, read_yaml
        from xraysyn.train.loop import CONFIG_FILE

        if not (out / CONFIG_FILE).is_file():
            raise ConfigError(f"--resume: {str(out)!r} is not a training run folder (no {CONFIG_FILE})")
        return read_mapping(read_yaml(out / CONFIG_FILE))
    return saved


def _train_and_report(train) -> None:
    """Run ``train()``; a run stopped by a signal exits 130/143 with one line, a finished one prints its summary."""
    from xraysyn.train.loop import TrainingInterrupted

    try:
        summary = train()
    except TrainingInterrupted as stopped:
        typer.secho(f"{stopped}", err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(EXIT_INTERRUPTED.get(stopped.signal_name, 1)) from None
    if summary.best:
        typer.echo(f"best {summary.best['metric']} = {summary.best['value']:.3f} at step {summary.best['step']}")
    typer.echo(f"run: {summary.run_dir} ({summary.steps} steps, {summary.seconds:.0f} s)")


@train_app.command("prior")
def train_prior_command(
    out: Path = typer.Option(..., "--out", help="Run folder: config, split, metrics.csv, samples/, checkpoints/."),
    config: str = typer.Option(None, "--config",
                               help="Preset (paper, cpu64, small) or a YAML file of config fields. "
                                    "Required for a new run; a resumed run uses its saved config."),
    data: list[str] = typer.Option(None, "--data",
                                   help="Data source: a folder of shards from `xraysyn prepare ct`, or `phantom`; "
                                        "PATH:WEIGHT mixes several (repeat the option)."),
    steps: int = typer.Option(None, "--steps", help="Optimiser steps in all (may extend a resumed run)."),
    batch_size: int = typer.Option(None, "--batch-size", help="CT cases per step, over all processes."),
    device: str = typer.Option(None, "--device", help="auto, cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its newest checkpoint."),
    seed: int = typer.Option(None, "--seed", help="Base seed of every random draw."),
    workers: int = typer.Option(None, "--workers", help="DataLoader worker processes."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train the 3D PriorNet on CT shards and/or procedural phantoms (torchrun for several processes)."""
    with user_errors():
        from xraysyn.train.prior import train_prior
        from xraysyn.train.prior_config import config_from_mapping, load_config, saved_run_mapping

        resolved = _resolved_config(resume=resume, out=out, config=config,
                                    new_run_options_given=bool(data) or batch_size is not None or seed is not None,
                                    saved=_saved_config(lambda data: config_from_mapping(saved_run_mapping(data))),
                                    load=load_config)
        resolved = _override(resolved, data=data, steps=steps, batch_size=batch_size, device=device, seed=seed,
                             workers=workers)
        _train_and_report(lambda: train_prior(resolved, out, resume=resume, progress=progress))


@train_app.command("refine")
def train_refine_command(
    out: Path = typer.Option(..., "--out", help="Run folder: config, prior.json, radiographs.json, metrics, samples."),
    prior: Path = typer.Option(None, "--prior", help="The 3DPN export (`xraysyn export` of a `train prior` run)."),
    config: str = typer.Option(None, "--config", help="Preset (paper, cpu64, small) or a YAML file of config fields."),
    data: list[str] = typer.Option(None, "--data", help="A folder of real radiographs (DICOM, PNG, JPEG); "
                                                         "PATH:WEIGHT, repeat the option for several."),
    steps: int = typer.Option(None, "--steps", help="Optimiser steps in all (may extend a resumed run)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Radiographs per step, over all processes."),
    device: str = typer.Option(None, "--device", help="auto, cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its newest checkpoint."),
    seed: int = typer.Option(None, "--seed", help="Base seed of every random draw."),
    workers: int = typer.Option(None, "--workers", help="DataLoader worker processes."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train the 2D RefineNet with hypernetwork M and LSGAN on real radiographs behind a frozen 3DPN."""
    with user_errors():
        from xraysyn.train.refine import train_refine
        from xraysyn.train.refine_config import load_refine_config, refine_config_from_mapping

        resolved = _resolved_config(resume=resume, out=out, config=config,
                                    new_run_options_given=prior is not None or bool(data) or batch_size is not None
                                    or seed is not None,
                                    saved=_saved_config(refine_config_from_mapping), load=load_refine_config,
                                    kept="its saved config and 3DPN")
        resolved = _override(resolved, data=data, steps=steps, batch_size=batch_size, device=device, seed=seed,
                             workers=workers)
        _train_and_report(lambda: train_refine(resolved, prior, out, resume=resume, progress=progress))


@train_app.command("baseline")
def train_baseline_command(
    name: str = typer.Argument(..., help="refiner2d (2D Refiner), x2ct (X2CT-CNN), prior_drr (3DPN-DRR) or "
                                         "refine_nom (XraySyn without M)."),
    out: Path = typer.Option(..., "--out", help="Run folder, as for train prior / train refine."),
    config: str = typer.Option(None, "--config", help="Preset (paper, cpu64, small) or a YAML file of config fields. "
                                                      "Required for a new run."),
    data: list[str] = typer.Option(None, "--data", help="refine_nom: folders of real radiographs; the others: CT "
                                                         "shards or `phantom` (PATH:WEIGHT, repeat the option)."),
    prior: Path = typer.Option(None, "--prior", help="refine_nom only: the 3DPN export it refines."),
    steps: int = typer.Option(None, "--steps", help="Optimiser steps in all (may extend a resumed run)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Items per step, over all processes."),
    device: str = typer.Option(None, "--device", help="auto, cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its newest checkpoint."),
    seed: int = typer.Option(None, "--seed", help="Base seed of every random draw."),
    workers: int = typer.Option(None, "--workers", help="DataLoader worker processes."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train an ablation baseline of the paper (Table 1, Table 4) on the shared loop; export it with `xraysyn export`."""
    with user_errors():
        from xraysyn.train.baselines import check_baseline_name, load_baseline_config, saved_baseline_config, \
            train_baseline

        check_baseline_name(name)
        resolved = _resolved_config(resume=resume, out=out, config=config,
                                    new_run_options_given=prior is not None or bool(data) or batch_size is not None
                                    or seed is not None,
                                    saved=lambda run: saved_baseline_config(name, run),
                                    load=lambda text: load_baseline_config(name, text))
        resolved = _override(resolved, data=data, steps=steps, batch_size=batch_size, device=device, seed=seed,
                             workers=workers)
        _train_and_report(lambda: train_baseline(name, resolved, out, prior=prior, resume=resume, progress=progress))


@app.command("export")
def export_command(
    run_dir: Path = typer.Argument(..., help="A training run folder."),
    out: Path = typer.Option(..., "--out", help="The model file to write, e.g. prior.pt."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    half: bool = typer.Option(False, "--half", help="Store the weights as float16 (half the size)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing model file."),
) -> None:
    """Write a weights-only model file (state dict, model config, input normalisation, metrics, SHA-256)."""
    with user_errors():
        from xraysyn.train.export import export_run

        path, digest = export_run(run_dir, out, checkpoint=checkpoint, half=half, overwrite=overwrite)
        typer.echo(f"model: {path} (sha256 {digest[:16]}…)")
