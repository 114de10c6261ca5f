"""Helpers shared by CLI commands: one clear message per user error, option checks, angles."""

from __future__ import annotations

import contextlib
import math
import signal
import threading

import typer

# Exit status for bad arguments or unreadable input (typer's own usage errors also exit with 2).
EXIT_BAD_INPUT = 2
# Exit status when the example data cannot be fetched (e.g. offline).
EXIT_FETCH_FAILED = 1
DEGREES_PER_TURN = 360.0
# Exit status after SIGTERM (the shell's 128 + signal number), once the staged outputs are removed.
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM arrived during a command (``kill``, ``timeout``, a job scheduler). Raised in the main
    thread so that every ``finally`` runs: staging folders and temporary files are removed and the
    final names keep what they held before, as on Ctrl-C."""


@contextlib.contextmanager
def _sigterm_raises():
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(f"stopped by signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _error_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename!s}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    if isinstance(exc, MemoryError):
        return f"out of memory{': ' + str(exc) if str(exc) else ''}; use a smaller size"
    return str(exc) or type(exc).__name__


@contextlib.contextmanager
def user_errors():
    """Report user errors as one red line on stderr and exit: 2 for bad input, 1 for a failed fetch.

    Bad input covers bad option values (``ValueError``), unreadable or unwritable paths (every
    ``OSError``: missing, permission denied, exists, is a folder, disk full) and requests that do
    not fit in memory (``MemoryError``; the memory guard usually refuses those earlier). A SIGTERM
    during the command unwinds it like Ctrl-C (staged outputs removed) and exits with
    :data:`EXIT_TERMINATED`.
    """
    from xraysyn.data.example import ExampleDataError

    try:
        with _sigterm_raises():
            yield
    except Terminated as exc:
        typer.secho(f"error: {exc}; partial outputs were removed", err=True, fg=typer.colors.RED)
        raise typer.Exit(EXIT_TERMINATED) from None
    except ExampleDataError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(EXIT_FETCH_FAILED) from None
    except (ValueError, OSError, MemoryError) as exc:
        typer.secho(f"error: {_error_line(exc)}", err=True, fg=typer.colors.RED)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def require_finite(value: float | None, option: str, *, minimum: float | None = None,
                   maximum: float | None = None, strict_minimum: bool = False, unit: str = "") -> None:
    """Refuse NaN/inf and values outside ``[minimum, maximum]`` (``(minimum, ...`` if strict)."""
    if value is None:
        return
    unit = f" {unit}" if unit else ""
    if not math.isfinite(value):
        raise ValueError(f"{option} must be a finite number, got {value}")
    if minimum is not None and (value <= minimum if strict_minimum else value < minimum):
        relation = ">" if strict_minimum else ">="
        raise ValueError(f"{option} must be {relation} {minimum:g}{unit}, got {value:g}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{option} must be <= {maximum:g}{unit}, got {value:g}")


def reduce_angles_deg(angles: list[float]) -> list[float]:
    """Angles in degrees reduced to (-180, 180] in float64 before anything rounds them to float32.

    ``1e9`` degrees is 280° = -80°; reduced first, the float32 pose tensors keep that exactly
    (float32 holds only ~7 significant digits, so ``1e9`` itself would turn into ~250°).
    """
    reduced = []
    for angle in angles:
        r = math.remainder(angle, DEGREES_PER_TURN)
        reduced.append(DEGREES_PER_TURN / 2 if r == -DEGREES_PER_TURN / 2 else r)
    return reduced
