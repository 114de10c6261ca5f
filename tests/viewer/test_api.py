"""The viewer's HTTP API (Starlette test client, a tiny random XraySyn): every endpoint, the images against the
model's own results, bad and oversize uploads, path tricks, two clients at once, session folders and their
removal, and the `xraysyn serve` options."""

from __future__ import annotations

import io
import os
import tempfile
import threading
import time
import zipfile

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx2", reason="Starlette's test client needs httpx2 (pip install -e '.[test]')")

from PIL import Image  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from support.tiny_xraysyn import refine_export, simulated_frontal, write_export  # noqa: E402
from xraysyn.data.radiograph import load_radiograph  # noqa: E402
from xraysyn.synthesis.model import XraySyn  # noqa: E402
from xraysyn.viewer import create_app  # noqa: E402
from xraysyn.viewer.app import SESSION_COOKIE  # noqa: E402
from xraysyn.viewer.compute import AZIMUTHS_DEG, DOWNLOADS, ELEVATIONS_DEG  # noqa: E402
from xraysyn.viewer.sessions import (MAX_STUDIES_PER_SESSION, SIGNATURE_BYTES, SessionStore,  # noqa: E402
                                     display_name, download_name, stored_suffix)

#: Seconds to wait for one study of the tiny model (~1 s alone on one core).
STUDY_TIMEOUT_S = 60.0
#: Tolerance between a served 8-bit PNG and the same image computed here (rounding of both: one grey level).
GREY_LEVEL_TOLERANCE = 1


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> XraySyn:
    return XraySyn.from_pretrained(write_export(refine_export(), tmp_path_factory.mktemp("tiny") / "tiny.pt"))


def png8(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def frontal_png() -> bytes:
    return png8(simulated_frontal(128, seed=5))


@pytest.fixture(scope="module")
def other_png() -> bytes:
    return png8(simulated_frontal(128, seed=9))


@pytest.fixture
def systemp(tmp_path, monkeypatch):
    """The system's temporary folder for this test: the viewer's root lies in it, nothing else may."""
    folder = tmp_path / "systemp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def app(model, systemp):
    return create_app(model)


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.int16)


def upload(client, data: bytes, filename: str = "chest.png", **params):
    query = {"filename": filename, **{k: str(v) for k, v in params.items()}}
    return client.post("/api/upload", params=query, content=data)


def wait(client, study_id: str, *, files: bool = True) -> dict:
    deadline = time.monotonic() + STUDY_TIMEOUT_S
    while time.monotonic() < deadline:
        status = client.get(f"/api/study/{study_id}").json()
        if status["state"] == "error" or (status["state"] == "done" and not (files and status["files"] == "writing")):
            return status
        time.sleep(0.05)
    raise AssertionError(f"study {study_id} not done after {STUDY_TIMEOUT_S} s: {status}")


def all_files(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(root, f), folder) for root, _, files in os.walk(folder) for f in files)


# ------------------------------------------------------------------------------------------- the whole path
def test_info_starts_a_session(app):
    with TestClient(app) as client:
        response = client.get("/api/info")
        assert response.status_code == 200
        info = response.json()
        assert info["azimuth_deg"] == list(AZIMUTHS_DEG) and len(AZIMUTHS_DEG) == 21
        assert info["azimuth_deg"][0] == -9.0 and info["azimuth_deg"][-1] == 9.0 and 0.0 in info["azimuth_deg"]
        assert set(info["downloads"]) == set(DOWNLOADS) and info["image_size"] == 32
        cookie = response.cookies[SESSION_COOKIE]
        assert "httponly" in response.headers["set-cookie"].lower()
        assert "samesite=strict" in response.headers["set-cookie"].lower()
        again = client.get("/api/info")
        assert SESSION_COOKIE not in again.cookies and client.cookies[SESSION_COOKIE] == cookie
        assert len(app.state.viewer.store) == 1


def test_page_and_assets_are_local(app):
    with TestClient(app) as client:
        page = client.get("/")
        assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
        for asset in ("/static/viewer.js", "/static/viewer.css"):
            assert client.get(asset).status_code == 200
        for text in (page.text, client.get("/static/viewer.js").text, client.get("/static/viewer.css").text):
            assert "http://" not in text and "https://" not in text and "@import" not in text
            assert "src=\"//" not in text and "href=\"//" not in text
        assert client.get("/static/../app.py").status_code == 404


