"""``python -m xraysyn …`` runs the command line (also under ``torchrun … -m xraysyn train prior …``)."""

from xraysyn.cli import app

if __name__ == "__main__":
    app(prog_name="xraysyn")
