"""`xraysyn synthesize` and `xraysyn suppress`: the files per input, the batch going on past bad inputs, DICOM."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from support.dicom_cr import IDENTIFIERS, write_cr
from support.tiny_xraysyn import refine_export, simulated_frontal, write_export
from xraysyn.cli import app
from xraysyn.cli.synthesize import parse_angles

runner = CliRunner()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    weights = write_export(refine_export(), root / "tiny.pt")
    good = root / "good"
    good.mkdir()
    frontal = simulated_frontal(96, seed=2)
    Image.fromarray((frontal * 65535).round().astype(np.uint16)).save(good / "chest.png")
    write_cr(good / "chest_cr.dcm", frontal, photometric="MONOCHROME1")
    bad = root / "bad"
    bad.mkdir()
    (bad / "notes.png").write_text("this is not an image")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(bad / "tiny.png")
    Image.fromarray(np.full((80, 80), 7, np.uint8)).save(bad / "constant.png")
    colour = np.random.default_rng(0).integers(0, 255, (80, 80, 3), dtype=np.uint8)
    Image.fromarray(colour, "RGB").save(bad / "photo.png")
    lateral = simulated_frontal(96, seed=2, azimuth_deg=90.0)
    Image.fromarray((lateral * 255).round().astype(np.uint8)).save(bad / "lateral.png")
    write_cr(bad / "ct_slice.dcm", frontal, extra={"Modality": "CT"})
    return root, weights, good, bad


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def test_parse_angles():
    assert parse_angles("-9:9:3", "--azimuth") == [-9.0, 0.0, 9.0]
    assert parse_angles("1,2.5", "--azimuth") == [1.0, 2.5] and parse_angles("4", "--azimuth") == [4.0]
    for text in ("a:b:c", "1:2:0", "nan", ""):
        with pytest.raises(ValueError, match="--azimuth must be"):
            parse_angles(text, "--azimuth")


def test_synthesize_writes_every_file_per_input(inputs, tmp_path):
    root, weights, good, _ = inputs
    out = tmp_path / "out"
    result = runner.invoke(app, ["synthesize", str(good), "--azimuth=-9:9:3", "--weights", str(weights),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["chest", "chest_cr", "summary.json"]
    files = {p.name for p in (out / "chest").iterdir()}
    for view in ("view_00_az-9.0_el+0.0", "view_01_az+0.0_el+0.0", "view_02_az+9.0_el+0.0"):
        assert {f"{view}.png", f"{view}.npy", f"un{view.replace('view', 'refined')}.png"} <= files
    assert {"sweep.gif", "figure.png", "ct.nii.gz", "bone_mask.nii.gz", "bone_thickness.npy", "tissue_thickness.npy",
            "bone_T.png", "tissue_T.png", "input_view.png", "synthesis.json"} <= files
    gif = Image.open(out / "chest" / "sweep.gif")
    assert gif.n_frames == 4  # forward and back: -9, 0, 9, 0
    assert np.load(out / "chest" / "bone_thickness.npy").shape == (3, 32, 32)
    import nibabel

    assert nibabel.load(out / "chest" / "ct.nii.gz").shape == (16, 16, 16)
    assert _summary(out)["failed"] == []


def test_a_batch_goes_on_past_bad_inputs(inputs, tmp_path):
    root, weights, good, bad = inputs
    out = tmp_path / "out"
    result = runner.invoke(app, ["synthesize", str(good / "chest.png"), str(bad), str(root / "missing.png"),
                                 "--azimuth", "0", "--weights", str(weights), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert sorted(p.name for p in out.iterdir()) == ["chest", "summary.json"]  # nothing for the failures
    failed = {item["input"].rsplit("/", 1)[-1]: item["error"] for item in _summary(out)["failed"]}
    assert set(failed) == {"notes.png", "tiny.png", "constant.png", "photo.png", "lateral.png", "ct_slice.dcm",
                           "missing.png"}
    assert "constant" in failed["constant.png"]
    assert "colour" in failed["photo.png"]
    assert "frontal" in failed["lateral.png"]
    assert "CT" in failed["ct_slice.dcm"]
    assert "does not exist" in failed["missing.png"]
    assert "at least" in failed["tiny.png"] or "pixels" in failed["tiny.png"]
    for name in failed:
        assert name in result.output


def test_only_bad_inputs_exit_2_and_bad_options_write_nothing(inputs, tmp_path):
    root, weights, _, bad = inputs
    result = runner.invoke(app, ["synthesize", str(bad / "photo.png"), "--weights", str(weights),
                                 "--out", str(tmp_path / "a")])
    assert result.exit_code == 2
    for args in (["--azimuth", "x"], ["--weights", str(root / "nope.pt")]):
        result = runner.invoke(app, ["synthesize", str(bad / "photo.png"), *args, "--out", str(tmp_path / "b")])
        assert result.exit_code == 2 and not (tmp_path / "b").exists(), result.output
    result = runner.invoke(app, ["suppress", str(bad / "photo.png"), "--strength", "2", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "--strength" in result.output and not (tmp_path / "c").exists()


def test_suppress_png_depth_and_dicom_keep_the_inputs_identifiers(inputs, tmp_path):
    import pydicom

    from xraysyn.data.radiograph import load_radiograph

    root, weights, good, _ = inputs
    out = tmp_path / "out"
    result = runner.invoke(app, ["suppress", str(good), "--dicom", "--weights", str(weights), "--out", str(out)])
    assert result.exit_code == 0, result.output
    png = Image.open(out / "chest" / "suppressed.png")
    assert png.mode in ("I;16", "I") and png.size == (96, 96)  # 16-bit input → 16-bit output
    source = pydicom.dcmread(good / "chest_cr.dcm")
    for name in ("suppressed.dcm", "bone.dcm"):
        ds = pydicom.dcmread(out / "chest_cr" / name)
        for keyword in ("PatientID", "StudyInstanceUID", "AccessionNumber"):
            assert getattr(ds, keyword) == IDENTIFIERS[keyword]
        assert ds.SOPInstanceUID != source.SOPInstanceUID and ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.ImageType[0] == "DERIVED" and ds.PhotometricInterpretation == "MONOCHROME1"
        assert [float(v) for v in ds.PixelSpacing] == [float(v) for v in source.PixelSpacing]
    assert load_radiograph(out / "chest_cr" / "suppressed.dcm").image.shape == (96, 96)


def test_suppress_at_strength_zero_writes_the_input(inputs, tmp_path):
    from xraysyn.data.radiograph import load_radiograph

    root, weights, good, _ = inputs
    out = tmp_path / "out"
    result = runner.invoke(app, ["suppress", str(good / "chest.png"), "--strength", "0", "--weights", str(weights),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = load_radiograph(out / "chest" / "suppressed.png").image
    original = load_radiograph(good / "chest.png").image
    np.testing.assert_allclose(written, original, atol=1 / 65535)


def _three_inputs(good, root):
    """Three good inputs in a known order: chest.png, chest_cr.dcm, and a copy of chest.png named a_copy.png."""
    import shutil

    copy = root / "a_copy.png"
    if not copy.exists():
        shutil.copy(good / "chest.png", copy)
    return [str(good / "chest.png"), str(good / "chest_cr.dcm"), str(copy)]


def test_a_failed_write_lands_nothing_for_that_input_and_the_summary_keeps_the_order(inputs, tmp_path, monkeypatch):
    root, weights, good, bad = inputs
    from xraysyn.synthesis import writers

    real = writers.write_synthesis

    def failing_for_the_dicom(result, index, folder, **kwargs):
        real(result, index, folder, **kwargs)  # every file is written first, then the write fails
        if result.names[index].endswith(".dcm"):
            raise OSError("disk full (simulated)")

    monkeypatch.setattr(writers, "write_synthesis", failing_for_the_dicom)
    out = tmp_path / "out"
    paths = _three_inputs(good, root)
    result = runner.invoke(app, ["synthesize", paths[0], str(bad / "photo.png"), *paths[1:], "--azimuth", "0",
                                 "--weights", str(weights), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert sorted(p.name for p in out.iterdir()) == ["a_copy", "chest", "summary.json"]  # no staging folder left
    summary = _summary(out)
    assert [item["folder"] for item in summary["written"]] == ["chest", "a_copy"]
    assert [item["input"].rsplit("/", 1)[-1] for item in summary["failed"]] == ["photo.png", "chest_cr.dcm"]
    assert "disk full" in summary["failed"][1]["error"]


def test_an_interrupt_lets_the_write_in_flight_land_whole_and_starts_nothing_after(inputs, tmp_path, monkeypatch):
    root, weights, good, _ = inputs
    from xraysyn.synthesis.model import XraySyn

    real = XraySyn.synthesize
    calls = []

    def interrupted_on_the_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(XraySyn, "synthesize", interrupted_on_the_second)
    out = tmp_path / "out"
    result = runner.invoke(app, ["synthesize", *_three_inputs(good, root), "--azimuth", "0",
                                 "--weights", str(weights), "--out", str(out)])
    assert result.exit_code != 0 and len(calls) == 2
    assert sorted(p.name for p in out.iterdir()) == ["chest"]  # the first input whole, nothing staged left
    assert (out / "chest" / "synthesis.json").is_file() and (out / "chest" / "figure.png").is_file()
