"""The CLI on a table of bad inputs: exit status 2, one clear line naming the problem, nothing written.

Each row runs one command with ``{inputs}`` (a tiny valid CT, a file, a folder of NIfTIs) and
``{out}`` (an output folder that either does not exist or holds an earlier result) filled in,
then checks the exit status, the message, that no traceback was printed and that the output
folder is exactly as before (no new, changed or half-written files).
"""

import os

import numpy as np
import pytest
from typer.testing import CliRunner

from xraysyn.cli import app
from xraysyn.data.ct_io import write_nifti_array

N = 8
SPACING_MM = 5.0
PROJECT = ["project", "{inputs}/ct.nii.gz", "--detector", "4", "--pixel-spacing", "20"]
SIMULATE = ["simulate", "{inputs}/ct.nii.gz", "--detector", "4", "--pixel-spacing", "20"]

CASES = {
    # project
    "project bad suffix": ([*PROJECT, "--out", "{out}/x.tif"], ".npy or .png"),
    "project zero detector": ([*PROJECT, "--out", "{out}/x.npy", "--detector", "0x5"], "--detector"),
    "project huge detector": ([*PROJECT, "--out", "{out}/x.npy", "--detector", "100000x100000"], "needs about"),
    "project nan step": ([*PROJECT, "--out", "{out}/x.npy", "--step", "nan"], "--step must be a finite"),
    "project output below a file": ([*PROJECT, "--out", "{inputs}/a_file/x.npy"], "is not a folder"),
    "project earlier result": ([*PROJECT, "--out", "{out}/earlier.npy"], "--overwrite"),
    "project blocked view name": ([*PROJECT, "--azimuth", "0,1,2", "--out", "{out}/c.npy"], "c_002.npy"),
    "project missing volume": (["project", "{inputs}/nope.nii.gz", "--out", "{out}/x.npy"], "does not exist"),
    "project NIfTI folder as volume": (["project", "{inputs}/niftis", "--out", "{out}/x.npy"], "pass the file itself"),
    # 8e10 samples per ray wrapped the projector's int32 count: an all-zero image, exit 0
    "project step past the sample counter": ([*PROJECT, "--out", "{out}/x.npy", "--step", "1e-9"],
                                             "samples per ray"),
    "project nan azimuth": ([*PROJECT, "--out", "{out}/x.npy", "--azimuth", "nan"], "finite"),
    # simulate
    "simulate non-empty folder": ([*SIMULATE, "--out", "{out}"], "not empty"),
    "simulate noise overflow": ([*SIMULATE, "--noise", "1e30", "--out", "{out}/s"], "--noise must be <="),
    "simulate nan threshold": ([*SIMULATE, "--bone-threshold", "nan", "--out", "{out}/s"], "--bone-threshold"),
    "simulate noise past the sampler": ([*SIMULATE, "--noise", "5e18", "--out", "{out}/s"], "--noise must be <= 4.6"),
    "simulate nan azimuth": ([*SIMULATE, "--azimuth", "nan", "--out", "{out}/s"], "finite"),
    # options the chosen mode would silently ignore
    "simulate energy in ct2xray": ([*SIMULATE, "--energy", "60", "--out", "{out}/s"], "--energy only applies"),
    "simulate air threshold in drr": ([*SIMULATE, "--mode", "drr", "--air-threshold", "-500", "--out", "{out}/s"],
                                      "--air-threshold only applies"),
    "simulate electronic noise alone": ([*SIMULATE, "--electronic-noise", "3", "--out", "{out}/s"],
                                        "--electronic-noise needs --noise"),
    "simulate missing mask": ([*SIMULATE, "--mask", "{inputs}/nope.nii.gz", "--out", "{out}/s"], "--mask"),
    "simulate bad mode": ([*SIMULATE, "--mode", "mri", "--out", "{out}/s"], "--mode"),
    "simulate huge detector": ([*SIMULATE, "--detector", "100000", "--out", "{out}/s"], "needs about"),
    "simulate output is a file": ([*SIMULATE, "--out", "{inputs}/a_file"], "not a folder"),
    # phantom
    "phantom huge size": (["phantom", "{out}/p.nii.gz", "--size", "100000"], "needs about"),
    "phantom bad suffix": (["phantom", "{out}/p.tif"], ".nii.gz"),
    "phantom output below a file": (["phantom", "{inputs}/a_file/p.nii.gz"], "a_file' is not a folder"),
    "phantom output folder missing": (["phantom", "{inputs}/nope/p.nii.gz"], "does not exist"),
    "phantom earlier result": (["phantom", "{out}/old.nii.gz", "--size", "8"], "--overwrite"),
    "phantom earlier labels": (["phantom", "{out}/lab.nii.gz", "--size", "8"], "--overwrite"),
    "phantom mask name is a folder": (["phantom", "{out}/d.nii.gz", "--size", "8"], "is a folder"),
    # demo (every option is checked before the example data is fetched)
    "demo zero detector": (["demo", "--out", "{out}/d", "--detector", "0"], "--detector must be at least"),
    "demo negative detector": (["demo", "--out", "{out}/d", "--detector", "-3"], "--detector must be at least"),
    "demo non-empty folder": (["demo", "--out", "{out}"], "not empty"),
}


