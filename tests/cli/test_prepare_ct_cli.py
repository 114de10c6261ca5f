"""``xraysyn prepare ct`` on the defects of issue 24 (1, 2, 7, 8) and the options of issue 25
(``--workers``, ``--shard``): exit status, the one error line, and what is (not) written."""

from __future__ import annotations

import json

import numpy as np
from support.dicom_series import write_axial_series
from typer.testing import CliRunner

from xraysyn.cli import app
from xraysyn.data.ct_io import write_nifti_array
from xraysyn.data.shards import read_shard

AIR_HU, TISSUE_HU, BONE_HU = -1000.0, 40.0, 1200.0


def _ct(path):
    i, j, _ = np.meshgrid(np.arange(16), np.arange(16), np.arange(8), indexing="ij")
    hu = np.full((16, 16, 8), AIR_HU, np.float32)
    hu[((i - 8) / 6) ** 2 + ((j - 8) / 5) ** 2 <= 1] = TISSUE_HU
    hu[(i - 8) ** 2 + (j - 8) ** 2 <= 2] = BONE_HU
    write_nifti_array(hu, np.diag([2.0, 2.0, 2.0, 1.0]), path)


def _run(*args):
    return CliRunner().invoke(app, ["prepare", "ct", *map(str, args)])


def _one_error_line(result):
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_name_collision_exits_2_naming_both_inputs(tmp_path):
    r, c = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    slices = np.where(((r - 8) / 6) ** 2 + ((c - 8) / 5) ** 2 <= 1, TISSUE_HU, AIR_HU)[None].repeat(6, axis=0)
    write_axial_series(tmp_path / "in" / "p" / "ct", slices, pixel_spacing=(2.0, 2.0), slice_step=2.0)
    _ct(tmp_path / "in" / "p" / "ct.nii.gz")
    result = _run(tmp_path / "in", tmp_path / "out", "--size", 8)
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert "'p/ct'" in line and "'p/ct.nii.gz'" in line and "p__ct.npz" in line
    assert not (tmp_path / "out").exists()


def test_resume_with_other_settings_exits_2_and_overwrite_redoes(tmp_path):
    _ct(tmp_path / "in" / "a.nii.gz")
    assert _run(tmp_path / "in", tmp_path / "out", "--size", 8, "--workers", 1).exit_code == 0
    before = (tmp_path / "out" / "a.npz").read_bytes()
    result = _run(tmp_path / "in", tmp_path / "out", "--size", 12, "--mode", "isotropic")
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert "size 8 -> 12" in line and "--overwrite" in line and "new output folder" in line
    assert (tmp_path / "out" / "a.npz").read_bytes() == before
    redo = _run(tmp_path / "in", tmp_path / "out", "--size", 12, "--mode", "isotropic", "--overwrite")
    assert redo.exit_code == 0, redo.output
    assert "redone" in redo.output and read_shard(tmp_path / "out" / "a.npz").hu.shape == (12, 12, 12)


def test_empty_shard_is_redone_not_resumed(tmp_path):
    _ct(tmp_path / "in" / "a.nii.gz")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.npz").write_bytes(b"")
    result = _run(tmp_path / "in", tmp_path / "out", "--size", 8)
    assert result.exit_code == 0, result.output
    assert "processed 1" in result.output and "unreadable" in result.output
    assert read_shard(tmp_path / "out" / "a.npz").hu.shape == (8, 8, 8)


def test_output_equal_to_or_inside_the_input_is_refused(tmp_path):
    _ct(tmp_path / "in" / "a.nii.gz")
    for out, message in ((tmp_path / "in", "is the input folder"), (tmp_path / "in" / "shards", "inside the input folder")):
        result = _run(tmp_path / "in", out, "--size", 8)
        assert result.exit_code == 2 and message in _one_error_line(result)
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["a.nii.gz"]


def test_unused_files_are_reported_and_no_input_exits_2(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.dcm").write_bytes(b"\0" * 200)
    (tmp_path / "in" / "nopreamble.dcm").write_bytes(b"not dicom at all" * 10)
    result = _run(tmp_path / "in", tmp_path / "out")
    assert result.exit_code == 2
    assert "2 file(s) looked at, none usable (2 '.dcm' file that is not readable as DICOM)" in _one_error_line(result)
    assert not (tmp_path / "out").exists()

    _ct(tmp_path / "in" / "a.nii.gz")
    ok = _run(tmp_path / "in", tmp_path / "out", "--size", 8)
    assert ok.exit_code == 0 and "not used: 2 of 3 files" in ok.output
    summary = json.loads((tmp_path / "out" / "prepare_summary.json").read_text())
    assert summary["unused_counts"] == {"'.dcm' file that is not readable as DICOM": 2}


def test_all_inputs_skipped_exits_2(tmp_path):
    (tmp_path / "in").mkdir()
    write_nifti_array(np.zeros((4, 4, 4), np.float32), np.diag([1.0, 1.0, 5.0, 1.0]), tmp_path / "in" / "thick.nii")
    result = _run(tmp_path / "in", tmp_path / "out", "--size", 8)
    assert result.exit_code == 2 and "none of the 1 CT inputs gave a shard" in _one_error_line(result)


def test_shard_jobs_split_the_tree_and_write_one_summary_each(tmp_path):
    for index in range(3):
        _ct(tmp_path / "in" / f"c{index}.nii.gz")
    outputs = [_run(tmp_path / "in", tmp_path / "out", "--size", 8, "--shard", f"{i}/2", "--workers", 1) for i in (1, 2)]
    assert [o.exit_code for o in outputs] == [0, 0]
    assert "processed 2" in outputs[0].output and "processed 1" in outputs[1].output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "c0.npz", "c1.npz", "c2.npz", "prepare_summary.shard-1-of-2.json", "prepare_summary.shard-2-of-2.json"]
    bad = _run(tmp_path / "in", tmp_path / "out2", "--shard", "0/2")
    assert bad.exit_code == 2 and "--shard" in _one_error_line(bad) and not (tmp_path / "out2").exists()
