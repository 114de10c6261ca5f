"""Atomic file writing: the one place every writer in the package goes through.

Data lands in a temporary file in the target folder and is renamed into place only when the
writer succeeded, so a crash or a bad input never leaves a partial file under the final name.
Errors name the caller's path, never the temporary one: an ``OSError`` about the temporary file
(disk full, permission denied, the target is a folder) is raised again, same type and errno, with
``filename`` set to the target.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write"]

_FILE_MODE = 0o666  # what open() would use; the process umask is applied on top
_RANDOM_CHARS = 8  # length of the random part tempfile puts between prefix and suffix
_DEFAULT_NAME_MAX = 255  # longest file name on the usual file systems, when pathconf cannot tell


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return _DEFAULT_NAME_MAX


def _temporary_prefix(path: Path, suffix: str) -> str:
    """``.<name>.``, the name cut so that prefix + random part + suffix fits in one file name."""
    room = _name_max(path.parent) - len(suffix) - _RANDOM_CHARS - 2
    return f".{path.name[:max(room, 1)]}."


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = path.parent
        while not blocker.exists() and blocker != blocker.parent:
            blocker = blocker.parent
        raise NotADirectoryError(errno.ENOTDIR, f"cannot create its folder, {str(blocker)!r} is not a folder",
                                 str(path)) from None


def _about(exc: OSError, tmp_path: Path) -> bool:
    names = {str(exc.filename) if exc.filename is not None else None,
             str(exc.filename2) if getattr(exc, "filename2", None) is not None else None}
    return str(tmp_path) in names


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, suffix: str = ".tmp") -> Path:
    """Call ``write(tmp_path)``, then rename ``tmp_path`` to ``path`` (same folder: atomic on POSIX).

    Args:
        path: the final file; parent folders are created.
        write: writes the complete content to the temporary path it is given.
        suffix: ending of the temporary name, for writers that infer the format from it
            (e.g. ``".nii.gz"`` makes nibabel compress).

    Returns:
        ``path`` as a :class:`~pathlib.Path`. On any exception the temporary file is removed and
        the exception propagates; an existing file at ``path`` is left untouched.

    Raises:
        IsADirectoryError: ``path`` is an existing folder (checked before ``write`` is called).
        NotADirectoryError: a parent of ``path`` is a file.
        OSError: any other failure writing or renaming, with ``filename`` = ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, expected a file name", str(path))
    _make_parent(path)
    tmp_path = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path, suffix), suffix=suffix, dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        write(tmp_path)
        os.chmod(tmp_path, _FILE_MODE & ~_current_umask())  # mkstemp creates 0600 files
        os.replace(tmp_path, path)
    except BaseException as exc:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None and (
                tmp_path is None or _about(exc, tmp_path)):
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    return path
