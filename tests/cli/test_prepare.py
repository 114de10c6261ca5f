"""``xraysyn prepare ct`` end to end on a temporary tree, resumability, and ``xraysyn data bone-mask``."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
from support.dicom_series import write_axial_series
from typer.testing import CliRunner

from xraysyn.cli import app
from xraysyn.data.prepare_ct import find_ct_inputs
from xraysyn.data.shards import read_shard

AIR_HU, TISSUE_HU, BONE_HU = -1000.0, 40.0, 1200.0


def _slices(count=8, rows=24, cols=24) -> np.ndarray:
    """Axial slices (rows, cols) in HU: an elliptic body with a bone rod at rows 15-17, cols 11-13."""
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    one = np.full((rows, cols), AIR_HU)
    one[((r - 12) / 9) ** 2 + ((c - 12) / 10) ** 2 <= 1] = TISSUE_HU
    one[15:18, 11:14] = BONE_HU
    return np.repeat(one[None], count, axis=0)


def _volume(shape=(20, 20, 12)):
    i, j, _ = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    hu = np.full(shape, AIR_HU, np.float32)
    hu[((i - 10) / 8) ** 2 + ((j - 10) / 7) ** 2 <= 1] = TISSUE_HU
    bone = ((i - 10) ** 2 + (j - 12) ** 2 <= 4)
    hu[bone] = BONE_HU
    return hu, bone


def _tree(root):
    write_axial_series(root / "patientA" / "series1", _slices(), pixel_spacing=(2.0, 2.0), slice_step=2.0)
    write_axial_series(root / "patientB" / "thick", _slices(count=4), pixel_spacing=(2.0, 2.0), slice_step=5.0)
    broken = write_axial_series(root / "patientC" / "broken", _slices(count=4), pixel_spacing=(2.0, 2.0), slice_step=2.0)
    broken[1].write_bytes(broken[1].read_bytes()[:300])
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    hu, bone = _volume()
    (root / "vols").mkdir()
    nib.save(nib.Nifti1Image(hu, affine), root / "vols" / "ct.nii.gz")
    nib.save(nib.Nifti1Image(bone.astype(np.uint8), affine), root / "vols" / "ct_mask.nii.gz")
    (root / "seg").mkdir()
    labels = np.where(bone, 40, 0).astype(np.uint8)  # 40 = vertebrae_T5 below
    nib.save(nib.Nifti1Image(hu, affine), root / "seg" / "cxr.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), root / "seg" / "mask.nii.gz")
    (root / "seg" / "structures.csv").write_text("group,original_idx,structure,id\nvertebrae,16,vertebrae_T5,40\n")


def test_discovery_pairs_label_maps(tmp_path):
    _tree(tmp_path)
    found = {str(item.path.relative_to(tmp_path)): item.labels for item in find_ct_inputs(tmp_path)}
    assert set(found) == {"patientA/series1", "patientB/thick", "patientC/broken", "vols/ct.nii.gz", "seg/cxr.nii.gz"}
    assert found["vols/ct.nii.gz"].name == "ct_mask.nii.gz"
    assert found["seg/cxr.nii.gz"].name == "mask.nii.gz"


def test_prepare_ct_end_to_end_and_resume(tmp_path):
    _tree(tmp_path / "in")
    runner = CliRunner()
    result = runner.invoke(app, ["prepare", "ct", str(tmp_path / "in"), str(tmp_path / "out"), "--size", "8"])
    assert result.exit_code == 1, result.output  # one input failed
    summary = json.loads((tmp_path / "out" / "prepare_summary.json").read_text())
    assert sorted(r["input"] for r in summary["processed"]) == ["patientA/series1", "seg/cxr.nii.gz", "vols/ct.nii.gz"]
    assert [r["input"] for r in summary["skipped"]] == ["patientB/thick"]
    assert "5 mm > 2.5 mm" in summary["skipped"][0]["reason"]
    assert [r["input"] for r in summary["failed"]] == ["patientC/broken"]
    assert "truncated" in summary["failed"][0]["reason"]
    assert "skipped" in result.output and "5 mm > 2.5 mm" in result.output

    shards = sorted(p.name for p in (tmp_path / "out").glob("*.npz"))
    assert shards == ["patientA__series1.npz", "seg__cxr.npz", "vols__ct.npz"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files
    methods = {}
    for name in shards:
        shard = read_shard(tmp_path / "out" / name)
        assert shard.hu.shape == (8, 8, 8) and shard.bone.shape == (8, 8, 8)
        assert shard.bone.any() and shard.hu[shard.bone].min() > 300  # bone lands on bright voxels
        methods[name] = shard.meta["bone_mask_method"]
    assert methods == {"patientA__series1.npz": "threshold", "seg__cxr.npz": "labels", "vols__ct.npz": "mask file"}

    # resume: existing outputs are skipped, not rewritten
    before = (tmp_path / "out" / "vols__ct.npz").stat().st_mtime_ns
    again = runner.invoke(app, ["prepare", "ct", str(tmp_path / "in"), str(tmp_path / "out"), "--size", "8"])
    summary = json.loads((tmp_path / "out" / "prepare_summary.json").read_text())
    assert summary["processed"] == [] and len(summary["failed"]) == 1
    assert sum("exists" in r["reason"] for r in summary["skipped"]) == 3
    assert (tmp_path / "out" / "vols__ct.npz").stat().st_mtime_ns == before
    assert again.exit_code == 1


def test_prepare_missing_input_is_one_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["prepare", "ct", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "does not exist" in result.output
    assert not (tmp_path / "out").exists()


def test_bone_mask_command_prints_dice(tmp_path):
    _tree(tmp_path)
    out = tmp_path / "bone.nii.gz"
    result = CliRunner().invoke(
        app, ["data", "bone-mask", str(tmp_path / "seg" / "cxr.nii.gz"), str(out), "--labels", str(tmp_path / "seg" / "mask.nii.gz")]
    )
    assert result.exit_code == 0, result.output
    dice_value = float(result.output.split("=")[1].split()[0])
    assert 0.9 < dice_value <= 1.0  # a solid 1200 HU rod: threshold and labels agree
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj).astype(bool), _volume()[1])
