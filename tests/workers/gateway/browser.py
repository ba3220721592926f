"""Headless Chromium for the gateway's browser tests (``/docs`` and ``/ui``): Debian's chromium and
chromedriver, driven through selenium. Importing this module skips the importing test module where
they are missing (or fails it where CI says they must be there)."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.required_tools import missing_tool

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    missing_tool(
        "chromium",
        "needs /usr/bin/chromium and /usr/bin/chromedriver: "
        "apt-get install -y --no-install-recommends chromium chromium-driver",
    )
try:
    from selenium import webdriver
except ImportError:
    missing_tool("chromium", "needs selenium (pip install selenium)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

from workers.gateway.ui_probe import HEADLESS_FLAGS  # noqa: E402

__all__ = ["By", "Keys", "WebDriverWait", "chromium", "ec", "local", "requested_urls"]

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
NETWORK_SCHEMES = {"http", "https", "ws", "wss", "ftp"}
BROWSER_SCHEMES = {"data", "blob", "about", "chrome", "chrome-untrusted"}  # Chromium's own new-tab page
FLAGS = (*HEADLESS_FLAGS, "--window-size=1280,1600")


@contextlib.contextmanager
def chromium(profile: Path, logs: dict[str, str]) -> Iterator[Any]:
    """A headless Chromium with its own profile directory and the given ``goog:loggingPrefs``; quit and
    its profile removed on exit."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", logs)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def requested_urls(driver: Any) -> list[str]:
    """Every URL the page asked for: DevTools network events plus the resource timing entries."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    urls += driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return urls


def local(url: str) -> bool:
    """A loopback network request, or one that never leaves the browser (data:, blob:, its own chrome:// pages)."""
    parts = urlsplit(url)
    if parts.scheme in NETWORK_SCHEMES:
        return parts.hostname in LOOPBACK
    return parts.scheme in BROWSER_SCHEMES
