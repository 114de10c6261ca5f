"""``xraysyn evaluate simulated|real``: the paper's evaluation of trained models (Table 1, Table 4)."""

from __future__ import annotations

import typer

from xraysyn.cli import app

evaluate_app = typer.Typer(help="Evaluate trained models: held-out simulated cases (Table 1, Table 4) and real "
                                "radiographs (Table 1 real part, FID).", no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")
