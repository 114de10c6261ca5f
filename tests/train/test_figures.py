"""xraysyn.train.figures: PNGs written atomically, readable, of plausible size; bad inputs refused."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from xraysyn.train import figures
from xraysyn.train.figures import (
    FIGURE_DPI,
    PANEL_INCHES,
    FigureInputError,
    moving_average,
    read_metrics_csv,
    robust_grey_range,
    save_sample_grid,
    save_training_curves,
)

_RNG = np.random.default_rng(0)


def _rows():
    return [
        ("case 0", [("input", _RNG.random((16, 16))), ("predicted T", _RNG.random((16, 16))),
                    ("true T", torch.rand(16, 16)), ("CT slice", _RNG.random((12, 20)))]),
        ("bone", [("mask", (_RNG.random((16, 16)) > 0.5).astype(np.float32))]),
    ]


def _write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _metrics_csv(path, steps=30, validate_every=10):
    header = ["step", "loss_total", "loss_ct", "lr", "s_per_step", "val_psnr_T", "val_psnr_Tprime", "val_ssim_T",
              "val_dice_bone"]
    rows = []
    for step in range(1, steps + 1):
        validated = step % validate_every == 0
        extra = [20 + math.log(step), 18 + math.log(step), 0.5 + step / 100, 0.7] if validated else ["", "", "", ""]
        rows.append([step, 1 / math.sqrt(step), 0.5 / step, 1e-4, 0.2] + extra)
    return _write_csv(path, header, rows)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def test_robust_grey_range_is_the_1_and_99_percentiles():
    image = np.linspace(0.0, 100.0, 1001)[None, :]
    low, high = robust_grey_range(image)
    assert math.isclose(low, 1.0, abs_tol=1e-9) and math.isclose(high, 99.0, abs_tol=1e-9)
    spiked = image.copy()
    spiked[0, 0] = 1e9  # one hot pixel does not move the window
    assert robust_grey_range(spiked)[1] < 100
    assert robust_grey_range(np.full((3, 3), 2.0)) == (1.5, 2.5)
    assert robust_grey_range(np.full((3, 3), np.nan)) == (0.0, 1.0)
    # Several images share one window.
    assert robust_grey_range(np.zeros((10, 10)), np.ones((10, 10)))[1] == 1.0


def test_moving_average_closed_form():
    np.testing.assert_allclose(moving_average(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(moving_average(np.arange(5.0), 1), np.arange(5.0))
    with pytest.raises(FigureInputError, match="window"):
        moving_average(np.arange(3.0), 0)


# ------------------------------------------------------------------------------------------
# sample grid
# ------------------------------------------------------------------------------------------


def test_sample_grid_writes_a_readable_png_of_plausible_size(tmp_path):
    path = save_sample_grid(tmp_path / "samples" / "step_000010.png", _rows(), title="step 10")
    assert path == tmp_path / "samples" / "step_000010.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    panel = PANEL_INCHES * FIGURE_DPI
    assert 3.5 * panel <= width <= 5 * panel  # four panels in the widest row
    assert 1.5 * panel <= height <= 3 * panel  # two rows
    assert _leftovers(path.parent) == []


def test_sample_grid_gives_each_panel_its_own_grey_range(tmp_path, monkeypatch):
    # Two panels: the same ramp at very different scales; each is windowed by its own percentiles.
    ramp = np.tile(np.linspace(0, 100, 1001), (4, 1))
    drawn = []
    original = figures._save

    def keep_figure(figure, target):
        drawn.append(figure)
        return original(figure, target)

    monkeypatch.setattr(figures, "_save", keep_figure)
    save_sample_grid(tmp_path / "g.png", [("row", [("small", ramp), ("large", 1000 * ramp + 5)]),
                                          ("short", [("one", ramp)])])
    axes = drawn[0].axes
    windows = [ax.images[0].get_clim() for ax in axes if ax.images]
    np.testing.assert_allclose(windows, [(1, 99), (1005, 99005), (1, 99)], rtol=1e-12)
    titles = [ax.get_title() for ax in axes]
    assert titles == ["small", "large", "one", ""]  # the missing panel of the short row is blank
    assert not axes[3].axison
    assert [ax.get_ylabel() for ax in (axes[0], axes[2])] == ["row", "short"]


def test_sample_grid_accepts_non_finite_and_constant_panels(tmp_path):
    rows = [("odd", [("nan", np.full((8, 8), np.nan)), ("constant", np.ones((8, 8))),
                     ("inf", np.where(np.eye(8) > 0, np.inf, 0.0))])]
    path = save_sample_grid(tmp_path / "odd.png", rows)
    with Image.open(path) as image:
        image.load()


@pytest.mark.parametrize("rows, match", [
    ([], "rows is empty"),
    ("abc", "rows must be a list"),
    ([("row", [])], r"rows\[0\] \('row'\) must have a non-empty list"),
    ([("row",)], r"rows\[0\] must be a \(label, panels\) pair"),
    ([(3, [("p", np.zeros((4, 4)))])], r"rows\[0\] label must be a str"),
    ([("row", [("p", np.zeros((4, 4, 3)))])], r"must be a 2-D array \(rows, cols\), got shape \(4, 4, 3\)"),
    ([("row", [("p", np.zeros((0, 4)))])], "is empty"),
    ([("row", [("p", "not an image")])], "must be a 2-D numeric array"),
    ([("row", [(None, np.zeros((4, 4)))])], "title must be a str"),
    ([("a", [("p", np.zeros((4, 4)))]), ("b", [("p", np.zeros(4))])], r"rows\[1\] \('b'\) panel 0"),
])
def test_sample_grid_bad_rows_raise_and_write_nothing(tmp_path, rows, match):
    with pytest.raises(FigureInputError, match=match):
        save_sample_grid(tmp_path / "out" / "grid.png", rows)
    assert not (tmp_path / "out").exists()


def test_sample_grid_bad_path_and_title(tmp_path):
    with pytest.raises(FigureInputError, match="must end in .png"):
        save_sample_grid(tmp_path / "grid.jpg", _rows())
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(FigureInputError, match="is a folder"):
        save_sample_grid(tmp_path / "folder.png", _rows())
    with pytest.raises(FigureInputError, match="title must be a str"):
        save_sample_grid(tmp_path / "grid.png", _rows(), title=3)
    assert not (tmp_path / "grid.png").exists() and not (tmp_path / "grid.jpg").exists()


def test_a_failing_render_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = save_sample_grid(tmp_path / "grid.png", _rows())
    before = path.read_bytes()

    def broken_save(figure, target):
        def write(tmp):
            tmp.write_bytes(b"\x89PNG partial")
            raise RuntimeError("disk full")
        return figures.atomic_write(target, write, suffix=".png")

    monkeypatch.setattr(figures, "_save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_sample_grid(path, _rows())
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------
# training curves
# ------------------------------------------------------------------------------------------


def test_read_metrics_csv_parses_empty_validation_cells_as_nan(tmp_path):
    table = read_metrics_csv(_metrics_csv(tmp_path / "metrics.csv"))
    assert table["step"].tolist() == list(range(1, 31))
    assert np.isnan(table["val_psnr_T"][0]) and math.isclose(table["val_psnr_T"][9], 20 + math.log(10))
    assert np.isfinite(table["val_psnr_T"]).sum() == 3


def test_training_curves_png_written(tmp_path):
    path = save_training_curves(tmp_path / "curves.png", _metrics_csv(tmp_path / "metrics.csv"))
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    panel_width, panel_height = (side * FIGURE_DPI for side in figures.CURVE_PANEL_INCHES)
    assert math.isclose(width, 3 * panel_width, rel_tol=0.1)  # losses, PSNR, SSIM/Dice
    assert math.isclose(height, panel_height, rel_tol=0.1)
    assert _leftovers(tmp_path) == []


def test_training_curves_chosen_columns_and_no_validation_yet(tmp_path):
    source = _metrics_csv(tmp_path / "metrics.csv", steps=5, validate_every=100)  # no validation row yet
    path = save_training_curves(tmp_path / "losses.png", source)
    with Image.open(path) as image:
        width = image.size[0]
    assert math.isclose(width, figures.CURVE_PANEL_INCHES[0] * FIGURE_DPI, rel_tol=0.1)  # loss panel only
    save_training_curves(tmp_path / "chosen.png", source, loss_columns=["loss_ct"], validation_columns=[])


def test_training_curves_non_positive_losses_use_a_linear_axis(tmp_path):
    source = _write_csv(tmp_path / "m.csv", ["step", "loss_gan"], [[1, -0.5], [2, 0.0], [3, 0.25]])
    save_training_curves(tmp_path / "c.png", source)


@pytest.mark.parametrize("content, match", [
    ("", "is empty"),
    ("step,loss_total\n", "header but no data rows"),
    ("iteration,loss_total\n1,0.5\n", "has no 'step' column"),
    ("step,loss_total\n1,0.5\n2\n", "line 3: 1 cells, the header has 2"),
    ("step,loss_total\n1,abc\n", "line 2 column 'loss_total': 'abc' is not a number"),
    ("step,loss_total\n,0.5\n", "line 2: 'step' is empty"),
    ("step,loss,loss\n1,2,3\n", "duplicate columns"),
    ("step,lr\n1,0.001\n", "no loss or validation column with a value"),
    ("step,loss_total,val_psnr\n1,,\n", "no loss or validation column with a value"),
])
def test_training_curves_bad_csv_raises_and_writes_nothing(tmp_path, content, match):
    source = tmp_path / "metrics.csv"
    source.write_text(content, encoding="utf-8")
    with pytest.raises(FigureInputError, match=match):
        save_training_curves(tmp_path / "out" / "curves.png", source)
    assert not (tmp_path / "out").exists()


def test_training_curves_bad_arguments(tmp_path):
    source = _metrics_csv(tmp_path / "metrics.csv")
    with pytest.raises(FigureInputError, match="does not exist"):
        save_training_curves(tmp_path / "c.png", tmp_path / "missing.csv")
    with pytest.raises(FigureInputError, match=r"loss_columns \['loss_gan'\] not in the metrics CSV"):
        save_training_curves(tmp_path / "c.png", source, loss_columns=["loss_gan"])
    with pytest.raises(FigureInputError, match="validation_columns must be a list"):
        save_training_curves(tmp_path / "c.png", source, validation_columns="val_psnr_T")
    with pytest.raises(FigureInputError, match="names a column twice"):
        save_training_curves(tmp_path / "c.png", source, loss_columns=["loss_ct", "loss_ct"])
    with pytest.raises(FigureInputError, match="must end in .png"):
        save_training_curves(tmp_path / "c.pdf", source)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]
