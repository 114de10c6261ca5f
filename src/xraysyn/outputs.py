"""The one rule for commands that write a folder of results.

* A run never mixes with an earlier one: an output folder that exists and is not empty is
  refused unless the caller passes ``overwrite=True``; then it is replaced as a whole.
* Nothing half-written: the run writes into a temporary sibling folder (same parent, so the final
  move is a rename on the same file system) that is renamed into place only when the run
  completed; on any error the temporary folder is removed and an old folder is left untouched.

:func:`check_output_folder` is the validation step (call it before any work);
:func:`staged_output_folder` is the writing step. For runs that write loose files beside other
files (``xraysyn project``), :func:`staged_output_files` applies the same rule to a set of names.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

__all__ = ["OutputExistsError", "check_output_folder", "staged_output_folder", "check_output_files",
           "staged_output_files", "STAGING_SUFFIX"]

STAGING_SUFFIX = ".partial"
"""Ending of the temporary sibling a run writes into (``.<name>.<random>.partial``)."""


class OutputExistsError(ValueError):
    """An output folder or file already holds results and ``--overwrite`` was not given."""


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_parent_writable(path: Path, what: str) -> None:
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise NotADirectoryError(f"{what} {str(path)!r} cannot be created: {str(existing)!r} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {str(path)!r} cannot be written: no write permission in {str(existing)!r}")


def check_output_folder(folder: str | os.PathLike, *, overwrite: bool, option: str = "--out") -> Path:
    """Validate an output folder before any work: refuse a file, or a non-empty folder without overwrite.

    Args:
        folder: the folder the run will produce.
        overwrite: replace an existing non-empty folder as a whole.
        option: the command-line option naming it, for the message.

    Returns:
        ``folder`` as a :class:`~pathlib.Path`. Raises :class:`NotADirectoryError`,
        :class:`PermissionError` or :class:`OutputExistsError` (a ``ValueError``) naming the path.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{option} {str(folder)!r} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise OutputExistsError(f"{option} {str(folder)!r} is not empty; choose a new folder or pass "
                                "--overwrite to replace it as a whole")
    _check_parent_writable(folder, option)
    return folder


@contextlib.contextmanager
def staged_output_folder(folder: str | os.PathLike, *, overwrite: bool, option: str = "--out") -> Iterator[Path]:
    """Yield an empty temporary sibling of ``folder``; on success it becomes ``folder``.

    An existing ``folder`` (empty, or any content with ``overwrite=True``) is replaced as a whole:
    after the run nothing of the earlier content remains. On an exception the temporary folder is
    removed, ``folder`` is untouched and the exception propagates.
    """
    folder = check_output_folder(folder, overwrite=overwrite, option=option)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=STAGING_SUFFIX, dir=folder.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_current_umask())  # mkdtemp creates 0700 folders
        if folder.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
            os.replace(folder, retired / folder.name)
            try:
                os.replace(staging, folder)
            except BaseException:
                os.replace(retired / folder.name, folder)  # put the earlier results back
                shutil.rmtree(retired, ignore_errors=True)
                raise
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_files(paths: Iterable[Path], stale: Iterable[Path], *, overwrite: bool,
                       option: str = "--out") -> None:
    """Validate a run's output files: refuse to replace earlier results unless ``overwrite``.

    Args:
        paths: the files this run writes.
        stale: earlier results of the same name pattern that this run would not rewrite (e.g.
            ``view_007.npy`` when the new run has 3 views); they are removed with ``overwrite``.
    """
    paths, stale = list(paths), list(stale)
    for path in [*paths, *stale]:
        if path.is_dir():
            raise IsADirectoryError(f"{option} {str(path)!r} is a folder, expected a file name")
    existing = [p for p in [*paths, *stale] if p.exists()]
    if existing and not overwrite:
        shown = ", ".join(repr(str(p)) for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise OutputExistsError(f"{option} would replace {len(existing)} existing file(s) ({shown}); "
                                "pass --overwrite to replace that run's files as a whole")
    for path in paths[:1]:
        _check_parent_writable(path, option)


def _commit_files(staged: list[Path], paths: list[Path], stale: list[Path], staging: Path) -> None:
    """Move earlier files aside, the staged ones into place; undo both on any failure."""
    retired_dir = staging / ".retired"
    retired_dir.mkdir()
    retired: list[tuple[Path, Path]] = []
    moved_in: list[Path] = []
    try:
        for final in [*paths, *stale]:
            if final.exists() or final.is_symlink():
                keep = retired_dir / str(len(retired))
                os.replace(final, keep)
                retired.append((keep, final))
        for tmp, final in zip(staged, paths):
            os.replace(tmp, final)
            moved_in.append(final)
    except BaseException:
        for final in moved_in:
            final.unlink(missing_ok=True)
        for keep, final in reversed(retired):
            os.replace(keep, final)
        raise


@contextlib.contextmanager
def staged_output_files(paths: list[Path], stale: Iterable[Path] = (), *, overwrite: bool,
                        option: str = "--out") -> Iterator[list[Path]]:
    """Yield temporary paths (one staging folder beside the outputs) for ``paths``.

    When the block completes, the earlier files under the final names and the ``stale`` files are
    first moved aside into the staging folder, then every staged file is renamed onto its final
    name; if a rename fails (or the process is interrupted there) the files already moved in are
    removed and the earlier ones put back. On an exception inside the block nothing under the
    final names changes. All ``paths`` must share one parent folder.
    """
    stale = list(stale)
    check_output_files(paths, stale, overwrite=overwrite, option=option)
    parents = {p.parent for p in paths}
    if len(parents) != 1:
        raise ValueError(f"{option}: output files must share one folder, got {sorted(map(str, parents))}")
    parent = parents.pop()
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".xraysyn.", suffix=STAGING_SUFFIX, dir=parent))
    try:
        staged = [staging / p.name for p in paths]
        yield staged
        mode = 0o666 & ~_current_umask()
        for tmp in staged:
            os.chmod(tmp, mode)
        _commit_files(staged, paths, stale, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
