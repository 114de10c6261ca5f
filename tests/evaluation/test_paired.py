"""Paired differences: closed forms, the sign test against SciPy's exact binomial test, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xraysyn.evaluation.paired import PairedDifference, paired_columns, sign_test_p


def test_sign_test_closed_forms():
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(4, 4) == 1.0
    assert sign_test_p(8, 0) == pytest.approx(2 / 256, rel=1e-15)  # only all-wins or all-losses as extreme
    assert sign_test_p(7, 1) == pytest.approx(2 * (1 + 8) / 256, rel=1e-15)
    assert sign_test_p(1, 7) == sign_test_p(7, 1)
    assert sign_test_p(3, 2) == 1.0  # 2 · P[X ≤ 2] = 2 · 16/32, capped
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="non-negative integer"):
            sign_test_p(bad, 2)


def test_sign_test_equals_scipys_exact_binomial_test():
    stats = pytest.importorskip("scipy.stats")
    for wins in range(0, 13):
        for losses in range(0, 13 - wins):
            if wins + losses == 0:
                continue
            expected = stats.binomtest(wins, wins + losses, 0.5, alternative="two-sided").pvalue
            assert sign_test_p(wins, losses) == pytest.approx(expected, rel=1e-12), (wins, losses)


def test_paired_difference_closed_form():
    reference = [20.0, 21.0, 22.0, 23.0, 24.0]
    model = [20.5, 21.0, 22.25, 22.0, 25.0]  # differences +0.5, 0, +0.25, −1, +1
    paired = PairedDifference.of(model, reference)
    differences = np.array([0.5, 0.0, 0.25, -1.0, 1.0])
    assert paired.mean == pytest.approx(differences.mean(), rel=1e-15)
    assert paired.standard_error == pytest.approx(differences.std(ddof=1) / math.sqrt(5), rel=1e-12)
    assert (paired.wins, paired.losses, paired.ties, paired.cases) == (3, 1, 1, 5)
    assert paired.sign_test_p == sign_test_p(3, 1) == pytest.approx(2 * 5 / 16)
    assert paired.text(".2f") == f"+0.15 ± {differences.std(ddof=1) / math.sqrt(5):.2f} (3/5, p 0.62)"
    single = PairedDifference.of([2.0], [3.0])
    assert single.standard_error is None and single.text(".1f") == "-1.0 (0/1, p 1)"


def test_paired_difference_bad_input():
    with pytest.raises(ValueError, match="same number"):
        PairedDifference.of([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="same number"):
        PairedDifference.of([], [])
    with pytest.raises(ValueError, match="finite"):
        PairedDifference.of([1.0, float("nan")], [1.0, 2.0])


def test_paired_columns_skip_the_reference_and_missing_columns():
    scores = {"a": {"psnr": [1.0, 2.0], "bone": [1.0, 1.0]},
              "b": {"psnr": [2.0, 3.0], "bone": None},
              "c": {"psnr": [0.0, 2.0], "bone": [2.0, 2.0]}}
    out = paired_columns(scores, "a")
    assert list(out) == ["b", "c"]
    assert out["b"]["bone"] is None and out["b"]["psnr"].mean == 1.0 and out["b"]["psnr"].wins == 2
    assert out["c"]["psnr"].losses == 1 and out["c"]["psnr"].ties == 1 and out["c"]["bone"].mean == 1.0
    with pytest.raises(ValueError, match="reference model 'z'"):
        paired_columns(scores, "z")
