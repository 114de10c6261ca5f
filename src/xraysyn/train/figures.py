"""Training figures: a grid of sample images and the loss / validation curves, as PNG files.

Both writers validate everything first, render with matplotlib's Agg canvas (no pyplot, no global
backend switch, no display needed) and write through :func:`xraysyn.atomic.atomic_write`: the PNG
lands in a temporary file in the target folder and is moved into place with ``os.replace``, so a
bad input or a crash never leaves a partial file, and an earlier file of the same name stays as it
was until the new one is complete.

The metrics CSV read by :func:`save_training_curves` is the trainer's ``metrics.csv`` (issue 25):
a header row, one row per logged step, a ``step`` column, loss columns (``loss_*``), the learning
rate and timings, and validation columns (``val_*``) that are empty on rows without validation.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from xraysyn.atomic import atomic_write

__all__ = [
    "CURVE_PANEL_INCHES",
    "FIGURE_DPI",
    "FigureInputError",
    "LOSS_PREFIX",
    "PANEL_INCHES",
    "PANEL_PERCENTILES",
    "SMOOTHING_FRACTION",
    "STEP_COLUMN",
    "VALIDATION_PREFIX",
    "moving_average",
    "read_metrics_csv",
    "robust_grey_range",
    "save_sample_grid",
    "save_training_curves",
]

#: Grey window of each picture: the 1st and 99th percentile of its finite pixels, so a few
#: extreme pixels (a hot detector pixel, a metal voxel) do not flatten the rest to one grey.
PANEL_PERCENTILES = (1.0, 99.0)
#: Side of one sample panel in the grid, inches (at FIGURE_DPI: 180 pixels).
PANEL_INCHES = 1.8
#: Extra width for the row labels and height for the title, inches.
_LABEL_INCHES = 0.4
_TITLE_INCHES = 0.4
#: Resolution of every PNG written here, dots per inch.
FIGURE_DPI = 100
#: Size of one panel of the training-curve figure (width, height), inches.
CURVE_PANEL_INCHES = (5.0, 3.6)
#: Column-name prefixes picked by default for the loss and the validation panels.
LOSS_PREFIX = "loss_"
VALIDATION_PREFIX = "val_"
#: Name of the x-axis column of the metrics CSV.
STEP_COLUMN = "step"
#: Moving-average window of the smoothed loss curve, as a fraction of the logged rows (at least 1).
SMOOTHING_FRACTION = 0.05
#: Validation columns whose name contains this (case-insensitive) share the PSNR axis (dB).
_PSNR_MARKER = "psnr"
#: Colour of non-finite pixels in the sample grid, so NaN/inf outputs stand out.
_BAD_PIXEL_COLOUR = "tab:red"
_PANEL_TITLE_FONTSIZE = 7
_ROW_LABEL_FONTSIZE = 8
_RAW_CURVE_ALPHA = 0.3


class FigureInputError(ValueError):
    """A bad argument to a figure writer: the path, the rows or panels, or the metrics CSV."""


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------

def _check_png_path(path) -> Path:
    try:
        path = Path(path)
    except TypeError:
        raise FigureInputError(f"path must be a file path, got {path!r}") from None
    if path.suffix.lower() != ".png":
        raise FigureInputError(f"path must end in .png, got {str(path)!r}")
    if path.is_dir():
        raise FigureInputError(f"path {str(path)!r} is a folder, expected a .png file name")
    return path


def _as_image(value, where: str) -> np.ndarray:
    """A 2-D float64 array from a numpy array or a (CPU or CUDA) tensor; one clear error otherwise."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = value.detach().cpu().float().numpy()
    try:
        image = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise FigureInputError(f"{where} must be a 2-D numeric array, got {type(value).__name__}") from None
    if image.ndim != 2:
        raise FigureInputError(f"{where} must be a 2-D array (rows, cols), got shape {image.shape}")
    if image.size == 0:
        raise FigureInputError(f"{where} is empty, shape {image.shape}")
    return image


