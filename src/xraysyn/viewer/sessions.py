"""Per-session state of the viewer: one temporary folder per browser session, the studies (uploaded radiographs)
computed in it and their cached images.

Every file the viewer writes lies under one root folder (``tempfile.mkdtemp``), one sub-folder per session and
one per study inside it::

    <root>/<session folder>/<study id>/upload.dcm           the uploaded bytes (fixed name, suffix by content)
    <root>/<session folder>/<study id>/synthesis/...        write_synthesis (PNGs, GIF, NIfTI)
    <root>/<session folder>/<study id>/suppression/...      write_suppression (PNG, DICOM)

A session folder is removed when the session ends (the page says so when it is closed, or it was idle for
:data:`SESSION_IDLE_S`), the root when the store is closed (the server stops). Names from the client are never
used as paths: an upload is stored under a fixed name whose suffix follows its content (:func:`stored_suffix`),
and the client's name is only shown (:func:`display_name`); session tokens and study ids are random and looked
up, never joined to paths unchecked.
"""

from __future__ import annotations

import re
import secrets
import shutil
import tempfile
import threading
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from xraysyn.data.radiograph import PILLOW_SUFFIXES

__all__ = ["SessionStore", "Session", "SessionEnded", "Study", "stored_suffix", "display_name", "download_name",
           "IMAGE_SIGNATURES", "SESSION_IDLE_S", "MAX_SESSIONS", "MAX_STUDIES_PER_SESSION", "DICOM_SUFFIX",
           "UPLOAD_STEM"]

#: A session unseen for this long (seconds) is ended and its folder removed. The page polls while it is open
#: (every few hundred ms while a study computes) and sends a keep-alive every minute (viewer.js), so only
#: closed or crashed tabs reach it.
SESSION_IDLE_S = 30 * 60
#: Sessions held at once; the least recently seen is ended to make room for a new one (bounds disk and memory).
MAX_SESSIONS = 16
#: Studies kept per session; the oldest is dropped when another is uploaded (measured with the cpu64 weights on
#: the example CR: 0.6 MB of images in memory, 1.8 MB with the elevation sweep, and ~5 MB of files each).
MAX_STUDIES_PER_SESSION = 4
#: Bytes of randomness in a session token (URL-safe base64 of 32 bytes: 43 characters).
TOKEN_BYTES = 32
#: Bytes of randomness in a study id (hex: 16 characters).
STUDY_ID_BYTES = 8
STUDY_ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{43}$")
#: Suffix of a stored upload that is not a Pillow image: read as DICOM (load_radiograph tries every other
#: suffix as DICOM, and says so clearly when the bytes are not DICOM).
DICOM_SUFFIX = ".dcm"
#: Stem of every stored upload (the client's file name is never used as a path).
UPLOAD_STEM = "upload"
#: Longest display name kept (characters); longer names are shortened in the middle.
MAX_DISPLAY_NAME = 120


#: DICOM Part 10 files: a 128-byte preamble, then "DICM" (PS3.10 7.1). The preamble is free: some files put a TIFF
#: header there (dual-personality files, e.g. the example CR), so this is checked before the image signatures.
DICOM_PREAMBLE_BYTES, DICOM_MAGIC = 128, b"DICM"
#: File signatures ("magic numbers") of the Pillow formats load_radiograph reads, and the suffix an upload that
#: starts with one is stored with (PNG: ISO/IEC 15948; JPEG: SOI marker + the next marker's 0xFF; TIFF: both byte
#: orders; BMP: "BM").
IMAGE_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"II*\x00", ".tif"),
                    (b"MM\x00*", ".tif"), (b"BM", ".bmp"))
#: Bytes of an upload's head that :func:`stored_suffix` needs.
SIGNATURE_BYTES = DICOM_PREAMBLE_BYTES + len(DICOM_MAGIC)


def stored_suffix(head: bytes) -> str:
    """The suffix an upload is stored with, from its first :data:`SIGNATURE_BYTES` bytes (never from the client's
    file name): :data:`DICOM_SUFFIX` for a DICOM Part 10 file, else that of a Pillow image format it starts with
    (:data:`IMAGE_SIGNATURES`), else :data:`DICOM_SUFFIX` again (DICOM without preamble; a file that is not DICOM
    either is then refused by the DICOM reader with a clear message)."""
    if head[DICOM_PREAMBLE_BYTES:DICOM_PREAMBLE_BYTES + len(DICOM_MAGIC)] == DICOM_MAGIC:
        return DICOM_SUFFIX
    for signature, suffix in IMAGE_SIGNATURES:
        if head.startswith(signature):
            return suffix
    return DICOM_SUFFIX


