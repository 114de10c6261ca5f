"""Where numba may keep its compiled kernels on disk, with a fallback when no usual place is writable.

numba caches a ``cache=True`` function beside its source (``__pycache__``), in
``$NUMBA_CACHE_DIR`` or in the user's cache folder (``~/.cache/numba``); when none of them is
writable (a read-only install and no writable home: a service account, a read-only container)
decorating the function fails with ``cannot cache function ...``. :func:`disk_cache_for` asks
numba's own cache locators whether one applies, and otherwise points numba at a fresh temporary
folder of this process, so the kernels compile as usual and give the same results.
"""

from __future__ import annotations

import os
import tempfile

__all__ = ["disk_cache_for", "TEMPORARY_CACHE_PREFIX"]

TEMPORARY_CACHE_PREFIX = "xraysyn-numba-cache-"


def _probe() -> None:  # a plain function whose code object numba's locators can inspect
    pass


def _a_locator_applies(source_file: str) -> bool:
    from numba.core import caching

    implementation = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)  # newer / older numba
    locator_classes = getattr(implementation, "_locator_classes", None)
    if not locator_classes:  # a numba without this internal list: let numba decide itself
        return True
    return any(cls.from_function(_probe, source_file) is not None for cls in locator_classes)


def disk_cache_for(source_file: str | os.PathLike) -> bool:
    """The ``cache=`` value for numba kernels defined in ``source_file``.

    ``True`` when numba can cache them somewhere (after setting ``numba.config.CACHE_DIR`` to a
    temporary folder if none of its usual places is writable); ``False`` (compile in memory only)
    when not even a temporary folder can be created.
    """
    import numba

    source_file = os.fspath(source_file)
    if _a_locator_applies(source_file):
        return True
    try:
        numba.config.CACHE_DIR = tempfile.mkdtemp(prefix=TEMPORARY_CACHE_PREFIX)
    except OSError:
        return False
    return _a_locator_applies(source_file)
