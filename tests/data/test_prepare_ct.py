"""``prepare_ct_tree`` (issues 24 and 25): unique stable names, verified resume, refused folders,
every unused file reported, disjoint ``shard`` parts and ``workers`` that do not change results."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.dicom_series import write_axial_series

from xraysyn.data.ct_io import write_nifti_array
from xraysyn.data.prepare_ct import (
    SETTINGS_KEY,
    NoUsableInputError,
    output_names,
    parse_shard,
    prepare_ct_tree,
    scan_ct_tree,
    summary_name,
)
from xraysyn.data.shards import read_shard, write_shard
from xraysyn.outputs import OutputExistsError

AIR_HU, TISSUE_HU, BONE_HU = -1000.0, 40.0, 1200.0
SPACING_MM = 2.0
SIZE = 8


def _write_ct(path, shift=0):
    """A 16 x 16 x 8 NIfTI CT (2 mm voxels): a tissue ellipse with a bone rod; ``shift`` moves the rod."""
    i, j, _ = np.meshgrid(np.arange(16), np.arange(16), np.arange(8), indexing="ij")
    hu = np.full((16, 16, 8), AIR_HU, np.float32)
    hu[((i - 8) / 6) ** 2 + ((j - 8) / 5) ** 2 <= 1] = TISSUE_HU
    hu[(i - 8 - shift) ** 2 + (j - 8) ** 2 <= 2] = BONE_HU
    write_nifti_array(hu, np.diag([SPACING_MM] * 3 + [1.0]), path)


def _dicom_series(folder):
    r, c = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    one = np.full((16, 16), AIR_HU)
    one[((r - 8) / 6) ** 2 + ((c - 8) / 5) ** 2 <= 1] = TISSUE_HU
    one[7:10, 7:10] = BONE_HU
    write_axial_series(folder, np.repeat(one[None], 6, axis=0), pixel_spacing=(2.0, 2.0), slice_step=2.0)


def _snapshot(folder):
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_dicom_folder_and_file_of_one_name_are_refused_naming_both(tmp_path):
    _dicom_series(tmp_path / "in" / "p" / "ct")
    _write_ct(tmp_path / "in" / "p" / "ct.nii.gz")
    with pytest.raises(ValueError, match=r"'p/ct' and 'p/ct.nii.gz' would both be written to 'p__ct.npz'"):
        prepare_ct_tree(tmp_path / "in", tmp_path / "out", size=SIZE)
    assert not (tmp_path / "out").exists()


def test_separator_in_folder_names_is_refused_naming_both(tmp_path):
    _write_ct(tmp_path / "in" / "a" / "b" / "ct.nii.gz")
    _write_ct(tmp_path / "in" / "a__b" / "ct.nii.gz")
    with pytest.raises(ValueError, match=r"'a/b/ct.nii.gz' and 'a__b/ct.nii.gz'"):
        prepare_ct_tree(tmp_path / "in", tmp_path / "out", size=SIZE)
    # names differing only in case would collide on a case-insensitive disk
    scan = scan_ct_tree(tmp_path / "in")
    with pytest.raises(ValueError, match="would both be written"):
        output_names(tmp_path / "in", [scan.inputs[0], type(scan.inputs[0])(tmp_path / "in" / "A" / "b" / "CT.nii")])


def test_names_depend_on_the_input_alone(tmp_path):
    _write_ct(tmp_path / "in" / "x" / "ct.nii.gz")
    first = output_names(tmp_path / "in", scan_ct_tree(tmp_path / "in").inputs)
    _write_ct(tmp_path / "in" / "w" / "ct.nii.gz")
    _dicom_series(tmp_path / "in" / "y" / "series")
    second = dict(zip([str(i.path.relative_to(tmp_path / "in")) for i in scan_ct_tree(tmp_path / "in").inputs],
                      output_names(tmp_path / "in", scan_ct_tree(tmp_path / "in").inputs)))
    assert first == ["x__ct.npz"] and second["x/ct.nii.gz"] == "x__ct.npz" and second["y/series"] == "y__series.npz"


def _prepared(tmp_path, **kwargs):
    _write_ct(tmp_path / "in" / "a.nii.gz")
    _write_ct(tmp_path / "in" / "b.nii.gz", shift=2)
    return prepare_ct_tree(tmp_path / "in", tmp_path / "out", size=SIZE, **kwargs)


def test_shards_store_their_settings_and_resume_verifies_them(tmp_path):
    report = _prepared(tmp_path)
    assert [r["output"] for r in report.processed] == ["a.npz", "b.npz"]
    stored = read_shard(tmp_path / "out" / "a.npz").meta[SETTINGS_KEY]
    assert stored["size"] == SIZE and stored["mode"] == "stretch" and "preprocess_version" in stored
    again = prepare_ct_tree(tmp_path / "in", tmp_path / "out", size=SIZE)
    assert again.processed == [] and len(again.resumed) == 2

    before = _snapshot(tmp_path / "out")
    with pytest.raises(OutputExistsError, match=r"size 8 -> 12.*--overwrite"):
        prepare_ct_tree(tmp_path / "in", tmp_path / "out", size=12, mode="isotropic")
    assert _snapshot(tmp_path / "out") == before  # refused before any work

    redone = prepare_ct_tree(tmp_path / "in", tmp_path / "out", size=12, mode="isotropic", overwrite=True)
    assert len(redone.processed) == 2 and all("other settings" in r["reason"] for r in redone.processed)
    assert read_shard(tmp_path / "out" / "b.npz").hu.shape == (12, 12, 12)


@pytest.mark.parametrize("damage", ["empty", "truncated", "not a shard"])
def test_unreadable_shard_is_redone(tmp_path, damage):
    _prepared(tmp_path)
    target = tmp_path / "out" / "a.npz"
    good = read_shard(target)
    if damage == "empty":
        target.write_bytes(b"")
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:200])
    else:
        np.savez(target, something=np.zeros(3))
    report = prepare_ct_tree(tmp_path / "in", tmp_path / "out", size=SIZE)
    assert [r["input"] for r in report.processed] == ["a.nii.gz"]
    assert "unreadable" in report.processed[0]["reason"] and len(report.resumed) == 1
    np.testing.assert_array_equal(read_shard(target).hu, good.hu)


def test_old_or_foreign_shards_refuse_the_run(tmp_path):
    _prepared(tmp_path)
    legacy = read_shard(tmp_path / "out" / "a.npz")
    meta = {k: v for k, v in legacy.meta.items() if k != SETTINGS_KEY}
    write_shard(tmp_path / "out" / "a.npz", legacy.hu, legacy.bone, legacy.world_from_voxel, meta)
    with pytest.raises(OutputExistsError, match="older xraysyn"):
        prepare_ct_tree(tmp_path / "in", tmp_path / "out", size=SIZE)
    write_shard(tmp_path / "out" / "a.npz", legacy.hu, legacy.bone, legacy.world_from_voxel, legacy.meta)
    write_shard(tmp_path / "out" / "gone.npz", legacy.hu, legacy.bone, legacy.world_from_voxel, legacy.meta)
    with pytest.raises(OutputExistsError, match="gone.npz: a shard of no input"):
        prepare_ct_tree(tmp_path / "in", tmp_path / "out", size=SIZE)
    report = prepare_ct_tree(tmp_path / "in", tmp_path / "out", size=SIZE, overwrite=True)
    assert report.removed == ["gone.npz"] and not (tmp_path / "out" / "gone.npz").exists()


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_in_the_input_tree_is_refused(tmp_path, where):
    _write_ct(tmp_path / "in" / "a.nii.gz")
    out = tmp_path / "in" if where == "same" else tmp_path / "in" / "sub" / "out"
    before = _snapshot(tmp_path / "in")
    with pytest.raises(ValueError, match="is the input folder" if where == "same" else "inside the input folder"):
        prepare_ct_tree(tmp_path / "in", out, size=SIZE)
    assert _snapshot(tmp_path / "in") == before


def test_every_file_not_used_is_reported_with_its_reason(tmp_path):
    root = tmp_path / "in"
    _dicom_series(root / "p1" / "s1")
    (root / "p1" / "s1" / "annotation.xml").write_text("<x/>")
    _write_ct(root / "v" / "ct.nii.gz")
    _write_ct(root / "v" / "other_seg.nii.gz")  # a label map whose CT ('other') is missing
    (root / "junk").mkdir()
    (root / "junk" / "broken.dcm").write_bytes(b"\0" * 300)
    (root / "junk" / "README").write_text("notes")
    (root / "junk" / ".DS_Store").write_bytes(b"x")
    scan = scan_ct_tree(root)
    assert [str(i.path.relative_to(root)) for i in scan.inputs] == ["p1/s1", "v/ct.nii.gz"]
    assert {r["path"]: r["reason"] for r in scan.unused} == {
        "p1/s1/annotation.xml": "annotation or text file",
        "v/other_seg.nii.gz": "label map with no CT to pair with",
        "junk/broken.dcm": "'.dcm' file that is not readable as DICOM",
        "junk/README": "not a CT file (neither DICOM nor a volume format)",
        "junk/.DS_Store": "hidden file",
    }
    assert scan.files_seen == 6 + 1 + 2 + 3
    report = prepare_ct_tree(root, tmp_path / "out", size=SIZE)
    assert report.unused_counts["hidden file"] == 1 and len(report.unused_files) == 5


def test_a_tree_without_ct_is_refused_with_what_was_found(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "slice.dcm").write_bytes(b"garbage" * 40)
    (tmp_path / "in" / "notes.txt").write_text("x")
    with pytest.raises(NoUsableInputError, match=r"2 file\(s\) looked at, none usable \(1 '.dcm' file that is not "
                                                 r"readable as DICOM, 1 annotation or text file\)"):
        prepare_ct_tree(tmp_path / "in", tmp_path / "out", size=SIZE)
    assert not (tmp_path / "out").exists()


def test_shard_parts_are_disjoint_and_cover_the_tree(tmp_path):
    root = tmp_path / "in"
    for index in range(5):
        _write_ct(root / f"c{index}.nii.gz", shift=index % 3)
    parts = [prepare_ct_tree(root, tmp_path / "out", size=SIZE, shard=(i, 3)) for i in (1, 2, 3)]
    done = [[r["input"] for r in part.processed] for part in parts]
    assert sorted(sum(done, [])) == [f"c{i}.nii.gz" for i in range(5)]
    assert all(not set(a) & set(b) for a in done for b in done if a is not b)
    assert [p.inputs_total for p in parts] == [5, 5, 5]
    names = {summary_name((i, 3)) for i in (1, 2, 3)}
    assert len(names) == 3 and all((tmp_path / "out" / n).is_file() for n in names)
    assert json.loads((tmp_path / "out" / summary_name((2, 3))).read_text())["shard"] == "2/3"
    whole = prepare_ct_tree(root, tmp_path / "out", size=SIZE)  # a later full run resumes every part's shards
    assert len(whole.resumed) == 5
    for text in ("0/3", "4/3", "1/0", "x", "1/2/3"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(text)


def test_two_workers_give_the_results_of_one(tmp_path):
    root = tmp_path / "in"
    for index in range(3):
        _write_ct(root / f"c{index}.nii.gz", shift=index)
    (root / "thick").mkdir()
    write_nifti_array(np.zeros((4, 4, 4), np.float32), np.diag([1.0, 1.0, 5.0, 1.0]), root / "thick" / "ct.nii")
    one = prepare_ct_tree(root, tmp_path / "one", size=SIZE, workers=1)
    two = prepare_ct_tree(root, tmp_path / "two", size=SIZE, workers=2)
    for row in one.processed:
        a, b = read_shard(tmp_path / "one" / row["output"]), read_shard(tmp_path / "two" / row["output"])
        np.testing.assert_array_equal(a.hu, b.hu)
        np.testing.assert_array_equal(a.bone, b.bone)
        assert a.meta == b.meta
    summaries = [json.loads((tmp_path / name / "prepare_summary.json").read_text()) for name in ("one", "two")]
    for summary in summaries:
        summary["settings"].pop("output_dir")
    assert summaries[0] == summaries[1] and len(one.skipped) == 1
    with pytest.raises(ValueError, match="workers"):
        prepare_ct_tree(root, tmp_path / "three", size=SIZE, workers=0)
