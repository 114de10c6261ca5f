"""Helpers shared by CLI commands: turning library errors into one clear message."""

from __future__ import annotations

import contextlib

import typer


@contextlib.contextmanager
def user_errors():
    """Report ``ValueError``/``FileNotFoundError`` as one line on stderr and exit with status 2."""
    try:
        yield
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
