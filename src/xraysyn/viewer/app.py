"""The viewer's ASGI application (Starlette): the page, its static assets and a small JSON API.

Endpoints (every error is JSON ``{"error": message}`` with a 4xx status):

===========================================  ====================================================================
``GET /``                                    the page (``static/index.html``)
``GET /static/...``                          its script and style sheet (nothing is loaded from elsewhere)
``GET /api/info``                            model, views, limits; starts a session (cookie) and keeps it alive
``POST /api/upload?filename=F``              the file's bytes as the body (``check_view=0`` skips the frontal-view
                                             check, ``elevation=1`` adds the elevation sweep) → 202 with the study
``GET /api/study/{id}``                      state, progress and stage; once ``done`` the views' angles
``GET /api/study/{id}/image/{kind}/{i}``     PNG of one view (:data:`~xraysyn.viewer.compute.KINDS`)
``GET /api/study/{id}/download/{name}``      a file of :data:`~xraysyn.viewer.compute.DOWNLOADS`
``DELETE /api/study/{id}``                   drop a study and its files
``POST /api/session/end``                    end the session: its folder is removed (the page sends it on close)
===========================================  ====================================================================

Uploads are the raw bytes of the file (no multipart form: nothing is spooled to a temporary file outside the
session's folder), at most ``max_upload_bytes``. The computation runs in one worker thread, off the event loop,
one study at a time; the page polls the study's state. Studies are only found within the session that uploaded
them, so two clients never see each other's results.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from xraysyn.synthesis.inputs import InputImageError
from xraysyn.viewer.compute import DOWNLOADS, INPUT_VIEW_KINDS, KINDS, load_upload, run_study, view_grid
from xraysyn.viewer.sessions import (SESSION_IDLE_S, SIGNATURE_BYTES, UPLOAD_STEM, Session, SessionEnded,
                                     SessionStore, display_name, download_name, stored_suffix)

__all__ = ["create_app", "SESSION_COOKIE", "DEFAULT_MAX_UPLOAD_BYTES", "STATIC_DIR"]

STATIC_DIR = Path(__file__).with_name("static")
SESSION_COOKIE = "xraysyn_session"
#: Default upload limit, bytes: 64 MiB holds an uncompressed 16-bit 4300x4300 DR image (~37 MB), the largest
#: common chest detector (43x43 cm at 0.1 mm), with room for DICOM headers.
DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024**2
#: Seconds between sweeps for idle sessions.
EXPIRE_CHECK_S = 60.0
#: Sent with the page: scripts, styles and images from this server only (and the page's own blob: URLs).
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
BYTES_PER_MB = 1024**2
#: Suffix of an upload while it arrives (renamed by its content once complete).
PARTIAL_SUFFIX = ".part"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _flag(request: Request, name: str, default: bool) -> bool:
    value = request.query_params.get(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"query parameter {name} must be 0 or 1, got {value!r}")


class _Viewer:
    """The app's state: the model, the sessions, the worker thread."""

    def __init__(self, model, store: SessionStore, max_upload_bytes: int):
        self.model, self.store, self.max_upload_bytes = model, store, max_upload_bytes
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xraysyn-viewer")

    # ------------------------------------------------------------------ sessions
    def session(self, request: Request) -> Session | None:
        return self.store.get(request.cookies.get(SESSION_COOKIE))

    def session_or_new(self, request: Request) -> tuple[Session, bool]:
        session = self.session(request)
        if session is not None:
            return session, False
        self.store.expire()
        return self.store.create(), True

    @staticmethod
    def with_cookie(response: Response, session: Session, new: bool) -> Response:
        if new:
            response.set_cookie(SESSION_COOKIE, session.token, max_age=int(SESSION_IDLE_S * 48), httponly=True,
                                samesite="strict", path="/")
        return response

    def study(self, request: Request):
        session = self.session(request)
        study = session.study(request.path_params["study"]) if session is not None else None
        if study is None:
            raise LookupError("no such study in this session (it may have expired or been replaced); "
                              "open the radiograph again")
        return study

    # ------------------------------------------------------------------ endpoints
    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                                                                "Cache-Control": "no-store"})

    async def info(self, request: Request) -> Response:
        session, new = self.session_or_new(request)
        azimuths, _ = view_grid(False)
        _, elevations = view_grid(True)
        model = self.model
        body = {"model": model.name, "weights": Path(str(model.source)).name, "image_size": model.image_size,
                "azimuth_deg": azimuths, "elevation_sweep_deg": elevations,
                "max_upload_bytes": self.max_upload_bytes, "kinds": list(KINDS),
                "downloads": {name: about for name, (_, _, about) in DOWNLOADS.items()},
                "studies": [s.status() for s in list(session.studies.values())]}
        return self.with_cookie(JSONResponse(body), session, new)

    async def upload(self, request: Request) -> Response:
        try:
            check_view = _flag(request, "check_view", True)
            elevation = _flag(request, "elevation", False)
        except ValueError as error:
            return _error(400, str(error))
        limit = self.max_upload_bytes
        too_big = (f"the file is larger than the upload limit of {limit / BYTES_PER_MB:.1f} MB "
                   "(start the viewer with a larger --max-upload-mb)")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _error(413, too_big)
        session, new = self.session_or_new(request)
        name = display_name(request.query_params.get("filename"))
        try:
            study = session.new_study(name)
        except SessionEnded as error:
            return _error(409, str(error))
        part = study.folder / f"{UPLOAD_STEM}{PARTIAL_SUFFIX}"
        size, head = 0, b""
        try:
            with part.open("wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        break
                    if len(head) < SIGNATURE_BYTES:
                        head += chunk[:SIGNATURE_BYTES - len(head)]
                    out.write(chunk)
        except ClientDisconnect:  # the client went away mid-upload: keep nothing (nobody reads this answer)
            session.drop_study(study.id)
            return _error(400, f"{name}: the upload was interrupted")
        except BaseException:  # the server stops (cancellation) or the disk fails: keep nothing
            session.drop_study(study.id)
            raise
        if size > limit or size == 0:
            session.drop_study(study.id)
            return self.with_cookie(_error(413, too_big) if size else _error(400, f"{name}: the file is empty"),
                                    session, new)
        path = part.rename(part.with_suffix(stored_suffix(head)))
        try:
            radiograph = await run_in_threadpool(load_upload, path, name, check_view=check_view)
        except InputImageError as error:
            session.drop_study(study.id)
            return self.with_cookie(_error(422, str(error)), session, new)
        self.executor.submit(run_study, self.model, study, radiograph, elevation_sweep=elevation)
        return self.with_cookie(JSONResponse(study.status(), status_code=202), session, new)

    async def status(self, request: Request) -> Response:
        try:
            return JSONResponse(self.study(request).status(), headers={"Cache-Control": "no-store"})
        except LookupError as error:
            return _error(404, str(error))

    async def image(self, request: Request) -> Response:
        try:
            study = self.study(request)
        except LookupError as error:
            return _error(404, str(error))
        kind, index = request.path_params["kind"], request.path_params["index"]
        if kind not in KINDS:
            return _error(404, f"no image kind {kind!r}; kinds: {', '.join(KINDS)}")
        if study.state != "done":
            return _error(409, f"the study is {study.state}, its images are not ready")
        data = study.images.get((kind, index))
        if data is None:
            count = 1 if kind in INPUT_VIEW_KINDS else len(study.azimuth_deg) * len(study.elevation_deg)
            return _error(404, f"{kind} has views 0 to {count - 1}, not {index}")
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def download(self, request: Request) -> Response:
        try:
            study = self.study(request)
        except LookupError as error:
            return _error(404, str(error))
        name = request.path_params["name"]
        if name not in DOWNLOADS:
            return _error(404, f"no download {name!r}; downloads: {', '.join(DOWNLOADS)}")
        path = study.downloads.get(name)
        if path is None or not path.is_file():
            return _error(409, f"{name} is not written yet (files: {study.info.get('files', study.state)})")
        return FileResponse(path, filename=download_name(study.name, name), media_type=_media_type(name))

    async def drop(self, request: Request) -> Response:
        session = self.session(request)
        if session is None or not session.drop_study(request.path_params["study"]):
            return _error(404, "no such study in this session")
        return Response(status_code=204)

    async def end(self, request: Request) -> Response:
        ended = self.store.end(request.cookies.get(SESSION_COOKIE))
        response = JSONResponse({"ended": ended})
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # ------------------------------------------------------------------ lifetime
    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        sweeper = asyncio.create_task(self._sweep())
        try:
            yield
        finally:
            sweeper.cancel()
            self.shutdown()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_CHECK_S)
            self.store.expire()

    def shutdown(self) -> None:
        """Cancel every study, wait for the worker, remove every folder."""
        self.store.close()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.store.close()  # again: a study that was writing when the first close came may have left files


