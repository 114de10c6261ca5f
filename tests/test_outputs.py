"""The output rule (xraysyn.outputs): refuse earlier results unless overwrite, stage, move into place
as a whole; a failure at any point, the final renames included, leaves the earlier results as they were."""

import os

import pytest

from xraysyn.outputs import (
    STAGING_SUFFIX,
    OutputExistsError,
    check_output_files,
    staged_output_files,
    staged_output_folder,
)


def _contents(folder):
    return {str(p.relative_to(folder)): (p.read_text() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def _fail_on_replace_number(monkeypatch, number, when=lambda src, dst: True):
    """Make the ``number``-th matching os.replace call raise (1-based), as a full disk or a kill would."""
    real_replace, calls = os.replace, []

    def replace(src, dst):
        if when(src, dst):
            calls.append((src, dst))
            if len(calls) == number:
                raise OSError(5, "Input/output error", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)


# ------------------------------------------------------------------------------ a folder of results
def test_folder_is_replaced_as_a_whole(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "view_007.npy").write_text("old")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        with staged_output_folder(out, overwrite=False):
            pass
    with staged_output_folder(out, overwrite=True) as staging:
        (staging / "view_000.npy").write_text("new")
    assert _contents(tmp_path) == {"run": None, "run/view_000.npy": "new"}


@pytest.mark.parametrize("error", [RuntimeError("mid-run"), KeyboardInterrupt()])
def test_folder_failure_inside_the_run_keeps_the_earlier_results(tmp_path, error):
    out = tmp_path / "run"
    out.mkdir()
    (out / "a.txt").write_text("old")
    with pytest.raises(type(error)):
        with staged_output_folder(out, overwrite=True) as staging:
            (staging / "a.txt").write_text("half")
            raise error
    assert _contents(tmp_path) == {"run": None, "run/a.txt": "old"}


def test_folder_failing_final_rename_puts_the_earlier_results_back(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "a.txt").write_text("old")
    _fail_on_replace_number(monkeypatch, 1, when=lambda src, dst: str(src).endswith(STAGING_SUFFIX))
    with pytest.raises(OSError, match="Input/output"):
        with staged_output_folder(out, overwrite=True) as staging:
            (staging / "a.txt").write_text("new")
    assert _contents(tmp_path) == {"run": None, "run/a.txt": "old"}


# ------------------------------------------------------------------------------ a set of loose files
def _earlier_run(tmp_path):
    (tmp_path / "c_000.npy").write_text("old 0")
    (tmp_path / "c_001.npy").write_text("old 1")
    (tmp_path / "c_002.npy").write_text("old 2")  # stale: the new run writes two views
    (tmp_path / "other.txt").write_text("not ours")
    return [tmp_path / "c_000.npy", tmp_path / "c_001.npy"], [tmp_path / "c_002.npy"]


def test_files_replace_the_earlier_set_and_its_stale_members(tmp_path):
    paths, stale = _earlier_run(tmp_path)
    with pytest.raises(OutputExistsError, match="3 existing file"):
        check_output_files(paths, stale, overwrite=False)
    with staged_output_files(paths, stale, overwrite=True) as staged:
        for i, tmp in enumerate(staged):
            tmp.write_text(f"new {i}")
    assert _contents(tmp_path) == {"c_000.npy": "new 0", "c_001.npy": "new 1", "other.txt": "not ours"}


@pytest.mark.parametrize("failing_rename", [1, 2, 3, 4, 5])
def test_files_failing_at_any_rename_leave_the_earlier_set_exactly(tmp_path, monkeypatch, failing_rename):
    """Renames: 3 earlier files moved aside, then 2 new ones moved in; any of the 5 may fail."""
    paths, stale = _earlier_run(tmp_path)
    before = _contents(tmp_path)
    _fail_on_replace_number(monkeypatch, failing_rename)
    with pytest.raises(OSError, match="Input/output"):
        with staged_output_files(paths, stale, overwrite=True) as staged:
            for tmp in staged:
                tmp.write_text("new")
    assert _contents(tmp_path) == before


def test_files_failure_inside_the_run_changes_nothing(tmp_path):
    paths, stale = _earlier_run(tmp_path)
    before = _contents(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with staged_output_files(paths, stale, overwrite=True) as staged:
            staged[0].write_text("new")
            raise KeyboardInterrupt
    assert _contents(tmp_path) == before


def test_a_folder_among_the_names_is_refused_before_anything_moves(tmp_path):
    paths, _ = _earlier_run(tmp_path)
    (tmp_path / "c_007.npy").mkdir()  # a folder that matches the stale pattern is not ours to delete
    with pytest.raises(IsADirectoryError, match="c_007.npy"):
        check_output_files(paths, [tmp_path / "c_007.npy"], overwrite=True)
    assert (tmp_path / "c_007.npy").is_dir()
