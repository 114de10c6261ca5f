"""``xraysyn simulate`` end to end on a tiny NIfTI cube, against closed forms."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from xraysyn.cli import app
from xraysyn.data.ct_io import write_nifti_array

N = 8
SPACING_MM = 5.0
COMMON = ["--detector", "5", "--pixel-spacing", "5", "--azimuth", "0,30"]


@pytest.fixture()
def cube(tmp_path):
    affine = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
    ct_path, mask_path = tmp_path / "ct.nii.gz", tmp_path / "mask.nii.gz"
    write_nifti_array(np.zeros((N, N, N), np.float32), affine, ct_path)
    write_nifti_array(np.zeros((N, N, N), np.float32), affine, mask_path)
    return tmp_path, ct_path, mask_path


def run(*args):
    return CliRunner().invoke(app, ["simulate", *map(str, args)])


def test_ct2xray_writes_maps_with_closed_form_thickness(cube):
    tmp, ct_path, mask_path = cube
    result = run(ct_path, "--mask", mask_path, *COMMON, "--out", tmp / "out")
    assert result.exit_code == 0, result.output
    out = tmp / "out"
    for view in (0, 1):
        for name in ("radiograph", "bone_thickness", "tissue_thickness"):
            assert (out / f"view_{view:03d}_{name}.npy").is_file() and (out / f"view_{view:03d}_{name}.png").is_file()
    tissue = np.load(out / "view_000_tissue_thickness.npy")
    # HU 0 → 1.03 g/cm³ (DeepDRR calibration); the central ray crosses N · 5 mm of it.
    assert tissue[2, 2] == pytest.approx(1.03 * N * SPACING_MM / 10.0, rel=1e-5)
    assert np.abs(np.load(out / "view_000_bone_thickness.npy")).max() == 0.0
    manifest = json.loads((out / "simulation.json").read_text())
    assert [v["azimuth_deg"] for v in manifest["views"]] == [0.0, 30.0]


def test_drr_mode_matches_mu_times_chord(cube):
    tmp, ct_path, _ = cube
    result = run(ct_path, "--mode", "drr", "--energy", "60", *COMMON, "--out", tmp / "drr")
    assert result.exit_code == 0, result.output
    drr = np.load(tmp / "drr" / "view_000_radiograph.npy")
    mu_water_per_mm = 0.2059 / 10.0  # NIST water μ/ρ at 60 keV, Hubbell & Seltzer 1995
    assert drr[2, 2] == pytest.approx(mu_water_per_mm * N * SPACING_MM, rel=2e-3)


def test_noise_is_seeded(cube):
    tmp, ct_path, mask_path = cube
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert run(ct_path, "--mask", mask_path, *COMMON, "--noise", "1000", "--seed", seed,
                   "--out", tmp / name).exit_code == 0
    a, b, c = (np.load(tmp / n / "view_001_radiograph.npy") for n in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bad_inputs_give_one_clear_error_and_write_nothing(cube):
    tmp, ct_path, _ = cube
    wrong = tmp / "wrong.nii.gz"
    write_nifti_array(np.zeros((N, N, N - 1), np.float32), np.diag([5.0, 5.0, 5.0, 1.0]), wrong)
    result = run(ct_path, "--mask", wrong, *COMMON, "--out", tmp / "bad")
    assert result.exit_code == 2 and "shape" in result.output
    assert not (tmp / "bad").exists()
    result = run(ct_path, "--mask", wrong, "--bone-threshold", "300", *COMMON, "--out", tmp / "bad")
    assert result.exit_code == 2 and "either --mask or --bone-threshold" in result.output
    assert run(ct_path, "--mode", "mri", *COMMON, "--out", tmp / "bad").exit_code == 2
    assert run(ct_path, "--kvp", "-120", *COMMON, "--out", tmp / "bad").exit_code == 2
    assert not (tmp / "bad").exists()


MU_WATER_60KEV_PER_MM = 0.2059 / 10.0  # NIST water μ/ρ at 60 keV (cm²/g) × 1 g/cm³, in 1/mm


@pytest.mark.parametrize("mode", ["ct2xray", "drr"])
def test_transmission_and_line_integral_are_written_and_consistent(cube, mode):
    tmp, ct_path, mask_path = cube
    extra = ["--mask", mask_path] if mode == "ct2xray" else ["--energy", "60"]
    result = run(ct_path, "--mode", mode, *extra, *COMMON, "--out", tmp / "o")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp / "o" / "simulation.json").read_text())
    assert "I/I0" in manifest["outputs"]["transmission"] and "-log" in manifest["outputs"]["line_integral"]
    for view in (0, 1):
        assert {"view_%03d_transmission.npy" % view, "view_%03d_line_integral.npy" % view} <= set(
            manifest["views"][view]["files"])
        transmission = np.load(tmp / "o" / f"view_{view:03d}_transmission.npy")
        line = np.load(tmp / "o" / f"view_{view:03d}_line_integral.npy")
        assert transmission.dtype == np.float32 and line.dtype == np.float32
        assert transmission.min() > 0 and transmission.max() <= 1
        np.testing.assert_allclose(line, -np.log(transmission.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_drr_line_integral_of_a_uniform_box_is_mu_times_chord(cube):
    tmp, ct_path, _ = cube
    assert run(ct_path, "--mode", "drr", "--energy", "60", *COMMON, "--out", tmp / "o").exit_code == 0
    side_mm = N * SPACING_MM
    # the central ray crosses the box normally at azimuth 0 and at 30° through two opposite faces
    for view, azimuth_deg in ((0, 0.0), (1, 30.0)):
        line = np.load(tmp / "o" / f"view_{view:03d}_line_integral.npy")
        chord_mm = side_mm / np.cos(np.radians(azimuth_deg))
        assert line[2, 2] == pytest.approx(MU_WATER_60KEV_PER_MM * chord_mm, rel=3e-3)
        transmission = np.load(tmp / "o" / f"view_{view:03d}_transmission.npy")
        assert transmission[2, 2] == pytest.approx(np.exp(-MU_WATER_60KEV_PER_MM * chord_mm), rel=3e-3)


def test_a_second_run_never_mixes_with_the_first(cube):
    tmp, ct_path, mask_path = cube
    out = tmp / "o"
    assert run(ct_path, "--mask", mask_path, *COMMON, "--out", out).exit_code == 0
    again = run(ct_path, "--mode", "drr", "--detector", "5", "--pixel-spacing", "5", "--out", out)
    assert again.exit_code == 2 and "not empty" in again.output and "--overwrite" in again.output
    assert (out / "view_001_bone_thickness.npy").is_file()  # the refused run left the first intact
    replaced = run(ct_path, "--mode", "drr", "--detector", "5", "--pixel-spacing", "5", "--out", out, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    manifest = json.loads((out / "simulation.json").read_text())
    listed = {name for view in manifest["views"] for name in view["files"]} | {"simulation.json"}
    assert {p.name for p in out.iterdir()} == listed  # nothing of the first run is left
    assert not [p for p in tmp.iterdir() if p.name.startswith(".o.")]  # no staging folder left behind


@pytest.mark.parametrize("args,message", [
    (["--noise", "1e30"], "--noise must be <="),
    (["--noise", "nan"], "--noise must be a finite"),
    (["--bone-threshold", "nan"], "--bone-threshold must be a finite"),
    (["--energy", "-5", "--mode", "drr"], "--energy must be >"),
    (["--electronic-noise", "-1"], "--electronic-noise must be >="),
])
def test_out_of_range_options_are_refused_before_any_work(cube, args, message):
    tmp, ct_path, _ = cube
    result = run(ct_path, *args, *COMMON, "--out", tmp / "new" / "sim")
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp / "new").exists()


def test_missing_mask_is_named_as_the_mask(cube):
    tmp, ct_path, _ = cube
    result = run(ct_path, "--mask", tmp / "nope.nii.gz", *COMMON, "--out", tmp / "o")
    assert result.exit_code == 2 and "--mask" in result.output and "CT path" not in result.output
    assert not (tmp / "o").exists()


def test_huge_azimuth_is_reduced_exactly(cube):
    tmp, ct_path, _ = cube
    # 1e9 deg = 2777777 turns + 280 deg, i.e. -80 deg; float32 would have rendered ~250 deg
    for name, angle in (("huge", "1e9"), ("reduced", "-80")):
        assert run(ct_path, "--mode", "drr", "--energy", "60", "--detector", "5", "--pixel-spacing", "5",
                   f"--azimuth={angle}", "--out", tmp / name).exit_code == 0
    np.testing.assert_array_equal(np.load(tmp / "huge" / "view_000_line_integral.npy"),
                                  np.load(tmp / "reduced" / "view_000_line_integral.npy"))