def robust_grey_range(*images: np.ndarray, percentiles: tuple[float, float] = PANEL_PERCENTILES
                      ) -> tuple[float, float]:
    """``(low, high)`` display window: the given percentiles of all finite pixels of ``images``.

    A constant (or single-valued) input gets a window of width 1 around its value (it shows mid
    grey); no finite pixel at all gives ``(0, 1)``.
    """
    finite = [np.asarray(image, dtype=np.float64) for image in images]
    finite = np.concatenate([image[np.isfinite(image)] for image in finite]) if finite else np.empty(0)
    if finite.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(finite, percentiles))
    if not high > low:
        return low - 0.5, low + 0.5
    return low, high


def _new_figure(width_inches: float, height_inches: float, layout: str | None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_inches, height_inches), dpi=FIGURE_DPI, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=FIGURE_DPI), suffix=".png")


# --------------------------------------------------------------------------------------------
# Sample grid
# --------------------------------------------------------------------------------------------

def _check_rows(rows) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise FigureInputError(f"rows must be a list of (label, panels) pairs, got {type(rows).__name__}")
    if len(rows) == 0:
        raise FigureInputError("rows is empty: give at least one (label, panels) row")
    checked = []
    for r, row in enumerate(rows):
        if not isinstance(row, Sequence) or isinstance(row, (str, bytes)) or len(row) != 2:
            raise FigureInputError(f"rows[{r}] must be a (label, panels) pair, got {row!r:.80}")
        label, panels = row
        if not isinstance(label, str):
            raise FigureInputError(f"rows[{r}] label must be a str, got {type(label).__name__}")
        if isinstance(panels, (str, bytes)) or not isinstance(panels, Sequence) or len(panels) == 0:
            raise FigureInputError(f"rows[{r}] ({label!r}) must have a non-empty list of (title, image) panels")
        checked_panels = []
        for p, panel in enumerate(panels):
            where = f"rows[{r}] ({label!r}) panel {p}"
            if not isinstance(panel, Sequence) or isinstance(panel, (str, bytes)) or len(panel) != 2:
                raise FigureInputError(f"{where} must be a (title, image) pair")
            panel_title, image = panel
            if not isinstance(panel_title, str):
                raise FigureInputError(f"{where} title must be a str, got {type(panel_title).__name__}")
            checked_panels.append((panel_title, _as_image(image, f"{where} ({panel_title!r}) image")))
        checked.append((label, checked_panels))
    return checked


def save_sample_grid(path, rows: list[tuple[str, list[tuple[str, np.ndarray]]]], *, title: str | None = None
                     ) -> Path:
    """Write a PNG grid of 2-D images, one labelled row per entry of ``rows``.

    Each panel gets its own grey window (the :data:`PANEL_PERCENTILES` of its finite pixels, see
    :func:`robust_grey_range`), no colourbar and no ticks; non-finite pixels are drawn in red.
    Rows may have different numbers of panels (the grid is as wide as the longest row).

    Args:
        path: the ``.png`` file to write; parent folders are created.
        rows: ``[(row_label, [(panel_title, image), ...]), ...]`` with each image a 2-D array
            ``(rows, cols)`` of any real values (numpy array or tensor, any units).
        title: optional figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`. Raises :class:`FigureInputError` before anything is
        written when an argument is malformed.
    """
    path = _check_png_path(path)
    checked = _check_rows(rows)
    if title is not None and not isinstance(title, str):
        raise FigureInputError(f"title must be a str or None, got {type(title).__name__}")
    import matplotlib

    n_rows = len(checked)
    n_cols = max(len(panels) for _, panels in checked)
    width = n_cols * PANEL_INCHES + _LABEL_INCHES
    height = n_rows * PANEL_INCHES + (_TITLE_INCHES if title else 0.0)
    figure = _new_figure(width, height, layout="compressed")
    colormap = matplotlib.colormaps["gray"].with_extremes(bad=_BAD_PIXEL_COLOUR)
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    for r, (label, panels) in enumerate(checked):
        for c in range(n_cols):
            ax = axes[r, c]
            if c >= len(panels):
                ax.set_axis_off()
                continue
            panel_title, image = panels[c]
            low, high = robust_grey_range(image)
            ax.imshow(np.ma.masked_invalid(image), cmap=colormap, vmin=low, vmax=high, interpolation="nearest")
            ax.set_title(panel_title, fontsize=_PANEL_TITLE_FONTSIZE)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=_ROW_LABEL_FONTSIZE)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


