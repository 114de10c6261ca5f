"""Paired comparisons of models scored on the same cases.

Two models evaluated on the same held-out cases differ far less between each other than the cases differ among
themselves, so the mean ± std over cases of each model's table hides most real differences (a 0.6 dB gap under
± 2.4 dB spreads). The paired view looks at the per-case difference ``model − reference`` instead:

* its mean and standard error (sample std / √n);
* the cases where the model scores higher (wins), lower (losses) or the same (ties);
* the two-sided exact sign test p-value of wins against losses (ties dropped): the chance of a split at least
  this uneven if either model were as likely to be better on any case. It assumes only independent cases.

Used by ``xraysyn evaluate simulated`` (``paired.md`` / ``paired.csv``, per Table 1 column, against the first
``--model``) and ``xraysyn evaluate real`` (PSNR / SSIM at T per radiograph).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["PairedDifference", "sign_test_p", "paired_columns", "paired_json", "write_paired_csv"]


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test: ``min(1, 2 · P[X ≤ min(wins, losses)])`` for ``X ~ Binomial(wins + losses,
    1/2)``; 1 when there is nothing to test."""
    for name, value in (("wins", wins), ("losses", losses)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    trials = int(wins) + int(losses)
    if trials == 0:
        return 1.0
    tail = sum(math.comb(trials, k) for k in range(min(wins, losses) + 1))
    return min(1.0, 2.0 * tail / 2.0**trials)


@dataclass(frozen=True)
class PairedDifference:
    """Per-case ``model − reference`` of one metric (higher is better), summarised."""

    mean: float
    standard_error: float | None  # None for a single case
    wins: int
    losses: int
    ties: int
    sign_test_p: float

    @classmethod
    def of(cls, model: Sequence[float], reference: Sequence[float]) -> PairedDifference:
        """The summary of ``model[i] − reference[i]`` over the cases ``i`` (equal lengths, at least one case,
        finite values)."""
        a = np.asarray(model, dtype=np.float64).reshape(-1)
        b = np.asarray(reference, dtype=np.float64).reshape(-1)
        if a.shape != b.shape or a.size == 0:
            raise ValueError(f"paired scores need the same number (≥ 1) of cases, got {a.size} and {b.size}")
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise ValueError("paired scores must be finite")
        difference = a - b
        wins, losses = int((difference > 0).sum()), int((difference < 0).sum())
        error = float(difference.std(ddof=1) / math.sqrt(difference.size)) if difference.size > 1 else None
        return cls(float(difference.mean()), error, wins, losses, difference.size - wins - losses,
                   sign_test_p(wins, losses))

    @property
    def cases(self) -> int:
        return self.wins + self.losses + self.ties

    def text(self, spec: str) -> str:
        """``+0.41 ± 0.08 (7/8, p 0.07)``: mean ± standard error in ``spec``, wins of cases, sign-test p."""
        mean = format(self.mean, "+" + spec)
        error = "" if self.standard_error is None else f" ± {format(self.standard_error, spec)}"
        return f"{mean}{error} ({self.wins}/{self.cases}, p {self.sign_test_p:.2g})"

    def to_json(self) -> dict:
        return {"mean": self.mean, "standard_error": self.standard_error, "wins": self.wins, "losses": self.losses,
                "ties": self.ties, "sign_test_p": self.sign_test_p}


def paired_columns(scores: dict[str, dict[str, Sequence[float] | None]], reference: str
                   ) -> dict[str, dict[str, PairedDifference | None]]:
    """``scores[model][column]`` per-case values (or ``None`` where a model lacks the column) → for every model but
    ``reference``, per column, its :class:`PairedDifference` against ``reference`` (``None`` where either lacks
    it). Models keep their order."""
    if reference not in scores:
        raise ValueError(f"the reference model {reference!r} is not among the scored models {list(scores)}")
    base = scores[reference]
    out = {}
    for name, columns in scores.items():
        if name == reference:
            continue
        out[name] = {column: None if values is None or base.get(column) is None
                     else PairedDifference.of(values, base[column]) for column, values in columns.items()}
    return out


#: Columns of ``paired.csv``: one row per model and compared column.
CSV_COLUMNS = ("model", "reference", "column", "cases", "mean", "standard_error", "wins", "losses", "ties",
               "sign_test_p")


def paired_json(paired: dict[str, dict[str, PairedDifference | None]], reference: str) -> dict:
    """:func:`paired_columns`'s result as JSON-ready data: ``{"reference": …, "models": {model: {column: … or
    None}}}``."""
    return {"reference": reference,
            "models": {name: {column: None if value is None else value.to_json() for column, value in columns.items()}
                       for name, columns in paired.items()}}


def write_paired_csv(path, paired: dict[str, dict[str, PairedDifference | None]], reference: str):
    """``paired.csv`` (:data:`CSV_COLUMNS`, one row per model and column either model has) of
    :func:`paired_columns`'s result, atomically; returns the path."""
    from xraysyn.evaluation.tables import Column, write_csv

    rows = [{"model": name, "reference": reference, "column": column, "cases": value.cases, **value.to_json()}
            for name, columns in paired.items() for column, value in columns.items() if value is not None]
    return write_csv(path, rows, [Column(key) for key in CSV_COLUMNS])
