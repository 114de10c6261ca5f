import os
import stat

import pytest

from xraysyn.atomic import atomic_write


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write(target, lambda tmp: tmp.write_text("first"))
    assert target.read_text() == "first"

    def failing(tmp):
        tmp.write_text("partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_text() == "first"  # the old file is untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]  # no temp file left


def test_atomic_write_uses_normal_permissions_and_suffix(tmp_path):
    seen = []
    atomic_write(tmp_path / "x.nii.gz", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"1")), suffix=".tmp.nii.gz")
    assert seen[0].endswith(".tmp.nii.gz")
    mode = stat.S_IMODE(os.stat(tmp_path / "x.nii.gz").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