@pytest.fixture()
def places(tmp_path):
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    affine = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
    write_nifti_array(np.zeros((N, N, N), np.float32), affine, inputs / "ct.nii.gz")
    (inputs / "a_file").write_text("not a folder")
    (inputs / "niftis").mkdir()
    write_nifti_array(np.zeros((N, N, N), np.float32), affine, inputs / "niftis" / "one.nii.gz")
    np.save(out / "earlier.npy", np.ones(3))
    (out / "c_002.npy").mkdir()
    (out / "old.nii.gz").write_text("an earlier phantom")
    (out / "lab_labels.nii.gz").write_text("an earlier run's labels")
    (out / "d_mask.nii.gz").mkdir()
    return inputs, out


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(places, monkeypatch, name):
    import xraysyn.data.example as example

    def must_not_fetch(*args, **kwargs):
        raise AssertionError("fetched before the options were checked")

    monkeypatch.setattr(example, "fetch_example_data", must_not_fetch)
    inputs, out = places
    args, message = CASES[name]
    before_out, before_inputs = _snapshot(out), _snapshot(inputs)
    result = CliRunner().invoke(app, [a.format(inputs=inputs, out=out) for a in args])
    assert result.exit_code == 2, (result.output, result.exception)
    assert message in result.output, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    error_lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 or "Usage" in result.output, result.output
    assert _snapshot(out) == before_out and _snapshot(inputs) == before_inputs
    assert not [p for p in out.parent.rglob(".*") if p.name.endswith(".partial")]


# ------------------------------------------------------------- phantom: its files are one set
def _phantom(out, *extra):
    return CliRunner().invoke(app, ["phantom", str(out / "p.nii.gz"), "--size", "8", *extra])


def test_phantom_failing_mid_way_writes_none_of_its_files(tmp_path, monkeypatch):
    import xraysyn.data.ct_io as ct_io

    real_write, written = ct_io.write_nifti_array, []

    def fail_on_the_second(array, affine, path):
        if written:
            raise OSError(28, "No space left on device", str(path))
        written.append(path)
        return real_write(array, affine, path)

    monkeypatch.setattr(ct_io, "write_nifti_array", fail_on_the_second)
    result = _phantom(tmp_path, "--labels")
    assert result.exit_code == 2 and "No space left" in result.output, result.output
    assert written and list(tmp_path.iterdir()) == []  # the CT was written, staged, and never moved in


def test_phantom_overwrite_replaces_the_earlier_set_as_a_whole(tmp_path):
    import nibabel as nib

    assert _phantom(tmp_path, "--labels", "--seed", "1").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.nii.gz", "p_labels.nii.gz", "p_mask.nii.gz"]
    first = np.asarray(nib.load(tmp_path / "p.nii.gz").dataobj)
    refused = _phantom(tmp_path, "--seed", "2")
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    assert _phantom(tmp_path, "--seed", "2", "--overwrite").exit_code == 0
    # The labels of seed 1 are gone with the rest of that run; CT and mask are seed 2's.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.nii.gz", "p_mask.nii.gz"]
    assert not np.array_equal(np.asarray(nib.load(tmp_path / "p.nii.gz").dataobj), first)


def test_sigterm_mid_write_removes_the_staged_files_and_exits_143(tmp_path):
    """``kill`` / ``timeout`` send SIGTERM, which by default ends Python without running any
    ``finally``: the staging folder stayed behind. Run in a child process (the signal is real)."""
    import signal
    import subprocess
    import sys

    script = f"""
import os, signal, sys, time
import xraysyn.data.ct_io as ct_io
from xraysyn.cli import app

real_write = ct_io.write_nifti_array
def write_then_get_killed(array, affine, path):
    real_write(array, affine, path)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)  # the handler raises here
ct_io.write_nifti_array = write_then_get_killed
app(["phantom", {str(tmp_path / "p.nii.gz")!r}, "--size", "8"])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 128 + signal.SIGTERM, (done.returncode, done.stderr[-2000:])
    assert "stopped by signal SIGTERM" in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []
