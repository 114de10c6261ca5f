"""The one training loop of every stage and baseline: steps, logs, pictures, checkpoints, exact resume.

A stage is a :class:`TrainingTask` (stage 1: :class:`xraysyn.train.prior.PriorTask`); :func:`run_training`
drives it:

* data: the task's item dataset read through a :class:`~xraysyn.train.sources.GlobalBatchSampler` by a
  DataLoader (worker processes, pinned memory on CUDA); step ``t`` always trains on the same items;
* optimisation: the learning-rate schedule (warm-up, cosine or step), gradient accumulation over
  micro-batches and clipping are applied by the task's step through :func:`optimise`;
* every ``log_every`` steps a row of ``metrics.csv`` (and TensorBoard when installed); a tqdm progress bar
  with loss, s/step and ETA; every ``validate_every`` steps the task's validation (``best.pt`` by its
  ``best_metric``), every ``sample_every`` a PNG grid in ``samples/``; at the end ``curves.png``;
* checkpoints every ``checkpoint_every`` steps, at the end and on SIGINT / SIGTERM (the step in progress
  finishes, the checkpoint is written, the run stops with :class:`TrainingInterrupted`);
* ``resume=True`` continues from the newest readable checkpoint: same items, same RNG states, same
  optimiser state → the same losses and weights as an uninterrupted run (on the CPU, bit for bit).
"""

from __future__ import annotations

import csv
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch.utils.data import DataLoader

from xraysyn.atomic import atomic_write
from xraysyn.train.checkpoint import (
    BEST_NAME,
    CHECKPOINT_DIR,
    capture_rng_state,
    latest_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
    step_checkpoint_path,
)
from xraysyn.train.distributed import ProcessGroup
from xraysyn.train.prior_config import OptimConfig
from xraysyn.train.sources import GlobalBatchSampler

__all__ = ["TrainingTask", "TrainingInterrupted", "RunSummary", "run_training", "learning_rate_factor", "optimise",
           "ignore_interrupts_in_worker",
           "METRICS_FILE", "SAMPLES_DIR", "CURVES_FILE"]

METRICS_FILE = "metrics.csv"
SAMPLES_DIR = "samples"
CURVES_FILE = "curves.png"
CONFIG_FILE = "config.yaml"


