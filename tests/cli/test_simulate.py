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
