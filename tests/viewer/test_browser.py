"""The viewer end to end in a real headless browser: Debian's chromium and chromedriver driven by Selenium, the
server (uvicorn) in a thread with the shipped weights. Opens the example CR when it is cached (else a simulated
frontal PNG; no network), waits for the views, moves the slider, toggles suppression, drags window / level, plays,
checks the canvas pixels against the served images, drops a bad file, and saves a screenshot (tmp_path; also to
``$XRAYSYN_VIEWER_SCREENSHOT`` when set, which is how docs/viewer_screenshot.png was made).

Skips, saying why, without selenium, chromium or chromedriver (``.ci/run`` installs them with apt)."""

from __future__ import annotations

import io
import os
import shutil
import threading
import time

import numpy as np
import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
uvicorn = pytest.importorskip("uvicorn")

from PIL import Image  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from support.tiny_xraysyn import simulated_frontal  # noqa: E402
from xraysyn.data.example import example_paths  # noqa: E402
from xraysyn.synthesis.model import XraySyn  # noqa: E402
from xraysyn.viewer import create_app  # noqa: E402
from xraysyn.viewer.compute import AZIMUTHS_DEG  # noqa: E402

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)
#: Seconds for the page to show a study (upload + ~5 s of computation with the shipped weights on a busy CPU).
READY_TIMEOUT_S = 120.0
#: Browser window, CSS pixels (the screenshot's size).
WINDOW_SIZE = (1280, 1150)
SCREENSHOT_ENV = "XRAYSYN_VIEWER_SCREENSHOT"

# The displayed canvas as rows of grey values (R channel), for comparison with the served PNGs.
CANVAS_PIXELS_JS = """
const canvas = document.getElementById('view');
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
const grey = new Array(canvas.width * canvas.height);
for (let i = 0; i < grey.length; i++) grey[i] = data[4 * i];
return [canvas.width, canvas.height, grey];
"""
DROP_JS = """
const [name, text] = arguments;
const transfer = new DataTransfer();
transfer.items.add(new File([text], name, {type: 'text/plain'}));
const zone = document.getElementById('dropzone');
for (const type of ['dragenter', 'dragover', 'drop']) {
  zone.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: transfer}));
}
"""
FETCH_STATUS_JS = """
const [url, done] = [arguments[0], arguments[arguments.length - 1]];
fetch(url).then((r) => r.arrayBuffer().then((b) => done([r.status, b.byteLength]))).catch((e) => done([0, 0]));
"""


def _which(names) -> str | None:
    return next((path for path in map(shutil.which, names) if path), None)


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = _which(BROWSER_NAMES), _which(DRIVER_NAMES)
    if chromium is None or driver_path is None:
        pytest.skip(f"needs a system browser and its driver: chromium {'found' if chromium else 'missing'}, "
                    f"chromedriver {'found' if driver_path else 'missing'} (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={WINDOW_SIZE[0]},{WINDOW_SIZE[1]}", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server():
    """The viewer with the shipped weights on a free loopback port, in a thread."""
    app = create_app(XraySyn.from_pretrained())
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30.0
    while not instance.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert instance.started, "the viewer's server did not start"
    port = instance.servers[0].sockets[0].getsockname()[1]
    yield app, f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(30.0)
    assert not app.state.viewer.store.root.exists()


@pytest.fixture(scope="module")
def radiograph_file(tmp_path_factory):
    example = example_paths().radiograph
    if example.is_file():
        return example
    path = tmp_path_factory.mktemp("input") / "simulated_frontal.png"
    Image.fromarray(np.round(simulated_frontal(256, seed=5) * 65535).astype(np.uint16)).save(path)
    return path


def canvas(driver) -> np.ndarray:
    width, height, grey = driver.execute_script(CANVAS_PIXELS_JS)
    return np.asarray(grey, dtype=np.int16).reshape(height, width)


def served(app, kind: str, index: int) -> np.ndarray:
    (session,) = [app.state.viewer.store.get(t) for t in list(app.state.viewer.store._sessions)]
    (study,) = session.studies.values()
    return np.asarray(Image.open(io.BytesIO(study.images[(kind, index)])).convert("L"), dtype=np.int16)


def wait_state(driver, *states, timeout=READY_TIMEOUT_S) -> str:
    WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in states)
    return driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")


def choose(driver, kind: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f"input[name=kind][value={kind}]").click()


