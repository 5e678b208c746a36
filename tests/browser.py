"""Headless Chromium for tests, driven by Selenium: a fixture factory and a screenshot helper.

    from browser import browser_fixture, save_screenshot
    browser = browser_fixture()                 # in a test module: a fixture named ``browser``
    def test_page(browser): browser.get(url); save_screenshot(browser, "page")

Chromium and its driver are Debian's (``scripts/setup.sh --test`` installs them); the driver is given
by path, so Selenium Manager never downloads anything. WebGL runs on SwiftShader (CPU). Without
Chromium, chromedriver or selenium the fixture skips with the reason; ``webgl=True`` also skips when the
browser gives no WebGL2 context. Screenshots go to ``test-artifacts/`` at the repository root (git-ignored).
"""

from __future__ import annotations

import importlib.util
import io
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARGUMENTS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
             "--window-size=1024,768")
INSTALL = "scripts/setup.sh --test (or: apt-get install chromium chromium-driver; pip install selenium)"


def unavailable() -> str | None:
    """Why no browser can be started here, or None."""
    if importlib.util.find_spec("selenium") is None:
        return f"selenium is not installed; install it with {INSTALL}"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists() and shutil.which(path.name) is None:
            return f"{path} is missing; install it with {INSTALL}"
    return None


def start_browser(arguments=ARGUMENTS):
    """A new headless Chromium WebDriver (the caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM if CHROMIUM.exists() else shutil.which(CHROMIUM.name))
    for a in arguments:
        options.add_argument(a)
    driver_path = CHROMEDRIVER if CHROMEDRIVER.exists() else shutil.which(CHROMEDRIVER.name)
    return webdriver.Chrome(service=Service(str(driver_path)), options=options)


def webgl_renderer(driver) -> str | None:
    """The WebGL2 renderer string of a fresh canvas in the current page, or None without WebGL2."""
    return driver.execute_script(
        "const gl = document.createElement('canvas').getContext('webgl2');"
        "if (!gl) return null;"
        "const ext = gl.getExtension('WEBGL_debug_renderer_info');"
        "return ext ? gl.getParameter(ext.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER);")


def browser_fixture(scope: str = "module", webgl: bool = False, name: str = "browser"):
    """A pytest fixture (assign it to a module-level name) yielding a headless Chromium WebDriver."""

    @pytest.fixture(scope=scope, name=name)
    def _browser():
        why = unavailable()
        if why:
            pytest.skip(why)
        driver = start_browser()
        try:
            if webgl:
                driver.get("about:blank")
                if webgl_renderer(driver) is None:
                    pytest.skip("headless Chromium gives no WebGL2 context (SwiftShader missing from the chromium package?)")
            yield driver
        finally:
            driver.quit()

    return _browser


def save_screenshot(driver, name: str) -> Path:
    """The browser's viewport as ``test-artifacts/<name>.png``; returns the path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    path.write_bytes(driver.get_screenshot_as_png())
    return path


def screenshot_rgb(driver):
    """The viewport as a uint8 numpy array [H, W, 3]."""
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"))
