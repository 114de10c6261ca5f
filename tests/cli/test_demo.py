"""The demo pipeline end to end on a tiny phantom (the real-data run is `make demo`)."""

import json
import re

import numpy as np
import pytest

from xraysyn.demo import DemoConfig, run_demo


@pytest.fixture()
def phantom_files(tmp_path):
    from xraysyn.data.ct_io import write_nifti_array
    from xraysyn.data.phantom import make_chest_phantom

    ph = make_chest_phantom((40, 40, 40), seed=1)
    ct = write_nifti_array(ph.hu, ph.world_from_voxel, tmp_path / "ct.nii.gz")
    labels = write_nifti_array(ph.bone_mask.astype(np.uint8) * 7, ph.world_from_voxel, tmp_path / "labels.nii.gz")
    structures = tmp_path / "structures.csv"
    structures.write_text("id,name\n7,rib_left_3\n")
    return ct, labels, structures


def test_demo_writes_every_output_and_suppression_removes_bone(phantom_files, tmp_path):
    ct, labels, structures = phantom_files
    config = DemoConfig(cube_size=32, detector=48, pixel_spacing_mm=9.0, azimuths_deg=(-10.0, 0.0, 10.0))
    out = tmp_path / "demo"
    summary = run_demo(out, ct, labels_path=labels, structures_path=structures, config=config, progress=False)
    for name in ["montage.png", "summary.json", "view_az+00.0.npy", "view_az-10.0.png", "bone_thickness.npy",
                 "tissue_thickness.png", "bone_image.png", "bone_suppressed.npy"]:
        assert (out / name).is_file(), name
    assert json.loads((out / "summary.json").read_text())["bone_mask"] == "labels"
    assert 0.0 <= summary["dice_threshold_vs_labels"] <= 1.0
    frontal = np.load(out / "view_az+00.0.npy")
    suppressed = np.load(out / "bone_suppressed.npy")
    bone = np.load(out / "bone_thickness.npy")
    # where bone projects, suppression makes the radiograph less attenuating (darker in display)
    assert suppressed[bone > 0.5 * bone.max()].mean() < frontal[bone > 0.5 * bone.max()].mean()
    assert np.allclose(suppressed[bone == 0], frontal[bone == 0], atol=1e-3 * frontal.max())


def test_demo_command_uses_example_data(phantom_files, tmp_path, monkeypatch):
    from PIL import Image
    from typer.testing import CliRunner

    import xraysyn.data.example as example
    from support.tiny_xraysyn import refine_export, simulated_frontal, write_export
    from xraysyn.cli import app

    ct, labels, structures = phantom_files
    radiograph = tmp_path / "chest.png"
    Image.fromarray((simulated_frontal(80, seed=1) * 255).round().astype(np.uint8)).save(radiograph)
    weights = write_export(refine_export(), tmp_path / "tiny.pt")
    fake = example.ExamplePaths(ct=ct, labels=labels, structures=structures, radiograph=radiograph)
    monkeypatch.setattr(example, "fetch_example_data", lambda cache_dir=None, **kw: fake)
    out = tmp_path / "cli_demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--size", "24", "--detector", "32",
                                   "--weights", str(weights)])
    assert res.exit_code == 0, res.output
    assert "Dice" in res.output and "index.html" in res.output
    page = (out / "index.html").read_text()
    referenced = re.findall(r"src='([^']+)'", page)
    assert len(referenced) >= 10 and all((out / name).is_file() for name in referenced)
    for name in ("figure.png", "simulation/montage.png", "synthesis/chest/sweep.gif",
                 "suppression/chest/suppressed.dcm", "suppression/chest/suppressed.png"):
        assert (out / name).is_file(), name


def test_demo_command_offline_is_one_clear_error(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import xraysyn.data.example as example
    from xraysyn.cli import app

    def offline(*args, **kwargs):
        raise example.ExampleDataError("pip could not reach the package index (are you offline?)")

    monkeypatch.setattr(example, "fetch_example_data", offline)
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d")])
    assert res.exit_code == 1 and "offline" in res.output
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("args,message", [
    (["--detector", "0"], "--detector must be at least"),
    (["--detector", "-3"], "--detector must be at least"),
    (["--size", "2"], "--size must be at least"),
    (["--detector", "100000"], "needs about"),
])
def test_demo_options_are_checked_before_the_fetch(tmp_path, monkeypatch, args, message):
    from typer.testing import CliRunner

    import xraysyn.data.example as example
    from xraysyn.cli import app

    def must_not_fetch(*a, **k):
        raise AssertionError("fetched before the options were checked")

    monkeypatch.setattr(example, "fetch_example_data", must_not_fetch)
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), *args])
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "d").exists()


def test_demo_refuses_a_non_empty_folder_and_a_failed_run_leaves_it_intact(phantom_files, tmp_path):
    ct, labels, structures = phantom_files
    out = tmp_path / "demo"
    out.mkdir()
    (out / "old.txt").write_text("earlier run")
    config = DemoConfig(cube_size=16, detector=8, pixel_spacing_mm=50.0, azimuths_deg=(0.0,))
    from xraysyn.outputs import OutputExistsError

    with pytest.raises(OutputExistsError, match="not empty"):
        run_demo(out, ct, config=config, progress=False)
    with pytest.raises(FileNotFoundError):
        run_demo(out, tmp_path / "missing.nii.gz", config=config, progress=False, overwrite=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".demo")] == []
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    run_demo(out, ct, config=config, progress=False, overwrite=True)
    assert not (out / "old.txt").exists() and (out / "summary.json").is_file()