def test_views_match_the_model_and_downloads(app, model, frontal_png, tmp_path):
    with TestClient(app) as client:
        response = upload(client, frontal_png, "chest.png")
        assert response.status_code == 202, response.text
        status = wait(client, response.json()["id"])
        assert status["state"] == "done" and status["files"] == "ready", status
        assert status["elevation_deg"] == [0.0] and status["name"] == "chest.png"
        sid = status["id"]
        # The truth: the same file through the model's public API here.
        path = tmp_path / "chest.png"
        path.write_bytes(frontal_png)
        radiograph = load_radiograph(path)
        synthesis = model.synthesize(radiograph, [0.0, 9.0])
        truth = {"novel": synthesis.views[0].numpy(), "novel_suppressed": synthesis.suppressed_views(1.0)[0].numpy()}
        suppression = model.suppress_bones(radiograph)[0]
        for kind in ("novel", "novel_suppressed"):
            for index, expected in ((AZIMUTHS_DEG.index(0.0), truth[kind][0]), (len(AZIMUTHS_DEG) - 1,
                                                                               truth[kind][1])):
                served = decode(client.get(f"/api/study/{sid}/image/{kind}/{index}").content)
                assert served.shape == (32, 32)
                assert np.abs(served - np.round(expected * 255)).max() <= GREY_LEVEL_TOLERANCE, kind
        assert np.abs(truth["novel"] - truth["novel_suppressed"]).max() > 2 / 255  # the bone does go
        # 128² input, centre crop = the whole image at its own size: original / suppressed are the images as read.
        for kind, expected in (("original", radiograph.image), ("suppressed", suppression.suppressed)):
            served = decode(client.get(f"/api/study/{sid}/image/{kind}/0").content)
            assert np.abs(served - np.round(expected * 255)).max() <= GREY_LEVEL_TOLERANCE, kind
        bone = decode(client.get(f"/api/study/{sid}/image/bone/0").content)
        assert bone.max() == 255 and bone.min() == 0  # scaled to its maximum
        assert not np.array_equal(decode(client.get(f"/api/study/{sid}/image/unrefined/0").content),
                                  decode(client.get(f"/api/study/{sid}/image/novel/0").content))
        assert client.get(f"/api/study/{sid}/image/novel/21").status_code == 404
        assert client.get(f"/api/study/{sid}/image/bone/1").status_code == 404
        assert client.get(f"/api/study/{sid}/image/secret/0").status_code == 404
        # Downloads.
        got = {}
        for name in DOWNLOADS:
            response = client.get(f"/api/study/{sid}/download/{name}")
            assert response.status_code == 200, name
            assert response.headers["content-disposition"] == f'attachment; filename="chest_{name}"'
            got[name] = response.content
        names = zipfile.ZipFile(io.BytesIO(got["views.zip"])).namelist()
        assert len([n for n in names if n.startswith("view_")]) == 21 and "figure.png" in names
        assert Image.open(io.BytesIO(got["sweep.gif"])).n_frames == 2 * 21 - 2
        (tmp_path / "ct.nii.gz").write_bytes(got["ct.nii.gz"])
        import nibabel
        import pydicom

        assert nibabel.load(tmp_path / "ct.nii.gz").shape == (16, 16, 16)
        dicom = pydicom.dcmread(io.BytesIO(got["suppressed.dcm"]))
        assert (dicom.Rows, dicom.Columns) == (128, 128) and "bone-suppressed" in dicom.SeriesDescription
        assert decode(got["suppressed.png"]).shape == (128, 128)
        assert client.get(f"/api/study/{sid}/download/figure.png").status_code == 404


def test_dicom_upload_keeps_the_patient_in_the_suppressed_dicom(app, tmp_path):
    import pydicom

    from support.dicom_cr import IDENTIFIERS, write_cr

    path = write_cr(tmp_path / "cr", simulated_frontal(128, seed=5))
    data = bytearray(path.read_bytes())
    data[:4] = b"II*\x00"  # a TIFF header in the preamble (dual-personality file, like the example CR)
    with TestClient(app) as client:
        response = upload(client, bytes(data), "1.2.840.10008.99")
        assert response.status_code == 202, response.text
        status = wait(client, response.json()["id"])
        assert status["state"] == "done" and status["files"] == "ready"
        dicom = pydicom.dcmread(io.BytesIO(client.get(f"/api/study/{status['id']}/download/suppressed.dcm").content))
        assert dicom.PatientID == IDENTIFIERS["PatientID"]
        assert dicom.StudyInstanceUID == IDENTIFIERS["StudyInstanceUID"]


