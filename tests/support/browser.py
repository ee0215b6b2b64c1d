"""Headless Chromium from the system packages (apt: chromium, chromium-driver), driven by
Selenium. Without them the browser tests skip, unless ``REQUIRE_BROWSER`` is set (``.ci/run``
installs them and sets it), when they fail."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> Iterator[WebDriver]:
    """A headless Chromium, quit afterwards (a generator for a fixture)."""
    binary = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        message = "needs Chromium and chromedriver (apt-get install chromium chromium-driver)"
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,900")
    browser = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    try:
        yield browser
    finally:
        browser.quit()


def wait_for(
    browser: WebDriver, condition: Callable[[WebDriver], object], timeout_s: float = 60
) -> None:
    """Wait until ``condition`` holds in the page."""
    WebDriverWait(browser, timeout_s).until(condition)
