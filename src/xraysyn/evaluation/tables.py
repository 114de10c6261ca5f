"""Result tables as Markdown (for people) and CSV (for programs), from rows of dicts.

A table is a list of rows (``dict`` of column key → value) and an ordered list of :class:`Column` (which
key, its Markdown header, its number format). Cell values may be

* a number — formatted with the column's format spec in Markdown, written in full precision in CSV;
* a :class:`MeanStd` — ``"26.41 ± 1.20"`` in Markdown, two CSV columns ``<key>_mean`` and ``<key>_std``;
* a string — written as is;
* ``None`` or NaN — an empty cell (e.g. a metric a model does not have).

Only the columns named are written, in their order; keys a row lacks are empty cells. Files are written
atomically (:func:`xraysyn.atomic.atomic_write`).
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["Column", "MeanStd", "TableError", "format_cell", "markdown_table", "markdown_document", "csv_text",
           "write_markdown", "write_csv", "PLUS_MINUS"]

#: Separator of a mean and its standard deviation in a Markdown cell.
PLUS_MINUS = " ± "
#: Suffixes of the two CSV columns of a :class:`MeanStd` cell.
MEAN_SUFFIX, STD_SUFFIX = "_mean", "_std"


class TableError(ValueError):
    """A malformed table: bad columns, rows or cell values."""


@dataclass(frozen=True)
class MeanStd:
    """A mean and its standard deviation (``std`` ``None`` when undefined, e.g. over a single value)."""

    mean: float
    std: float | None = None

    @classmethod
    def of(cls, values: Iterable[float]) -> MeanStd | None:
        """The mean and sample standard deviation (n − 1) of finite-or-not values; ``None`` for no values, ``std``
        ``None`` for one value."""
        values = [float(v) for v in values]
        if not values:
            return None
        mean = math.fsum(values) / len(values)
        if len(values) < 2:
            return cls(mean, None)
        variance = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
        return cls(mean, math.sqrt(variance))

    def to_json(self) -> dict:
        """``{"mean": ..., "std": ...}`` with NaN/inf as ``None`` (valid JSON)."""
        return {"mean": _finite_or_none(self.mean), "std": _finite_or_none(self.std)}


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass(frozen=True)
class Column:
    """One column: the row key it shows, its Markdown header (default: the key) and its format spec for
    numbers (:func:`format`, e.g. ``".2f"``; default ``".4g"``)."""

    key: str
    header: str | None = None
    format: str = ".4g"

    def __post_init__(self):
        if not isinstance(self.key, str) or not self.key:
            raise TableError(f"a column key must be a non-empty str, got {self.key!r}")
        try:
            format(1.0, self.format)
        except (TypeError, ValueError):
            raise TableError(f"column {self.key!r}: {self.format!r} is not a number format spec") from None

    @property
    def title(self) -> str:
        return self.header if self.header is not None else self.key


def _is_empty(value) -> bool:
    return value is None or (isinstance(value, Real) and not isinstance(value, bool) and math.isnan(value))


def format_cell(value, spec: str = ".4g") -> str:
    """The Markdown text of one cell (see the module docstring); NaN and ``None`` give ``""``."""
    if _is_empty(value):
        return ""
    if isinstance(value, MeanStd):
        if _is_empty(value.mean):
            return ""
        mean = format(value.mean, spec)
        return mean if _is_empty(value.std) else f"{mean}{PLUS_MINUS}{format(value.std, spec)}"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Real):
        return format(float(value), spec)
    raise TableError(f"a cell must be a number, a MeanStd, a str or None, got {type(value).__name__}")


def _check_table(rows, columns) -> tuple[list[dict], list[Column]]:
    columns = list(columns)
    if not columns or not all(isinstance(c, Column) for c in columns):
        raise TableError("columns must be a non-empty sequence of Column")
    keys = [c.key for c in columns]
    if len(set(keys)) != len(keys):
        raise TableError(f"column keys must be unique, got {keys}")
    rows = list(rows)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TableError(f"row {i} must be a dict of column key -> value, got {type(row).__name__}")
    return rows, columns


def _markdown_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict], columns: Sequence[Column]) -> str:
    """A GitHub-flavoured Markdown table (header, separator, one line per row), without a final newline."""
    rows, columns = _check_table(rows, columns)
    lines = ["| " + " | ".join(_markdown_escape(c.title) for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = [_markdown_escape(format_cell(row.get(c.key), c.format)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_document(sections: Sequence[tuple[str | None, Sequence[dict], Sequence[Column]]], *,
                      title: str | None = None, notes: Sequence[str] = ()) -> str:
    """Several tables in one Markdown text: an optional ``# title``, then per section an optional ``## heading``
    and its table, then the ``notes`` as paragraphs; ends with a newline."""
    parts = [f"# {title}"] if title else []
    for heading, rows, columns in sections:
        if heading:
            parts.append(f"## {heading}")
        parts.append(markdown_table(rows, columns))
    parts.extend(notes)
    return "\n\n".join(parts) + "\n"


def _csv_values(row: dict, columns: list[Column], mean_std_keys: set[str]) -> list:
    values = []
    for column in columns:
        value = row.get(column.key)
        if column.key in mean_std_keys:
            pair = value if isinstance(value, MeanStd) else MeanStd(math.nan, None) if _is_empty(value) else None
            if pair is None:
                raise TableError(f"column {column.key!r} mixes MeanStd and other values")
            values.extend([_csv_number(pair.mean), _csv_number(pair.std)])
        elif isinstance(value, MeanStd):
            raise TableError(f"column {column.key!r} mixes MeanStd and other values")
        else:
            values.append(_csv_number(value) if not isinstance(value, str) else value)
    return values


def _csv_number(value) -> str:
    if _is_empty(value):
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        return repr(float(value))
    raise TableError(f"a cell must be a number, a MeanStd, a str or None, got {type(value).__name__}")


def csv_text(rows: Sequence[dict], columns: Sequence[Column]) -> str:
    """The table as CSV text: a header of column keys (a :class:`MeanStd` column becomes ``<key>_mean`` and
    ``<key>_std``), numbers in full precision, empty cells for ``None`` / NaN."""
    rows, columns = _check_table(rows, columns)
    mean_std_keys = {c.key for c in columns if any(isinstance(r.get(c.key), MeanStd) for r in rows)}
    header = []
    for column in columns:
        header.extend([column.key + MEAN_SUFFIX, column.key + STD_SUFFIX] if column.key in mean_std_keys
                      else [column.key])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(_csv_values(row, columns, mean_std_keys))
    return buffer.getvalue()


def _write_text(path: str | os.PathLike, text: str) -> Path:
    from xraysyn.atomic import atomic_write

    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def write_markdown(path: str | os.PathLike, sections: Sequence[tuple[str | None, Sequence[dict], Sequence[Column]]],
                   *, title: str | None = None, notes: Sequence[str] = ()) -> Path:
    """Write :func:`markdown_document` to ``path`` atomically; returns the path."""
    return _write_text(path, markdown_document(sections, title=title, notes=notes))


def write_csv(path: str | os.PathLike, rows: Sequence[dict], columns: Sequence[Column]) -> Path:
    """Write :func:`csv_text` to ``path`` atomically; returns the path."""
    return _write_text(path, csv_text(rows, columns))