def _media_type(name: str) -> str:
    return {".zip": "application/zip", ".gif": "image/gif", ".gz": "application/gzip", ".dcm": "application/dicom",
            ".png": "image/png"}[Path(name).suffix]


def create_app(model, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, work_dir: str | Path | None = None,
               allowed_hosts: list[str] | None = None) -> Starlette:
    """The viewer's ASGI app around a loaded :class:`~xraysyn.synthesis.model.XraySyn`.

    Args:
        model: the model (shared by all sessions; one computation runs at a time).
        max_upload_bytes: largest accepted upload, bytes.
        work_dir: folder in which the viewer's temporary root is made (default: the system's temporary folder).
        allowed_hosts: accepted ``Host`` header names (e.g. ``["127.0.0.1", "localhost"]`` for a server bound to
            the loopback interface: pages of other sites resolving to 127.0.0.1 cannot use it); None accepts any.

    The app's ``state.viewer`` holds the sessions (``.store``); its shutdown (lifespan) removes every folder.
    """
    if isinstance(max_upload_bytes, bool) or not (isinstance(max_upload_bytes, int) and max_upload_bytes > 0):
        raise ValueError(f"max_upload_bytes must be a positive integer, got {max_upload_bytes!r}")
    viewer = _Viewer(model, SessionStore(work_dir), max_upload_bytes)
    routes = [
        Route("/", viewer.index),
        Route("/api/info", viewer.info),
        Route("/api/upload", viewer.upload, methods=["POST"]),
        Route("/api/study/{study}", viewer.status),
        Route("/api/study/{study}", viewer.drop, methods=["DELETE"]),
        Route("/api/study/{study}/image/{kind}/{index:int}", viewer.image),
        Route("/api/study/{study}/download/{name}", viewer.download),
        Route("/api/session/end", viewer.end, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []
    app = Starlette(routes=routes, middleware=middleware, lifespan=viewer.lifespan)
    app.state.viewer = viewer
    return app
