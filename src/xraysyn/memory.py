"""Memory guard: estimate what a request needs before allocating it, refuse what cannot fit.

The limit is the memory the operating system reports as available now (Linux ``MemAvailable``
in ``/proc/meminfo``; elsewhere ``os.sysconf`` physical pages), overridable with the environment
variable ``XRAYSYN_MEMORY_LIMIT_MB`` (e.g. for a container whose cgroup limit is lower).
"""

from __future__ import annotations

import os

__all__ = ["MemoryLimitError", "available_memory_bytes", "require_memory", "FLOAT32_BYTES", "MEMORY_LIMIT_ENV"]

FLOAT32_BYTES = 4
MEMORY_LIMIT_ENV = "XRAYSYN_MEMORY_LIMIT_MB"
_BYTES_PER_MB = 2**20


class MemoryLimitError(ValueError):
    """A request would need more memory than is available (message: the estimate and the limit)."""


def available_memory_bytes() -> int:
    """Bytes this process may allocate now: ``$XRAYSYN_MEMORY_LIMIT_MB`` if set, else what the OS reports."""
    override = os.environ.get(MEMORY_LIMIT_ENV)
    if override:
        try:
            megabytes = float(override)
        except ValueError:
            raise ValueError(f"${MEMORY_LIMIT_ENV} must be a number of MiB, got {override!r}") from None
        if not megabytes > 0:
            raise ValueError(f"${MEMORY_LIMIT_ENV} must be positive, got {override!r}")
        return int(megabytes * _BYTES_PER_MB)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file states kB (KiB)
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _mib(nbytes: float) -> str:
    return f"{nbytes / _BYTES_PER_MB:,.0f} MiB"


def require_memory(estimate_bytes: float, what: str) -> None:
    """Raise :class:`MemoryLimitError` naming ``what``, the estimate and the limit when it cannot fit."""
    limit = available_memory_bytes()
    if estimate_bytes > limit:
        raise MemoryLimitError(f"{what} needs about {_mib(estimate_bytes)} but only {_mib(limit)} is available "
                               f"(limit from the OS, or ${MEMORY_LIMIT_ENV}); use a smaller size")
