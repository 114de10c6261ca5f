"""Helpers shared by CLI commands: turning library errors into one clear message."""

from __future__ import annotations

import contextlib

import typer

# Exit status for bad arguments or unreadable input (typer's own usage errors also exit with 2).
EXIT_BAD_INPUT = 2
# Exit status when the example data cannot be fetched (e.g. offline).
EXIT_FETCH_FAILED = 1


@contextlib.contextmanager
def user_errors():
    """Report input errors as one red line on stderr and exit: 2 for bad input, 1 for a failed fetch."""
    from xraysyn.data.example import ExampleDataError

    try:
        yield
    except ExampleDataError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(EXIT_FETCH_FAILED) from None
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(EXIT_BAD_INPUT) from None
