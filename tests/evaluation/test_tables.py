"""Result tables: Markdown cells and layout, CSV expansion of mean ± std, empty cells, errors, atomic files."""

import csv
import io
import math
import statistics

import pytest

from xraysyn.evaluation.tables import (
    Column,
    MeanStd,
    TableError,
    csv_text,
    format_cell,
    markdown_document,
    markdown_table,
    write_csv,
    write_markdown,
)


def test_mean_std_is_the_mean_and_the_sample_standard_deviation():
    values = [26.1, 27.3, 25.2, 28.9]
    pair = MeanStd.of(values)
    assert pair.mean == pytest.approx(statistics.fmean(values), rel=1e-15)
    assert pair.std == pytest.approx(statistics.stdev(values), rel=1e-14)
    assert MeanStd.of([3.0]) == MeanStd(3.0, None)
    assert MeanStd.of([]) is None
    assert MeanStd(math.nan, math.inf).to_json() == {"mean": None, "std": None}


@pytest.mark.parametrize("value, spec, text", [
    (MeanStd(26.4123, 1.2), ".2f", "26.41 ± 1.20"),
    (MeanStd(0.8312, None), ".3f", "0.831"),
    (3.14159, ".2f", "3.14"),
    (7, ".1f", "7.0"),
    ("3dpn", ".2f", "3dpn"),
    (None, ".2f", ""),
    (math.nan, ".2f", ""),
    (MeanStd(math.nan, 1.0), ".2f", ""),
])
def test_cells(value, spec, text):
    assert format_cell(value, spec) == text


def test_markdown_table_has_the_columns_in_order_and_empty_cells_for_missing_values():
    rows = [{"model": "3dpn", "a": MeanStd(1.0, 0.5), "b": 2.0}, {"model": "ref|x", "a": None}]
    text = markdown_table(rows, [Column("model"), Column("b", "B", ".1f"), Column("a", "A", ".2f")])
    assert text.splitlines() == ["| model | B | A |", "|---|---|---|", "| 3dpn | 2.0 | 1.00 ± 0.50 |",
                                 "| ref\\|x |  |  |"]


def test_markdown_document_has_title_headings_tables_and_notes():
    columns = [Column("x")]
    text = markdown_document([("PSNR", [{"x": 1.0}], columns), (None, [{"x": 2.0}], columns)], title="T",
                             notes=["a note"])
    assert text.startswith("# T\n\n## PSNR\n\n| x |") and text.endswith("a note\n")
    assert text.count("|---|") == 2


def test_csv_expands_mean_std_columns_and_keeps_full_precision():
    rows = [{"model": "3dpn", "psnr": MeanStd(26.123456789, 1.5), "n": 8},
            {"model": "ref", "psnr": None, "n": 8}]
    parsed = list(csv.reader(io.StringIO(csv_text(rows, [Column("model"), Column("psnr"), Column("n")]))))
    assert parsed == [["model", "psnr_mean", "psnr_std", "n"], ["3dpn", "26.123456789", "1.5", "8"],
                      ["ref", "", "", "8"]]


@pytest.mark.parametrize("rows, columns, match", [
    ([{"a": 1}], [], "non-empty"),
    ([{"a": 1}], [Column("a"), Column("a")], "unique"),
    ([[1]], [Column("a")], "row 0"),
    ([{"a": object()}], [Column("a")], "a cell must be"),
    ([{"a": MeanStd(1.0)}, {"a": 2.0}], [Column("a")], "mixes"),
])
def test_malformed_tables_raise_one_clear_error(rows, columns, match):
    with pytest.raises(TableError, match=match):
        csv_text(rows, columns)


def test_bad_columns_are_refused():
    with pytest.raises(TableError, match="format spec"):
        Column("a", format="%d")
    with pytest.raises(TableError, match="non-empty str"):
        Column("")


def test_writers_write_the_texts(tmp_path):
    rows, columns = [{"a": 1.25}], [Column("a", format=".1f")]
    assert write_csv(tmp_path / "t.csv", rows, columns).read_text(encoding="utf-8") == csv_text(rows, columns)
    md = write_markdown(tmp_path / "t.md", [(None, rows, columns)]).read_text(encoding="utf-8")
    assert md == markdown_document([(None, rows, columns)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.md"]