def test_elevation_sweep(app, frontal_png):
    with TestClient(app) as client:
        status = wait(client, upload(client, frontal_png, elevation=1).json()["id"], files=False)
        assert status["elevation_deg"] == list(ELEVATIONS_DEG)
        views = len(AZIMUTHS_DEG) * len(ELEVATIONS_DEG)
        sid = status["id"]
        assert client.get(f"/api/study/{sid}/image/novel/{views - 1}").status_code == 200
        assert client.get(f"/api/study/{sid}/image/novel/{views}").status_code == 404
        # View index i_el * 21 + i_az: elevation 0 at azimuth 0 is the same view as in an azimuth-only study.
        centre = ELEVATIONS_DEG.index(0.0) * len(AZIMUTHS_DEG) + AZIMUTHS_DEG.index(0.0)
        flat = wait(client, upload(client, frontal_png).json()["id"], files=False)
        a = decode(client.get(f"/api/study/{sid}/image/novel/{centre}").content)
        b = decode(client.get(f"/api/study/{flat['id']}/image/novel/{AZIMUTHS_DEG.index(0.0)}").content)
        assert np.abs(a - b).max() <= GREY_LEVEL_TOLERANCE
        up = decode(client.get(f"/api/study/{sid}/image/novel/{centre + 2 * len(AZIMUTHS_DEG)}").content)
        assert np.abs(up - a).max() > GREY_LEVEL_TOLERANCE