# --------------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------------

def read_metrics_csv(metrics_csv) -> dict[str, np.ndarray]:
    """Read a metrics CSV into ``{column: float64 array}`` (one entry per data row).

    Empty cells (e.g. validation columns on steps without validation) become NaN. The file must
    have a header row with a ``step`` column and at least one data row; every row must have as
    many cells as the header, every non-empty cell must be a number and every step finite.
    Raises :class:`FigureInputError` naming the file, line and column otherwise.
    """
    try:
        source = Path(metrics_csv)
    except TypeError:
        raise FigureInputError(f"metrics_csv must be a file path, got {metrics_csv!r}") from None
    if not source.is_file():
        raise FigureInputError(f"metrics_csv {str(source)!r} does not exist or is not a file")
    with open(source, newline="", encoding="utf-8") as handle:
        lines = [(number, row) for number, row in enumerate(csv.reader(handle), start=1) if row]
    if not lines:
        raise FigureInputError(f"metrics_csv {str(source)!r} is empty: expected a header row and data rows")
    _, header = lines[0]
    header = [name.strip() for name in header]
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise FigureInputError(f"metrics_csv {str(source)!r}: duplicate columns {duplicates}")
    if STEP_COLUMN not in header:
        raise FigureInputError(f"metrics_csv {str(source)!r} has no {STEP_COLUMN!r} column (header: {header})")
    if len(lines) == 1:
        raise FigureInputError(f"metrics_csv {str(source)!r} has a header but no data rows")
    values = np.full((len(lines) - 1, len(header)), np.nan)
    for i, (number, row) in enumerate(lines[1:]):
        if len(row) != len(header):
            raise FigureInputError(f"metrics_csv {str(source)!r} line {number}: {len(row)} cells, "
                                   f"the header has {len(header)}")
        for j, cell in enumerate(row):
            cell = cell.strip()
            if cell:
                try:
                    values[i, j] = float(cell)
                except ValueError:
                    raise FigureInputError(f"metrics_csv {str(source)!r} line {number} column {header[j]!r}: "
                                           f"{cell!r} is not a number") from None
    table = {name: values[:, j].copy() for j, name in enumerate(header)}
    bad_steps = np.flatnonzero(~np.isfinite(table[STEP_COLUMN]))
    if bad_steps.size:
        number = lines[1 + int(bad_steps[0])][0]
        raise FigureInputError(f"metrics_csv {str(source)!r} line {number}: {STEP_COLUMN!r} is empty or not finite")
    return table


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean of the last ``window`` values at every index (fewer at the start), float64."""
    if not isinstance(window, int) or window < 1:
        raise FigureInputError(f"window must be an integer >= 1, got {window!r}")
    values = np.asarray(values, dtype=np.float64)
    cumulative = np.concatenate(([0.0], np.cumsum(values)))
    index = np.arange(1, values.size + 1)
    start = np.maximum(index - window, 0)
    return (cumulative[index] - cumulative[start]) / (index - start)


def _select_columns(header: list[str], requested, prefix: str, argument: str) -> list[str]:
    if requested is None:
        return [name for name in header if name.startswith(prefix)]
    if isinstance(requested, str) or not isinstance(requested, Sequence):
        raise FigureInputError(f"{argument} must be a list of column names or None, got {requested!r}")
    if not all(isinstance(name, str) for name in requested):
        raise FigureInputError(f"{argument} must hold column names (str), got {list(requested)!r}")
    missing = [name for name in requested if name not in header]
    if missing:
        raise FigureInputError(f"{argument} {missing} not in the metrics CSV (columns: {header})")
    if len(set(requested)) != len(requested):
        raise FigureInputError(f"{argument} names a column twice: {list(requested)}")
    return list(requested)


def save_training_curves(path, metrics_csv, *, loss_columns: list[str] | None = None,
                         validation_columns: list[str] | None = None) -> Path:
    """Write a PNG of the training losses and the validation metrics against the step.

    Panels, left to right: the losses (log y axis; each as the raw values, faint, and a trailing
    moving average over :data:`SMOOTHING_FRACTION` of the rows, bold; a linear axis if some loss
    is ≤ 0), the validation PSNR columns (names containing ``psnr``, dB), and the other validation
    columns (SSIM, Dice, ...). Validation values are drawn at the rows that have them; a panel
    without any value is left out.

    Args:
        path: the ``.png`` file to write; parent folders are created.
        metrics_csv: the CSV file (see :func:`read_metrics_csv`).
        loss_columns: columns of the loss panel; default: those starting with ``loss_``.
        validation_columns: validation columns; default: those starting with ``val_``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`. Raises :class:`FigureInputError` before anything is
        written when the CSV or the columns are unusable or there is nothing to draw.
    """
    path = _check_png_path(path)
    table = read_metrics_csv(metrics_csv)
    header = list(table)
    losses = _select_columns(header, loss_columns, LOSS_PREFIX, "loss_columns")
    validation = _select_columns(header, validation_columns, VALIDATION_PREFIX, "validation_columns")
    losses = [name for name in losses if np.isfinite(table[name]).any()]
    validation = [name for name in validation if np.isfinite(table[name]).any()]
    if not losses and not validation:
        raise FigureInputError(f"metrics_csv {str(metrics_csv)!r}: no loss or validation column with a value "
                               f"to draw (columns: {header})")
    psnr_columns = [name for name in validation if _PSNR_MARKER in name.lower()]
    other_columns = [name for name in validation if name not in psnr_columns]
    panels = [kind for kind, names in (("loss", losses), ("psnr", psnr_columns), ("other", other_columns)) if names]

    step = table[STEP_COLUMN]
    width, height = CURVE_PANEL_INCHES
    figure = _new_figure(width * len(panels), height, layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, kind in zip(axes, panels):
        ax.set_xlabel(STEP_COLUMN)
        ax.grid(True, alpha=0.3)
        if kind == "loss":
            finite_values = np.concatenate([table[name][np.isfinite(table[name])] for name in losses])
            logarithmic = bool((finite_values > 0).all())
            for colour, name in zip(_colours(len(losses)), losses):
                keep = np.isfinite(table[name])
                x, y = step[keep], table[name][keep]
                window = max(1, int(math.ceil(SMOOTHING_FRACTION * y.size)))
                ax.plot(x, y, color=colour, linewidth=0.8, alpha=_RAW_CURVE_ALPHA)
                ax.plot(x, moving_average(y, window), color=colour, linewidth=1.6, label=name)
            if logarithmic:
                ax.set_yscale("log")
                ax.set_title("training losses (log scale)")
            else:
                ax.set_title("training losses (linear: some values <= 0)")
            ax.set_ylabel("loss")
        else:
            names = psnr_columns if kind == "psnr" else other_columns
            for colour, name in zip(_colours(len(names)), names):
                keep = np.isfinite(table[name])
                ax.plot(step[keep], table[name][keep], color=colour, marker="o", markersize=3, label=name)
            ax.set_title("validation PSNR" if kind == "psnr" else "validation metrics")
            ax.set_ylabel("dB" if kind == "psnr" else "value")
        ax.legend(fontsize=_ROW_LABEL_FONTSIZE)
    return _save(figure, path)


def _colours(count: int) -> list:
    import matplotlib

    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    return [cycle[i % len(cycle)] for i in range(count)]
