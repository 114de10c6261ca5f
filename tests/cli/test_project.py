import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from xraysyn.cli import app

runner = CliRunner()


@pytest.fixture()
def ball_nifti(tmp_path):
    n, spacing = 24, 3.0
    ax = (np.arange(n) - (n - 1) / 2) * spacing
    x, y, z = np.meshgrid(ax, ax, ax, indexing="ij")
    vol = (((x + 15) ** 2 + y**2 + z**2) < 8.0**2).astype(np.float32)  # ball on the patient's left (-x)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -spacing * (n - 1) / 2
    path = tmp_path / "ball.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), path)
    return path


def test_project_npy_single_view(ball_nifti, tmp_path):
    out = tmp_path / "pa.npy"
    res = runner.invoke(app, ["project", str(ball_nifti), "--out", str(out), "--detector", "32x40",
                              "--pixel-spacing", "3"])
    assert res.exit_code == 0, res.output
    img = np.load(out)
    assert img.shape == (32, 40)
    cols = np.arange(40)
    centroid = (img.sum(0) * cols).sum() / img.sum()
    assert centroid > 19.5 + 3  # the left ball lands on the image's right
    # the central chord of a 16 mm ball is ~16 (value 1 x mm); a binary 3 mm voxelisation with
    # trilinear sampling blurs the surface by about a voxel
    assert 14.0 < img.max() < 16.0 + 3.0


def test_project_many_views_png(ball_nifti, tmp_path):
    out = tmp_path / "view.png"
    res = runner.invoke(app, ["project", str(ball_nifti), "--out", str(out), "--azimuth", "-10:10:3",
                              "--detector", "16", "--pixel-spacing", "6"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in tmp_path.glob("view_*.png"))
    assert names == ["view_000.png", "view_001.png", "view_002.png"]


@pytest.mark.parametrize("args,message", [
    (["--out", "x.tif"], ".npy or .png"),
    (["--out", "x.npy", "--detector", "0x5"], "detector"),
    (["--out", "x.npy", "--azimuth", "1,2", "--elevation", "1,2,3"], "elevation"),
    (["--out", "x.npy", "--sdd", "100"], "larger than sid"),
])
def test_project_bad_input(ball_nifti, tmp_path, args, message):
    res = runner.invoke(app, ["project", str(ball_nifti), *args])
    assert res.exit_code == 2
    assert message in res.output
    assert not list(tmp_path.glob("x*"))


def test_project_missing_volume(tmp_path):
    res = runner.invoke(app, ["project", str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path / "a.npy")])
    assert res.exit_code == 2 and "does not exist" in res.output


def project(*args):
    return runner.invoke(app, ["project", *map(str, args)])


SMALL = ["--detector", "8", "--pixel-spacing", "12"]


def test_a_second_run_is_refused_and_overwrite_replaces_the_whole_set(ball_nifti, tmp_path):
    out = tmp_path / "views" / "v.npy"
    assert project(ball_nifti, "--out", out, "--azimuth", "0:20:3", *SMALL).exit_code == 0
    again = project(ball_nifti, "--out", out, "--azimuth", "0,5", *SMALL)
    assert again.exit_code == 2 and "--overwrite" in again.output
    replaced = project(ball_nifti, "--out", out, "--azimuth", "0,5", *SMALL, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["v_000.npy", "v_001.npy"]  # v_002 of run 1 gone


def test_a_blocked_output_name_writes_nothing(ball_nifti, tmp_path):
    (tmp_path / "c_002.npy").mkdir()
    result = project(ball_nifti, "--out", tmp_path / "c.npy", "--azimuth", "0:10:3", *SMALL)
    assert result.exit_code == 2 and "c_002.npy" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ball.nii.gz", "c_002.npy"]


def test_unwritable_output_is_one_line(ball_nifti, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = project(ball_nifti, "--out", blocker / "sub" / "x.npy", *SMALL)
    assert result.exit_code == 2 and "is not a folder" in result.output and result.exception.__class__ is SystemExit


def test_memory_guard_refuses_a_huge_detector_before_loading(ball_nifti, tmp_path):
    result = project(ball_nifti, "--out", tmp_path / "x.npy", "--detector", "100000x100000")
    assert result.exit_code == 2 and "needs about" in result.output and "available" in result.output
    assert not list(tmp_path.glob("x*"))


def test_views_stream_to_disk_one_by_one(ball_nifti, tmp_path, monkeypatch):
    import xraysyn.projector as projector

    real = projector.forward_project
    staged_counts = []

    def counting(*args, **kwargs):
        staged_counts.append(len(list(tmp_path.glob(".xraysyn.*.partial/*.npy"))))
        return real(*args, **kwargs)

    monkeypatch.setattr(projector, "forward_project", counting)
    assert project(ball_nifti, "--out", tmp_path / "s.npy", "--azimuth", "0:30:4", *SMALL).exit_code == 0
    assert staged_counts == [0, 1, 2, 3]  # each view is on disk before the next is computed
    assert len(list(tmp_path.glob("s_*.npy"))) == 4 and not list(tmp_path.glob(".xraysyn.*"))
