"""Atomic file writing: the one place every writer in the package goes through.

Data lands in a temporary file in the target folder and is renamed into place only when the
writer succeeded, so a crash or a bad input never leaves a partial file under the final name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write"]

_FILE_MODE = 0o666  # what open() would use; the process umask is applied on top


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, _FILE_MODE & ~_current_umask())  # mkstemp creates 0600 files
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path