def display_name(filename: str | None) -> str:
    """The last component of a client's file name (after any ``/`` or ``\\``), without control or format
    characters, at most :data:`MAX_DISPLAY_NAME` characters; ``upload`` when nothing is left. Only shown to the
    user, never used as a path."""
    text = str(filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C").strip()
    if text in ("", ".", ".."):
        return UPLOAD_STEM
    if len(text) > MAX_DISPLAY_NAME:
        half = (MAX_DISPLAY_NAME - 1) // 2
        text = text[:half] + "…" + text[-half:]
    return text


def download_name(display: str, name: str) -> str:
    """``<input stem>_<name>`` with only ``[A-Za-z0-9._-]`` characters, for a download's Content-Disposition."""
    stem = display
    for suffix in (DICOM_SUFFIX, ".dicom") + PILLOW_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or UPLOAD_STEM
    return f"{stem[:60]}_{name}"


@dataclass
class Study:
    """One uploaded radiograph: its folder, the state of its computation and, once done, its images.

    ``state`` goes ``queued`` → ``running`` → ``done`` or ``error``; ``progress`` is in ``[0, 1]``; ``images``
    maps ``(kind, view index)`` to PNG bytes; ``downloads`` a download name to its file in ``folder``.
    """

    id: str
    name: str
    folder: Path
    state: str = "queued"
    progress: float = 0.0
    stage: str = "waiting for the model"
    error: str | None = None
    azimuth_deg: list[float] = field(default_factory=list)
    elevation_deg: list[float] = field(default_factory=list)
    images: dict[tuple[str, int], bytes] = field(default_factory=dict)
    downloads: dict[str, Path] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def update(self, *, state: str | None = None, progress: float | None = None, stage: str | None = None) -> None:
        if state is not None:
            self.state = state
        if progress is not None:
            self.progress = min(1.0, max(self.progress, float(progress)))
        if stage is not None:
            self.stage = stage

    def status(self) -> dict:
        """What the page polls: state, progress, stage, error, and the views' angles once done."""
        out = {"id": self.id, "name": self.name, "state": self.state, "progress": round(self.progress, 3),
               "stage": self.stage, "error": self.error}
        if self.state == "done":
            out.update(azimuth_deg=self.azimuth_deg, elevation_deg=self.elevation_deg,
                       downloads=sorted(self.downloads), **self.info)
        return out


class SessionEnded(RuntimeError):
    """A study was asked of a session that has just ended."""


class Session:
    """One browser session: a token (the cookie), a folder and its studies (oldest first)."""

    def __init__(self, token: str, folder: Path):
        self.token, self.folder = token, folder
        self.studies: OrderedDict[str, Study] = OrderedDict()
        self.last_seen = time.monotonic()
        self.lock = threading.Lock()
        self.closed = False

    def new_study(self, name: str) -> Study:
        """A study with its own empty folder; the oldest beyond :data:`MAX_STUDIES_PER_SESSION` is dropped."""
        with self.lock:
            if self.closed:
                raise SessionEnded("this session has ended; reload the page")
            study_id = secrets.token_hex(STUDY_ID_BYTES)
            folder = self.folder / study_id
            folder.mkdir(parents=True)  # the session folder too, if an emptied one was removed
            study = Study(id=study_id, name=name, folder=folder)
            self.studies[study_id] = study
            while len(self.studies) > MAX_STUDIES_PER_SESSION:
                _, old = self.studies.popitem(last=False)
                _remove_study(old)
            return study

    def study(self, study_id: str) -> Study | None:
        if not STUDY_ID_PATTERN.match(study_id):
            return None
        with self.lock:
            return self.studies.get(study_id)

    def drop_study(self, study_id: str) -> bool:
        with self.lock:
            study = self.studies.pop(study_id, None) if STUDY_ID_PATTERN.match(study_id) else None
        if study is None:
            return False
        _remove_study(study)
        return True

    def close(self) -> None:
        with self.lock:
            self.closed = True
            studies = list(self.studies.values())
            self.studies.clear()
        for study in studies:
            study.cancelled.set()
        shutil.rmtree(self.folder, ignore_errors=True)


def _remove_study(study: Study) -> None:
    study.cancelled.set()
    study.images.clear()
    shutil.rmtree(study.folder, ignore_errors=True)


class SessionStore:
    """Sessions by token, all folders under one temporary root that :meth:`close` removes.

    Args:
        parent: folder in which the root is created (default: the system's temporary folder).
        idle_s: seconds after which an unseen session is ended (:meth:`expire`).
        max_sessions: sessions held at once.
    """

    def __init__(self, parent: str | Path | None = None, *, idle_s: float = SESSION_IDLE_S,
                 max_sessions: int = MAX_SESSIONS):
        if not idle_s > 0:
            raise ValueError(f"idle_s must be a positive number of seconds, got {idle_s!r}")
        if not (isinstance(max_sessions, int) and max_sessions >= 1):
            raise ValueError(f"max_sessions must be a positive integer, got {max_sessions!r}")
        self.root = Path(tempfile.mkdtemp(prefix="xraysyn-viewer-", dir=parent))
        self.idle_s, self.max_sessions = float(idle_s), max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self.closed = False

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, token: str | None) -> Session | None:
        """The live session of ``token`` (marked as seen now), or None."""
        if not token or not TOKEN_PATTERN.match(token):
            return None
        with self._lock:
            session = self._sessions.get(token)
            if session is not None:
                session.last_seen = time.monotonic()
                self._sessions.move_to_end(token)
            return session

    def create(self) -> Session:
        """A new session with its own folder; the least recently seen is ended when the store is full."""
        evicted = []
        with self._lock:
            if self.closed:
                raise RuntimeError("the viewer is shutting down")
            token = secrets.token_urlsafe(TOKEN_BYTES)
            folder = Path(tempfile.mkdtemp(prefix="session-", dir=self.root))
            session = Session(token, folder)
            self._sessions[token] = session
            while len(self._sessions) > self.max_sessions:
                evicted.append(self._sessions.popitem(last=False)[1])
        for old in evicted:
            old.close()
        return session

    def end(self, token: str | None) -> bool:
        """End the session of ``token``: its folder is removed. False when there was none."""
        with self._lock:
            session = self._sessions.pop(token, None) if token else None
        if session is None:
            return False
        session.close()
        return True

    def expire(self, now: float | None = None) -> int:
        """End every session unseen for :attr:`idle_s`; returns how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            stale = [t for t, s in self._sessions.items() if now - s.last_seen > self.idle_s]
            sessions = [self._sessions.pop(t) for t in stale]
        for session in sessions:
            session.close()
        return len(sessions)

    def close(self) -> None:
        """End every session and remove the root folder (the server stops)."""
        with self._lock:
            self.closed = True
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            session.close()
        shutil.rmtree(self.root, ignore_errors=True)