# ------------------------------------------------------------------------------------------- bad input
def test_bad_uploads_get_clear_messages(app, frontal_png):
    rng = np.random.default_rng(0)
    colour = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(colour, format="PNG")
    lateral = png8(simulated_frontal(128, seed=5, azimuth_deg=90.0))
    cases = [
        (b"", "empty.png", {}, 400, "the file is empty"),
        (b"just some notes\n", "notes.txt", {}, 422, "not a DICOM file"),
        (frontal_png[: len(frontal_png) // 2], "cut.png", {}, 422, "cut.png"),
        (png8(rng.random((20, 20))), "small.png", {}, 422, "too small"),
        (png8(np.full((80, 80), 0.5)), "flat.png", {}, 422, "constant"),
        (colour.getvalue(), "photo.png", {}, 422, "colour"),
        (lateral, "lateral.png", {}, 422, "does not look like a frontal"),
        (frontal_png, "chest.png", {"check_view": "maybe"}, 400, "check_view must be 0 or 1"),
    ]
    with TestClient(app) as client:
        for data, name, params, code, text in cases:
            response = upload(client, data, name, **params)
            assert response.status_code == code, (name, response.text)
            message = response.json()["error"]
            assert text in message, (name, message)
            assert str(app.state.viewer.store.root) not in message  # the server's paths stay private
        # Nothing kept of refused uploads.
        assert all_files(app.state.viewer.store.root) == []
        # The view check can be skipped.
        accepted = upload(client, lateral, "lateral.png", check_view=0)
        assert accepted.status_code == 202 and wait(client, accepted.json()["id"])["state"] == "done"


def test_oversize_uploads_are_refused(model, frontal_png, systemp):
    app = create_app(model, max_upload_bytes=len(frontal_png) - 1)
    with TestClient(app) as client:
        response = upload(client, frontal_png)  # declared by Content-Length
        assert response.status_code == 413 and "upload limit" in response.json()["error"]

        def chunks():  # no Content-Length: the limit is counted while the body arrives
            for start in range(0, len(frontal_png), 1000):
                yield frontal_png[start:start + 1000]

        response = client.post("/api/upload", params={"filename": "chest.png"}, content=chunks())
        assert response.status_code == 413
        assert all_files(app.state.viewer.store.root) == []
    with pytest.raises(ValueError, match="max_upload_bytes must be a positive integer"):
        create_app(model, max_upload_bytes=0)


@pytest.mark.parametrize("filename", ["../../../../evil.png", "..\\..\\evil.png", "/etc/passwd", "a/../../b.dcm",
                                      "..", "con\x00trol\n.png", "%2e%2e%2fevil.png"])
def test_path_tricks_in_file_names(app, frontal_png, systemp, filename):
    with TestClient(app) as client:
        response = upload(client, frontal_png, filename)
        assert response.status_code == 202, response.text
        status = wait(client, response.json()["id"])
        assert status["state"] == "done" and "/" not in status["name"] and "\\" not in status["name"]
        assert "\x00" not in status["name"] and "\n" not in status["name"]
        root = app.state.viewer.store.root
        # Everything under the viewer's root; the upload under its fixed name, suffix by content.
        assert os.listdir(systemp) == [root.name]
        files = all_files(root)
        assert [f for f in files if os.path.basename(f).startswith("upload")] == [
            os.path.join(os.path.dirname(files[0]).split(os.sep)[0], status["id"], "upload.png")]
        disposition = client.get(f"/api/study/{status['id']}/download/sweep.gif").headers["content-disposition"]
        assert "/" not in disposition and "\\" not in disposition and ".." not in disposition
        for tricky in ("..%2f..%2fetc%2fpasswd", "%2e%2e", "upload.png"):
            assert client.get(f"/api/study/{status['id']}/download/{tricky}").status_code == 404
        assert client.get("/api/study/..%2f..%2f/image/novel/0").status_code == 404


def test_name_helpers():
    assert display_name("C:\\scans\\patient 1.dcm") == "patient 1.dcm"
    assert display_name("../../x.png") == "x.png" and display_name("") == "upload" and display_name("..") == "upload"
    assert len(display_name("a" * 500)) <= 120
    assert download_name("../a b*.dcm", "ct.nii.gz") == "a_b_ct.nii.gz"
    assert download_name("...", "sweep.gif") == "upload_sweep.gif"
    assert stored_suffix(b"\x89PNG\r\n\x1a\n....") == ".png" and stored_suffix(b"\xff\xd8\xff\xe0") == ".jpg"
    assert stored_suffix(b"II*\x00") == ".tif" and stored_suffix(b"BM..") == ".bmp"
    assert stored_suffix(b"\x00" * 128 + b"DICM") == ".dcm" and stored_suffix(b"") == ".dcm"
    # A DICOM file whose preamble is a TIFF header (dual personality, like the example CR) is DICOM.
    assert stored_suffix((b"II*\x00" + b"\x00" * 124 + b"DICM")[:SIGNATURE_BYTES]) == ".dcm"


def test_a_failing_computation_is_reported(app, model, frontal_png, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("not enough memory for the 3DPN\nsecond line")

    monkeypatch.setattr(model, "synthesize", broken)
    with TestClient(app) as client:
        status = wait(client, upload(client, frontal_png).json()["id"])
        assert status["state"] == "error" and status["error"] == "not enough memory for the 3DPN"
        assert client.get(f"/api/study/{status['id']}/image/novel/0").status_code == 409
        assert client.get(f"/api/study/{status['id']}/download/ct.nii.gz").status_code == 409


# ------------------------------------------------------------------------------------------- sessions
def test_two_clients_at_once_do_not_mix(app, frontal_png, other_png, tmp_path):
    inputs = {"a": frontal_png, "b": other_png}
    results: dict[str, tuple] = {}

    def work(client, key):
        response = upload(client, inputs[key], f"{key}.png")
        status = wait(client, response.json()["id"])
        results[key] = (status, decode(client.get(f"/api/study/{status['id']}/image/original/0").content))

    with TestClient(app) as first:
        second = TestClient(app)
        threads = [threading.Thread(target=work, args=(c, k)) for c, k in ((first, "a"), (second, "b"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(2 * STUDY_TIMEOUT_S)
        assert set(results) == {"a", "b"}
        for key, client, other in (("a", first, second), ("b", second, first)):
            status, original = results[key]
            assert status["state"] == "done" and status["name"] == f"{key}.png"
            assert np.abs(original - decode(inputs[key])).max() <= GREY_LEVEL_TOLERANCE
            # The other client cannot reach this study.
            sid = status["id"]
            assert other.get(f"/api/study/{sid}").status_code == 404
            assert other.get(f"/api/study/{sid}/image/original/0").status_code == 404
            assert other.get(f"/api/study/{sid}/download/ct.nii.gz").status_code == 404
            assert other.delete(f"/api/study/{sid}").status_code == 404
            assert [s["id"] for s in client.get("/api/info").json()["studies"]] == [sid]
        assert first.cookies[SESSION_COOKIE] != second.cookies[SESSION_COOKIE]
        assert np.abs(results["a"][1] - results["b"][1]).max() > 10  # the two inputs do differ


def test_session_end_and_server_stop_remove_the_folders(app, frontal_png, systemp):
    with TestClient(app) as client:
        sid = upload(client, frontal_png).json()["id"]
        wait(client, sid)
        store = app.state.viewer.store
        session = store.get(client.cookies[SESSION_COOKIE])
        assert session.folder.is_dir() and (session.folder / sid / "upload.png").is_file()
        assert client.delete(f"/api/study/{sid}").status_code == 204
        assert not (session.folder / sid).exists() and client.get(f"/api/study/{sid}").status_code == 404
        sid = upload(client, frontal_png).json()["id"]
        wait(client, sid)
        response = client.post("/api/session/end")
        assert response.json() == {"ended": True} and not session.folder.exists()
        assert client.get(f"/api/study/{sid}").status_code == 404
        # A new session for the next upload; left running when the server stops.
        sid = upload(client, frontal_png).json()["id"]
        assert store.root.is_dir()
    assert not store.root.exists() and os.listdir(systemp) == []


def test_studies_per_session_are_bounded(app, frontal_png):
    with TestClient(app) as client:
        ids = [upload(client, frontal_png).json()["id"] for _ in range(MAX_STUDIES_PER_SESSION + 1)]
        for sid in ids[1:]:
            wait(client, sid, files=False)
        assert client.get(f"/api/study/{ids[0]}").status_code == 404
        session = app.state.viewer.store.get(client.cookies[SESSION_COOKIE])
        assert sorted(os.listdir(session.folder)) == sorted(ids[1:])


def test_idle_sessions_expire(tmp_path):
    store = SessionStore(tmp_path, idle_s=10.0, max_sessions=2)
    old, kept = store.create(), store.create()
    old.last_seen -= 20.0
    assert store.expire() == 1 and not old.folder.exists() and kept.folder.is_dir()
    assert store.get(old.token) is None and store.get(kept.token) is kept
    third, fourth = store.create(), store.create()  # the least recently seen goes when full
    assert store.get(kept.token) is None and store.get(third.token) is third and len(store) == 2
    store.close()
    assert not store.root.exists() and store.get(fourth.token) is None
    with pytest.raises(RuntimeError, match="shutting down"):
        store.create()
    with pytest.raises(ValueError, match="idle_s"):
        SessionStore(tmp_path, idle_s=0)


def test_unknown_sessions_and_hosts(model, app):
    with TestClient(app) as client:
        client.cookies.set(SESSION_COOKIE, "x" * 43)
        assert client.get("/api/study/0123456789abcdef").status_code == 404
        assert client.post("/api/session/end").json() == {"ended": False}
    guarded = create_app(model, allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(guarded, base_url="http://localhost:8000") as client:
        assert client.get("/api/info").status_code == 200
    with TestClient(guarded, base_url="http://attacker.example") as client:
        assert client.get("/api/info").status_code == 400


# ------------------------------------------------------------------------------------------- the command
def test_serve_command(monkeypatch, model, systemp):
    import uvicorn
    from typer.testing import CliRunner

    from xraysyn.cli import app as cli
    from xraysyn.cli.serve import DEFAULT_MAX_UPLOAD_MB, check_serve_options, is_loopback
    from xraysyn.viewer.app import DEFAULT_MAX_UPLOAD_BYTES

    assert check_serve_options("127.0.0.1", 8000, DEFAULT_MAX_UPLOAD_MB) == DEFAULT_MAX_UPLOAD_BYTES

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    monkeypatch.setattr(XraySyn, "from_pretrained", classmethod(lambda cls, weights, device="cpu": model))
    runner = CliRunner()
    result = runner.invoke(cli, ["serve", "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert calls[-1][1] == {"host": "127.0.0.1", "port": 8123, "log_level": "warning"}
    assert "http://127.0.0.1:8123/" in result.output and "warning" not in result.output
    result = runner.invoke(cli, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 0 and "warning: listening on 0.0.0.0" in result.output
    result = runner.invoke(cli, ["serve", "--port", "70000"])
    assert result.exit_code == 2 and "--port must be in 0..65535" in result.output
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    assert check_serve_options("127.0.0.1", 8000, 1.0) == 1024**2
    with pytest.raises(ValueError, match="--max-upload-mb"):
        check_serve_options("127.0.0.1", 8000, 0.0)


def test_an_interrupted_upload_leaves_nothing(app, frontal_png):
    """A client that disconnects mid-body (raw ASGI messages): no study, no file, the session goes on."""
    import asyncio

    with TestClient(app) as client:
        client.get("/api/info")
        cookie = f"{SESSION_COOKIE}={client.cookies[SESSION_COOKIE]}".encode()
        messages = [{"type": "http.request", "body": frontal_png[:500], "more_body": True}, {"type": "http.disconnect"}]
        sent = []

        async def receive():
            return messages.pop(0)

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/api/upload", "raw_path": b"/api/upload",
                 "query_string": b"filename=chest.png", "root_path": "", "server": ("testserver", 80),
                 "client": ("127.0.0.1", 5000), "headers": [(b"host", b"testserver"), (b"cookie", cookie)],
                 "app": app, "state": {}}
        asyncio.run(app.router(scope, receive, send))
        assert sent[0]["status"] == 400 and b"the upload was interrupted" in sent[1]["body"]
        assert all_files(app.state.viewer.store.root) == []
        assert client.get("/api/info").json()["studies"] == []
        status = wait(client, upload(client, frontal_png).json()["id"])  # the session still works
        assert status["state"] == "done"
