"""The ``xraysyn`` command line. Each sub-module defines its commands and registers them here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="xraysyn",
    help="Differentiable X-ray simulation and single-radiograph view synthesis (XraySyn).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Imported for their side effect of adding commands to ``app``.
    from xraysyn.cli import project  # noqa: F401
    from xraysyn.cli import phantom  # noqa: F401
    from xraysyn.cli import simulate  # noqa: F401
    from xraysyn.cli import data  # noqa: F401
    from xraysyn.cli import demo  # noqa: F401
    from xraysyn.cli import train  # noqa: F401
    from xraysyn.cli import evaluate  # noqa: F401
    from xraysyn.cli import synthesize  # noqa: F401
    from xraysyn.cli import serve  # noqa: F401


_register()
