"""Headless Chromium for tests that open a page: a pytest fixture, and the driver factory behind it.

Debian's chromium and chromedriver (/usr/bin) through selenium. A test that needs the
browser skips, saying why, when selenium, chromium or chromedriver is missing or the
browser does not start. Use the fixture from a test module's conftest.py:

    from browser import browser  # noqa: F401  (registers the fixture)

tests/ is on sys.path because tests/conftest.py lives there (pytest's rootdir conftest).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("FEDLM_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("FEDLM_TEST_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
HEADLESS_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage")


def missing_browser() -> str | None:
    """Why no headless Chromium can run here, or None when everything it needs is installed."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium; it is in the test extra)"
    for path, what in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromedriver")):
        if not Path(path).is_file():
            return f"{what} is not installed at {path} (Debian: apt install chromium chromium-driver)"
    return None


def start_chromium(*, width: int = 1400, height: int = 1000) -> Any:
    """A headless Chromium WebDriver with a window of width x height CSS pixels; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in (*HEADLESS_FLAGS, f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))



def save_screenshot(url: str, png: Path, *, width: int, height: int) -> None:
    """A PNG of the page at `url` in headless Chromium (the README's pictures); SystemExit saying why it cannot."""
    import time

    if reason := missing_browser():
        raise SystemExit(f"cannot take the screenshot: {reason}")
    driver = start_chromium(width=width, height=height)
    try:
        driver.get(url)
        time.sleep(0.5)  # layout of inline SVG
        png.parent.mkdir(parents=True, exist_ok=True)
        if not driver.get_screenshot_as_file(str(png)):
            raise SystemExit(f"chromium could not write {png}")
    finally:
        driver.quit()

@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for a test module; skips the test, with the reason, when none can start."""
    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    from selenium.common.exceptions import WebDriverException

    try:
        driver = start_chromium()
    except WebDriverException as err:
        pytest.skip(f"headless chromium did not start: {err.msg}")
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
