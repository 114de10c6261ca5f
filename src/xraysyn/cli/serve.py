"""``xraysyn serve``: the local web viewer (:mod:`xraysyn.viewer`) on http://HOST:PORT."""

from __future__ import annotations

import ipaddress

import typer

from xraysyn.cli import app
from xraysyn.cli.common import user_errors

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: Default upload limit, MB (the app's DEFAULT_MAX_UPLOAD_BYTES, 64 MiB).
DEFAULT_MAX_UPLOAD_MB = 64.0
BYTES_PER_MB = 1024**2
HIGHEST_PORT = 65535
#: Host header names accepted by a server bound to the loopback interface (guards against DNS rebinding: a web
#: page of another site whose name resolves to 127.0.0.1 cannot drive the viewer).
LOOPBACK_HOST_NAMES = ["127.0.0.1", "localhost"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) binds to this computer only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_serve_options(host: str, port: int, max_upload_mb: float) -> int:
    """Validate the options; returns the upload limit in bytes."""
    if not host or any(ch.isspace() for ch in host):
        raise ValueError(f"--host must be a host name or an address, got {host!r}")
    if not 0 <= port <= HIGHEST_PORT:
        raise ValueError(f"--port must be in 0..{HIGHEST_PORT} (0: any free port), got {port}")
    if not max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb must be a positive number of megabytes, got {max_upload_mb}")
    return int(max_upload_mb * BYTES_PER_MB)


@app.command("serve")
def serve_command(
    host: str = typer.Option(DEFAULT_HOST, "--host", help="Interface to listen on (default: this computer only)."),
    port: int = typer.Option(DEFAULT_PORT, "--port", help="TCP port."),
    weights: str = typer.Option(None, "--weights", help="A file made by `xraysyn export` (default: shipped)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    max_upload_mb: float = typer.Option(DEFAULT_MAX_UPLOAD_MB, "--max-upload-mb", help="Largest upload, MB."),
):
    """A local web viewer: open a radiograph, sweep the novel views, toggle bone suppression, download results.
    Uploaded files and results live in a temporary folder per browser session, removed when the page is closed
    or the server stops."""
    with user_errors():
        limit = check_serve_options(host, port, max_upload_mb)
        import uvicorn

        from xraysyn.synthesis.model import XraySyn
        from xraysyn.viewer import create_app

        model = XraySyn.from_pretrained(weights, device=device)
        local = is_loopback(host)
        viewer = create_app(model, max_upload_bytes=limit,
                            allowed_hosts=LOOPBACK_HOST_NAMES if host in LOOPBACK_HOST_NAMES else None)
    if not local:
        typer.secho(f"warning: listening on {host}, not only on this computer: anyone who can reach this "
                    f"machine on port {port} can upload images and see the results (the viewer has no login). "
                    f"Use --host {DEFAULT_HOST} unless you mean it.", fg=typer.colors.YELLOW, err=True)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"XraySyn viewer ({model.name}, {model.source}) on http://{shown}:{port}/ — Ctrl-C stops it")
    uvicorn.run(viewer, host=host, port=port, log_level="warning")
