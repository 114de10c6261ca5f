"""Training checkpoints: atomic files that load with ``torch.load(weights_only=True)``, kept last-K plus best.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only (no pickled objects): the
state dicts of the models and optimisers, the schedule's and scaler's state, the step, every RNG
state (python, numpy, torch, CUDA) and the resolved config. Files live in ``RUN_DIR/checkpoints/`` as
``step_00001234.pt`` and ``best.pt``; each is written to a temporary file and renamed into place, so a
process killed while writing leaves the previous checkpoint intact (and at most a hidden temporary
file, ignored and cleaned up).
"""

from __future__ import annotations

import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from xraysyn.atomic import atomic_write

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "save_checkpoint", "load_checkpoint", "latest_checkpoint",
           "step_checkpoints", "prune_checkpoints", "capture_rng_state", "restore_rng_state", "CHECKPOINT_DIR",
           "BEST_NAME"]

CHECKPOINT_FORMAT = "xraysyn-checkpoint-1"
CHECKPOINT_DIR = "checkpoints"
BEST_NAME = "best.pt"
_STEP_NAME = re.compile(r"^step_(\d{8})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, corrupt, not an xraysyn checkpoint, another stage)."""


def capture_rng_state() -> dict:
    """Every global RNG state as tensors and numbers (python ``random``, numpy, torch CPU, each CUDA device)."""
    version, python_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python_version": int(version),
        "python_state": torch.tensor(python_state, dtype=torch.int64),
        "python_gauss": gauss,
        "numpy_kind": str(kind),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached_gaussian": float(cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate((state["python_version"], tuple(int(v) for v in state["python_state"].tolist()),
                     state["python_gauss"]))
    np.random.set_state((state["numpy_kind"], state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


def step_checkpoints(run_dir: str | Path) -> list[Path]:
    """The ``step_*.pt`` checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def step_checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Write ``payload`` (plus the format tag) atomically to ``path``."""
    payload = {"format": CHECKPOINT_FORMAT, **payload}
    return atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path, *, stage: str | None = None) -> dict:
    """Load a checkpoint with ``weights_only=True`` onto the CPU; :class:`CheckpointError` when it is not usable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (a truncated or foreign file raises many kinds of errors)
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else 'corrupt'})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an xraysyn training checkpoint")
    if stage is not None and payload.get("stage") != stage:
        raise CheckpointError(f"checkpoint {str(path)!r} is of stage {payload.get('stage')!r}, not {stage!r}")
    return payload


def latest_checkpoint(run_dir: str | Path, *, stage: str | None = None) -> tuple[Path, dict] | None:
    """The newest readable step checkpoint of a run (an unreadable newer one is skipped with a warning)."""
    for path in reversed(step_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path, stage=stage)
        except CheckpointError as error:
            warnings.warn(f"skipping unusable checkpoint: {error}", stacklevel=2)
    return None


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` (>= 0) step checkpoints and any leftover temporary files."""
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
        raise ValueError(f"keep_last must be an integer >= 0, got {keep_last!r}")
    paths = step_checkpoints(run_dir)
    for path in paths[:max(0, len(paths) - keep_last)]:
        path.unlink(missing_ok=True)
    folder = Path(run_dir) / CHECKPOINT_DIR
    for leftover in folder.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)