class TrainingInterrupted(RuntimeError):
    """The run stopped on SIGINT / SIGTERM after writing a checkpoint; ``resume`` continues it."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(f"stopped by {signal_name} after step {step}; the checkpoint is written, "
                         "continue with --resume")
        self.step, self.signal_name = step, signal_name


class TrainingTask(Protocol):
    """What a stage gives the loop (see :class:`xraysyn.train.prior.PriorTask`)."""

    stage: str
    loss_names: tuple[str, ...]  # the keys of step()'s result, logged as loss_<name>
    metric_names: tuple[str, ...]  # the keys of validate()'s result, logged as val_<name>
    best_metric: str  # a metric name, larger is better

    def items(self): ...  # the dataset indexed by global position
    def collate(self, items: list) -> dict: ...
    def collate_to_device(self, batch: dict) -> dict: ...
    def epoch_of_step(self, step: int) -> int: ...
    def modules(self) -> dict[str, torch.nn.Module]: ...  # trained and saved
    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...
    def step(self, micro_batches: list[dict], step: int) -> dict[str, float]: ...
    def validate(self) -> dict[str, float]: ...
    def save_samples(self, path: Path, step: int) -> None: ...


@dataclass(frozen=True)
class RunSummary:
    """What a finished (or resumed-and-finished) run reports."""

    run_dir: Path
    steps: int
    last_losses: dict
    validation: dict
    best: dict
    seconds: float


def learning_rate_factor(step: int, total_steps: int, optim: OptimConfig) -> float:
    """Multiplier of the peak learning rate at (0-based) ``step``: linear warm-up, then the schedule."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    if optim.schedule == "step":
        return optim.step_gamma ** ((step - optim.warmup_steps) // optim.step_size)
    span = max(1, total_steps - 1 - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    return optim.min_lr_fraction + (1 - optim.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


def optimise(model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro_losses, micro_batches: list,
             grad_clip_norm: float | None) -> list:
    """One optimiser step over micro-batches: ``micro_losses(batch) -> (loss, terms)`` for each, its loss
    divided by the number of micro-batches and back-propagated (DDP synchronises on the last only), the
    gradient norm clipped, then ``optimizer.step()``. Returns the terms of each micro-batch."""
    optimizer.zero_grad(set_to_none=True)
    terms = []
    count = len(micro_batches)
    for index, batch in enumerate(micro_batches):
        sync = index == count - 1 or not hasattr(model, "no_sync")
        context = model.no_sync() if not sync else _null()
        with context:
            loss, parts = micro_losses(batch)
            (loss / count).backward()
        terms.append({"total": loss.detach(), **parts})
    if grad_clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    optimizer.step()
    return terms


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _StopFlag:
    """SIGINT / SIGTERM set a flag; the loop stops after the step in progress. A second SIGINT aborts."""

    def __init__(self):
        self.signal_name = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        # the batches of the step in progress are loaded: workers ended by the same signal must not make
        # the DataLoader's SIGCHLD handler raise in the middle of the step (restored on exit). A Python no-op,
        # not SIG_DFL: a SIGCHLD already pending behind this signal (a worker that died first) then finds a
        # handler, instead of CPython printing "Signal 17 ignored due to race condition" with a traceback.
        if hasattr(signal, "SIGCHLD") and signal.SIGCHLD not in self._previous:
            self._previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, _ignore_signal)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        return False


def _ignore_signal(signum, frame) -> None:
    """A Python signal handler that does nothing."""


def ignore_interrupts_in_worker(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C (SIGINT to the whole process group) to the training process, which
    finishes its step and writes the checkpoint. They still end on SIGTERM (the way the loader and the
    interpreter shut them down); a SIGTERM to the group (SLURM, ``kill -- -PGID``) is handled by
    :class:`_StopFlag`, which stops the loader from raising when its workers end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _MetricsLog:
    """``metrics.csv`` (fixed columns) and, when the package is installed, TensorBoard event files."""

    def __init__(self, run_dir: Path, columns: list[str], resume_step: int | None):
        self.path = run_dir / METRICS_FILE
        self.columns = columns
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        elif not self.path.exists():
            atomic_write(self.path, lambda tmp: tmp.write_text(",".join(columns) + "\n", encoding="utf-8"))
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)
        except Exception:  # noqa: BLE001 (tensorboard is optional: CSV only)
            self.tensorboard = None

    def _truncate_after(self, step: int) -> None:
        """Drop rows of steps after ``step`` (written after the checkpoint a resume starts from)."""
        with self.path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerows(kept)

        atomic_write(self.path, write)

    def write(self, values: dict) -> None:
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerow([_format(values.get(c)) for c in self.columns])
        if self.tensorboard is not None:
            for key, value in values.items():
                if key != "step" and value is not None:
                    self.tensorboard.add_scalar(key, value, values["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _payload(task: TrainingTask, step: int, config: dict, best: dict, validation: dict) -> dict:
    return {
        "stage": task.stage,
        "step": step,
        "modules": {name: _unwrap(m).state_dict() for name, m in task.modules().items()},
        "optimizers": {name: o.state_dict() for name, o in task.optimizers().items()},
        "schedule": {"step": step},
        "scaler": {},  # bf16 autocast needs no loss scaling
        "rng": capture_rng_state(),
        "config": config,
        "best": best,
        "validation": validation,
    }


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if hasattr(module, "module") and isinstance(module, torch.nn.parallel.DistributedDataParallel) \
        else module


def _restore(task: TrainingTask, payload: dict) -> None:
    for name, module in task.modules().items():
        _unwrap(module).load_state_dict(payload["modules"][name])
    for name, optimizer in task.optimizers().items():
        optimizer.load_state_dict(payload["optimizers"][name])
    restore_rng_state(payload["rng"])


def run_training(task: TrainingTask, *, run_dir: Path, config_dict: dict, optim: OptimConfig, steps: int,
                 batch_size: int, log_every: int, validate_every: int, sample_every: int, checkpoint_every: int,
                 keep_last: int, num_workers: int, group: ProcessGroup, resume: bool,
                 progress: bool = True, on_step=None) -> RunSummary:
    """Run (or resume) ``task`` for ``steps`` optimiser steps in ``run_dir``; see the module docstring.

    ``run_dir`` must exist (the caller creates it after validating everything and writing the config);
    ``config_dict`` is stored in every checkpoint. A new run validates the untrained model first (a row of
    step 0). ``on_step(step, losses)``: called after every step (e.g. to report progress elsewhere).
    """
    run_dir = Path(run_dir)
    started = time.perf_counter()
    start_step, best, validation = 0, {}, {}
    if resume:
        found = latest_checkpoint(run_dir, stage=task.stage)
        if found is not None:
            _, payload = found
            _restore(task, payload)
            start_step, best, validation = int(payload["step"]), dict(payload["best"]), dict(payload["validation"])
    loss_columns = [f"loss_{n}" for n in task.loss_names]
    val_columns = [f"val_{n}" for n in task.metric_names]
    columns = ["step", "epoch", "lr", "s_per_step", "samples_per_s", "data_s"] + loss_columns + val_columns
    log = _MetricsLog(run_dir, columns, start_step if resume else None) if group.is_main else None

    micro_batches = optim.accumulation_steps
    sampler = GlobalBatchSampler(batch_size, steps, start_step, group.rank, group.world_size, micro_batches)
    loader = DataLoader(task.items(), batch_sampler=sampler, num_workers=num_workers, collate_fn=task.collate,
                        pin_memory=group.device.type == "cuda", persistent_workers=False,
                        worker_init_fn=ignore_interrupts_in_worker if num_workers else None,
                        prefetch_factor=2 if num_workers else None)
    bar = None
    if group.is_main and progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start_step, desc=f"train {task.stage}", unit="step", dynamic_ncols=True,
                   file=sys.stderr)
    if start_step == 0:
        validation = task.validate()
        if log is not None:
            log.write({"step": 0, "epoch": 0, **{f"val_{k}": v for k, v in validation.items()}})
    optimizers = task.optimizers()
    last_losses: dict = {}
    window: list[dict] = []
    step = start_step
    tick = time.perf_counter()
    data_seconds = 0.0
    try:
        with _StopFlag() as stop:
            iterator = iter(loader)
            try:
                while step < steps:
                    wait = time.perf_counter()
                    try:
                        batches = [task.collate_to_device(next(iterator)) for _ in range(micro_batches)]
                    except RuntimeError:
                        if stop.signal_name is None:
                            raise
                        # the group's stop signal ended the workers before this step's data came: stop here
                        if group.is_main:
                            save_checkpoint(step_checkpoint_path(run_dir, step),
                                            _payload(task, step, config_dict, best, validation))
                            prune_checkpoints(run_dir, keep_last)
                        raise TrainingInterrupted(step, stop.signal_name) from None
                    data_seconds += time.perf_counter() - wait
                    factor = learning_rate_factor(step, steps, optim)
                    for optimizer in optimizers.values():
                        for group_params in optimizer.param_groups:
                            group_params["lr"] = optim.learning_rate * factor
                    losses = group.all_reduce_mean(task.step(batches, step))
                    step += 1
                    window.append(losses)
                    last_losses = losses
                    if on_step is not None:
                        on_step(step, losses)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{losses['total']:.4g}", refresh=False)
                    validated = {}
                    if step % validate_every == 0 or step == steps:
                        validated = task.validate()
                        validation = validated
                        metric = validated.get(task.best_metric)
                        if group.is_main and metric is not None and (not best or metric > best["value"]):
                            best = {"metric": task.best_metric, "value": float(metric), "step": step}
                            save_checkpoint(run_dir / CHECKPOINT_DIR / BEST_NAME,
                                            _payload(task, step, config_dict, best, validation))
                    if group.is_main and (step % sample_every == 0 or step == steps):
                        task.save_samples(run_dir / "samples" / f"step_{step:08d}.png", step)
                    if step % log_every == 0 or validated or step == steps:
                        elapsed = time.perf_counter() - tick
                        row = {"step": step, "epoch": task.epoch_of_step(step), "lr": optim.learning_rate * factor,
                               "s_per_step": elapsed / len(window), "samples_per_s": batch_size * len(window) / elapsed,
                               "data_s": data_seconds / len(window)}
                        for name in task.loss_names:
                            row[f"loss_{name}"] = sum(w[name] for w in window) / len(window)
                        for name, value in validated.items():
                            row[f"val_{name}"] = value
                        if log is not None:
                            log.write(row)
                        if bar is not None:
                            bar.set_postfix(loss=f"{row['loss_total']:.4g}", s_step=f"{row['s_per_step']:.2f}")
                        window, tick, data_seconds = [], time.perf_counter(), 0.0
                    stopping = group.any_flag(stop.signal_name is not None)
                    if step % checkpoint_every == 0 or step == steps or stopping:
                        if group.is_main:
                            save_checkpoint(step_checkpoint_path(run_dir, step),
                                            _payload(task, step, config_dict, best, validation))
                            prune_checkpoints(run_dir, keep_last)
                        group.barrier()
                    if stopping:
                        raise TrainingInterrupted(step, stop.signal_name or "a signal on another process")
            finally:
                # end the workers while the stop handler still owns SIGCHLD: after a group SIGTERM they are gone, and
                # the loader's own check would report that from the iterator's __del__ once the handler is restored
                shutdown = getattr(iterator, "_shutdown_workers", None)
                if shutdown is not None:
                    shutdown()
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    if group.is_main:
        try:
            from xraysyn.train.figures import save_training_curves

            save_training_curves(run_dir / CURVES_FILE, run_dir / METRICS_FILE)
        except Exception as error:  # noqa: BLE001 (a failed picture must not fail a finished run)
            print(f"warning: could not draw the training curves: {error}", file=sys.stderr)
    return RunSummary(run_dir, step, last_losses, validation, best, time.perf_counter() - started)
