import errno
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


# ------------------------------------------------- errors name the caller's path (issue 24: 12)
def _write_hi(tmp):
    tmp.write_text("hi")


def test_a_folder_as_target_is_named_and_write_is_not_called(tmp_path):
    target = tmp_path / "results"
    (target / "inner").mkdir(parents=True)
    called = []
    with pytest.raises(IsADirectoryError) as info:
        atomic_write(target, lambda tmp: called.append(tmp))
    assert info.value.filename == str(target) and not called
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


@pytest.mark.parametrize("below", ["x.txt", "deeper/x.txt"])
def test_a_file_in_the_parent_path_is_named(tmp_path, below):
    (tmp_path / "a_file").write_text("not a folder")
    target = tmp_path / "a_file" / below
    with pytest.raises(NotADirectoryError, match="'.*a_file' is not a folder") as info:
        atomic_write(target, _write_hi)
    assert info.value.filename == str(target)


def test_os_errors_about_the_temporary_file_name_the_target(tmp_path, monkeypatch):
    target = tmp_path / "out.npy"

    def disk_full(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    with pytest.raises(OSError) as info:
        atomic_write(target, disk_full)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []

    def refused_rename(src, dst):  # e.g. a read-only target (cannot be provoked as root)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), src, dst)

    monkeypatch.setattr(os, "replace", refused_rename)
    with pytest.raises(PermissionError) as info:
        atomic_write(target, _write_hi)
    assert info.value.filename == str(target) and list(tmp_path.iterdir()) == []


def test_other_errors_of_the_writer_pass_unchanged(tmp_path):
    missing = tmp_path / "elsewhere" / "input.txt"

    def reads_a_missing_input(tmp):
        missing.read_text()

    with pytest.raises(FileNotFoundError) as info:
        atomic_write(tmp_path / "x.txt", reads_a_missing_input)
    assert info.value.filename == str(missing)


def test_longest_file_name_can_be_written(tmp_path):
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    target = tmp_path / ("n" * (name_max - 4) + ".txt")  # the temporary name would be ~20 longer
    atomic_write(target, _write_hi, suffix=".tmp.nii.gz")
    assert target.read_text() == "hi" and len(list(tmp_path.iterdir())) == 1
