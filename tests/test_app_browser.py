"""The web app in a real browser (headless Chromium through Selenium, tests/browser.py): bad input shows
one line in the page and the app stays usable; a toy prompt is run from the page to its 3D previews;
the GLB the page offers for download passes the Khronos validator; screenshots of the finished page
and of the export's viewer.html are kept in test-artifacts/."""

import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from browser import browser_fixture, save_screenshot
from test_app_jobs import FAST
from export_fixtures import validate_glb

ROOT = Path(__file__).resolve().parents[1]
browser = browser_fixture()
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    pytest.importorskip("gradio")
    out = tmp_path_factory.mktemp("app")
    port = _free_port()
    log = open(out / "app.log", "w")
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--app", "--port", str(port), "--outputs", str(out / "runs"),
                             *FAST, "threads=1"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            assert proc.poll() is None, (out / "app.log").read_text()[-2000:]
            assert time.time() - t0 < 120, "the app did not answer within 120 s"
            time.sleep(0.5)
    print(f"app answered {time.time() - t0:.1f} s after start")
    yield url, out
    proc.terminate()
    proc.wait(30)


def _css(driver, selector, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: d.find_element("css selector", selector))


def _type(driver, selector, text):
    el = _css(driver, selector)
    el.clear()
    el.send_keys(text)


def _status(driver) -> str:
    return _css(driver, "#td-status textarea, #td-status input").get_attribute("value") or ""


def _wait(driver, predicate, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.5)
    save_screenshot(driver, "app-timeout")
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; status: {_status(driver)!r}")


def test_bad_input_shows_one_line_and_a_toy_run_reaches_its_previews(app, browser):
    url, out = app
    t0 = time.time()
    browser.get(url)
    _css(browser, "#td-start")
    print(f"page loaded in {time.time() - t0:.1f} s")

    _type(browser, "#td-prompt textarea, #td-prompt input", " ")
    _css(browser, "#td-start").click()
    _wait(browser, lambda: "prompt is empty" in _status(browser), 30, "the empty-prompt message")
    _type(browser, "#td-prompt textarea, #td-prompt input", "a red dragon")
    _css(browser, "#td-start").click()
    _wait(browser, lambda: "dragon" in _status(browser), 30, "the unknown-word message")
    _type(browser, "#td-prompt textarea, #td-prompt input", "a red cube")
    _type(browser, "#td-steps input", "999999")
    _css(browser, "#td-start").click()
    _wait(browser, lambda: "steps must be" in _status(browser), 30, "the steps range message")
    assert not list((out / "runs").glob("job-*")), "refused requests wrote nothing"

    _type(browser, "#td-steps input", "40")
    started = time.time()
    _css(browser, "#td-start").click()
    _wait(browser, lambda: "queued" in _status(browser), 30, "the run to be queued")
    _wait(browser, lambda: browser.find_elements("css selector", "#td-val img"), 240, "the first validation image")
    first_image = time.time() - started
    _wait(browser, lambda: browser.find_elements("css selector", "#td-progress[data-state='done']"), 600, "the run to finish")
    _wait(browser, lambda: browser.find_elements("css selector", "#td-mesh canvas"), 60, "the mesh preview")
    _wait(browser, lambda: browser.find_elements("css selector", "#td-files a"), 60, "the download links")
    preview = time.time() - started
    time.sleep(8)  # let the 3D previews draw (Babylon.js falls back from WebGPU to WebGL on SwiftShader first)
    browser.set_window_size(1280, 1500)
    save_screenshot(browser, "app-finished")
    print(f"Start -> first validation image {first_image:.1f} s, -> finished preview {preview:.1f} s")

    links = [a.get_attribute("href") for a in browser.find_elements("css selector", "#td-files a")]
    glb_url = next(h for h in links if re.search(r"model\.glb($|\?)", h))
    glb = out / "downloaded.glb"
    glb.write_bytes(urllib.request.urlopen(glb_url, timeout=30).read())
    report = validate_glb(glb)
    assert report["numErrors"] == 0, report

    viewer = next((out / "runs").rglob("export/viewer.html"), None)
    if viewer is not None:  # the export's stand-alone viewer, as a user double-clicking it sees it
        browser.get(viewer.as_uri())
        _wait(browser, lambda: browser.execute_script("return window.viewerReady === true"), 60, "viewer.html to draw")
        save_screenshot(browser, "app-viewer")
