"""``xraysyn evaluate simulated``: writes the results and prints Table 1; bad input exits 2 with one line and
writes nothing."""

import pytest
from typer.testing import CliRunner

from evaluation.test_simulated import write_all_exports, write_prior_export
from xraysyn.cli import app
from xraysyn.evaluation.simulated import OUTPUT_FILES, PAIRED_FILES


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return write_all_exports(tmp_path_factory.mktemp("exports"))


def _run(arguments):
    return CliRunner().invoke(app, ["evaluate", "simulated", *arguments])


def test_the_command_writes_the_results_and_prints_table1(exports, tmp_path):
    out = tmp_path / "results"
    models = [option for name, path in exports.items() for option in ("--model", f"{name}={path}")]
    result = _run(["--data", "phantom", *models, "--cases", "1", "--views", "2", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES + PAIRED_FILES)
    assert "# Table 1 (simulated)" in result.output and "| refiner |" in result.output
    assert (out / "table1.md").read_text(encoding="utf-8") in result.output
    again = _run(["--data", "phantom", *models[:2], "--cases", "1", "--views", "2", "--out", str(out),
                  "--no-progress", "--overwrite"])
    assert again.exit_code == 0, again.output
    assert "| refiner |" not in (out / "table1.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("arguments, message", [
    (["--model", "noequals"], "expected NAME=FILE"),
    (["--model", "a={prior}", "--model", "a={prior}"], "given twice"),
    (["--model", "a={missing}"], "does not exist"),
    (["--model", "a={prior}", "--cases", "0"], "--cases"),
    (["--model", "a={prior}", "--max-azimuth", "nan"], "--max-azimuth"),
    (["--model", "a={prior}", "--device", "tpu"], "--device"),
    (["--model", "a={refine}"], "evaluate real"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, arguments, message):
    prior = write_prior_export(tmp_path / "prior.pt")
    refine = tmp_path / "refine.pt"
    from evaluation.test_simulated import _refine_export

    _refine_export(refine)
    filled = [a.format(prior=prior, refine=refine, missing=tmp_path / "none.pt") for a in arguments]
    out = tmp_path / "out"
    result = _run(["--data", "phantom", *filled, "--out", str(out), "--no-progress"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not out.exists()


def test_a_missing_data_folder_or_results_folder_that_is_a_file_exit_2(tmp_path):
    prior = write_prior_export(tmp_path / "prior.pt")
    result = _run(["--data", str(tmp_path / "shards"), "--model", f"a={prior}", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--data" in result.output and not (tmp_path / "o").exists()
    (tmp_path / "file").write_text("x")
    result = _run(["--data", "phantom", "--model", f"a={prior}", "--out", str(tmp_path / "file")])
    assert result.exit_code == 2 and "not a folder" in result.output
