"""``xraysyn data bone-mask`` and ``xraysyn prepare ct`` on a table of bad inputs: exit status 2,
one clear line naming the problem, no traceback, nothing written (the style of test_bad_inputs.py).

``{inputs}`` holds a tiny valid CT, a file, a label map without a structures table, a folder of
NIfTIs and a folder with no CT; ``{out}`` is an output folder holding an earlier prepare result.
"""

import numpy as np
import pytest
from typer.testing import CliRunner

from xraysyn.cli import app
from xraysyn.data.ct_io import write_nifti_array

N = 8
SPACING_MM = 5.0
FINE_SPACING_MM = 2.0  # within the 2.5 mm rule, so that prepare ct keeps the CT
BONE = ["data", "bone-mask", "{inputs}/ct.nii.gz"]
PREPARE = ["prepare", "ct", "{inputs}/niftis"]

CASES = {
    # data bone-mask: every option is checked before the CT is read
    "bone-mask missing CT": (["data", "bone-mask", "{inputs}/nope.nii.gz", "{out}/b.nii.gz"], "does not exist"),
    "bone-mask bad suffix": ([*BONE, "{out}/b.tif"], ".nii or .nii.gz"),
    "bone-mask output is a folder": ([*BONE, "{out}"], "is a folder"),
    "bone-mask output below a file": ([*BONE, "{inputs}/a_file/b.nii.gz"], "is not a folder"),
    "bone-mask nan threshold": ([*BONE, "{out}/b.nii.gz", "--threshold-hu", "nan"], "--threshold-hu must be a finite"),
    "bone-mask missing labels": ([*BONE, "{out}/b.nii.gz", "--labels", "{inputs}/nope.nii.gz"], "--labels"),
    "bone-mask missing structures": ([*BONE, "{out}/b.nii.gz", "--labels", "{inputs}/labels/l.nii.gz"], "structures.csv"),
    "bone-mask labels on another grid": ([*BONE, "{out}/b.nii.gz", "--labels", "{inputs}/small_labels.nii.gz",
                                          "--structures", "{inputs}/structures.csv"], "differs from the CT shape"),
    "bone-mask NIfTI folder as CT": (["data", "bone-mask", "{inputs}/niftis", "{out}/b.nii.gz"], "pass the file itself"),
    # prepare ct
    "prepare missing input": (["prepare", "ct", "{inputs}/nope", "{out}/p"], "does not exist"),
    "prepare input is a file": (["prepare", "ct", "{inputs}/a_file", "{out}/p"], "not a folder"),
    "prepare output is the input": ([*PREPARE, "{inputs}/niftis"], "is the input folder"),
    "prepare output inside the input": ([*PREPARE, "{inputs}/niftis/shards"], "inside the input folder"),
    "prepare output is a file": ([*PREPARE, "{inputs}/a_file"], "not a folder"),
    "prepare no CT in the tree": (["prepare", "ct", "{inputs}/no_ct", "{out}/p"], "none usable"),
    "prepare bad size": ([*PREPARE, "{out}/p", "--size", "1"], "--size"),
    "prepare bad mode": ([*PREPARE, "{out}/p", "--mode", "squash"], "--mode"),
    "prepare nan spacing": ([*PREPARE, "{out}/p", "--max-spacing-mm", "nan"], "--max-spacing-mm must be a finite"),
    "prepare zero workers": ([*PREPARE, "{out}/p", "--workers", "0"], "--workers"),
    "prepare bad shard": ([*PREPARE, "{out}/p", "--shard", "3/2"], "--shard"),
    "prepare shard not i/n": ([*PREPARE, "{out}/p", "--shard", "half"], "--shard"),
    "prepare other settings": ([*PREPARE, "{out}/earlier", "--size", "6"], "--overwrite"),
}


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """An earlier ``prepare ct --size 4`` result of ``{inputs}/niftis`` (copied into each ``{out}``)."""
    root = tmp_path_factory.mktemp("earlier")
    affine = np.diag([FINE_SPACING_MM, FINE_SPACING_MM, FINE_SPACING_MM, 1.0])
    hu = np.full((N, N, N), -1000.0, np.float32)
    hu[2:6, 2:6, :] = 40.0
    write_nifti_array(hu, affine, root / "niftis" / "one.nii.gz")
    result = CliRunner().invoke(app, ["prepare", "ct", str(root / "niftis"), str(root / "shards"), "--size", "4"])
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture()
def places(tmp_path, earlier):
    import shutil

    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    affine = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
    write_nifti_array(np.zeros((N, N, N), np.float32), affine, inputs / "ct.nii.gz")
    write_nifti_array(np.zeros((4, 4, 4), np.uint8), affine, inputs / "small_labels.nii.gz")
    (inputs / "structures.csv").write_text("id,name\n1,rib_left_1\n")
    write_nifti_array(np.zeros((N, N, N), np.uint8), affine, inputs / "labels" / "l.nii.gz")
    (inputs / "a_file").write_text("not a folder")
    shutil.copytree(earlier / "niftis", inputs / "niftis")
    (inputs / "no_ct").mkdir()
    (inputs / "no_ct" / "notes.txt").write_text("no CT here")
    shutil.copytree(earlier / "shards", out / "earlier")
    return inputs, out


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(places, name):
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
    assert not [p for p in out.parent.rglob(".*") if p.name.endswith((".partial", ".tmp"))]