def test_viewer_in_a_headless_browser(browser, server, radiograph_file, tmp_path):
    app, url = server
    driver = browser
    driver.get(url + "/")
    WebDriverWait(driver, 30).until(lambda d: "XraySyn" in d.find_element(By.ID, "model-info").text)

    # Open the radiograph with the file picker; the page shows progress, then the views.
    driver.find_element(By.ID, "file-input").send_keys(str(radiograph_file))
    state = wait_state(driver, "ready", "error")
    assert state == "ready", driver.find_element(By.ID, "message").text
    assert radiograph_file.name in driver.find_element(By.ID, "caption").text

    # The novel view at azimuth 0 is on the canvas exactly as served (window / level at full range).
    centre = AZIMUTHS_DEG.index(0.0)
    at_zero = canvas(driver)
    np.testing.assert_array_equal(at_zero, served(app, "novel", centre))

    # Move the slider to its end with the keyboard: azimuth +9, other pixels, no recomputation.
    slider = driver.find_element(By.ID, "azimuth")
    slider.send_keys(Keys.END)
    assert driver.find_element(By.ID, "azimuth-value").text == "+9.0°"
    at_nine = canvas(driver)
    np.testing.assert_array_equal(at_nine, served(app, "novel", len(AZIMUTHS_DEG) - 1))
    assert np.abs(at_nine - at_zero).mean() > 1.0

    # Toggle bone suppression: original vs bone-suppressed.
    choose(driver, "original")
    original = canvas(driver)
    np.testing.assert_array_equal(original, served(app, "original", 0))
    choose(driver, "suppressed")
    suppressed = canvas(driver)
    np.testing.assert_array_equal(suppressed, served(app, "suppressed", 0))
    assert np.abs(suppressed - original).mean() > 0.5
    assert not driver.find_element(By.ID, "azimuth").is_enabled()  # input view only
    driver.find_element(By.TAG_NAME, "body").send_keys("4")  # keyboard: bone image
    assert "bone image" in driver.find_element(By.ID, "caption").text

    # Suppression at the novel view: the slider works again, the bone goes from the +9 degree view.
    choose(driver, "novel_suppressed")
    assert driver.find_element(By.ID, "azimuth").is_enabled()
    novel_suppressed = canvas(driver)
    np.testing.assert_array_equal(novel_suppressed, served(app, "novel_suppressed", len(AZIMUTHS_DEG) - 1))
    assert np.abs(novel_suppressed - at_nine).mean() > 0.5

    # Window / level by dragging: left narrows the window (more contrast); double-click resets.
    choose(driver, "original")
    view = driver.find_element(By.ID, "view")
    ActionChains(driver).move_to_element(view).click_and_hold().move_by_offset(-200, 0).release().perform()
    narrowed = canvas(driver)
    assert np.std(narrowed) > np.std(original) + 1.0
    assert driver.find_element(By.ID, "window-value").text != "W 100 % · L 50 %"
    ActionChains(driver).double_click(view).perform()
    np.testing.assert_array_equal(canvas(driver), original)

    # Play and pause sweep the azimuth.
    choose(driver, "novel")
    driver.find_element(By.ID, "play").click()
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "azimuth-value").text != "+9.0°")
    driver.find_element(By.ID, "play").click()
    assert "play" in driver.find_element(By.ID, "play").text

    # Downloads become links once written, and they download.
    WebDriverWait(driver, 60).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#downloads a.pending"))
    links = driver.find_elements(By.CSS_SELECTOR, "#downloads a")
    assert sorted(link.text for link in links) == sorted(["views.zip", "sweep.gif", "ct.nii.gz", "suppressed.dcm",
                                                          "suppressed.png"])
    for link in links:
        status, size = driver.execute_async_script(FETCH_STATUS_JS, link.get_attribute("href"))
        assert status == 200 and size > 0, link.text

    # The screenshot: the novel view at +9 degrees.
    driver.find_element(By.ID, "azimuth").send_keys(Keys.END)
    driver.save_screenshot(str(tmp_path / "viewer.png"))
    shot = np.asarray(Image.open(tmp_path / "viewer.png").convert("L"))
    assert shot.shape[1] == WINDOW_SIZE[0] and shot.std() > 10.0  # the page's viewport, not a blank picture
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(tmp_path / "viewer.png", os.environ[SCREENSHOT_ENV])

    # A bad file dropped on the page: a clear message, the views stay.
    driver.execute_script(DROP_JS, "notes.txt", "not an image")
    assert wait_state(driver, "error", timeout=30) == "error"
    assert "notes.txt: not a DICOM file" in driver.find_element(By.ID, "message").text

    # Leaving the page ends the session: its folder is removed.
    store = app.state.viewer.store
    (folder,) = list(store.root.iterdir())
    driver.get("about:blank")
    deadline = time.monotonic() + 10.0
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not folder.exists() and len(store) == 0
