"""Headless Chromium (Debian's, driven by its chromedriver) whose microphone plays a WAV file:
for the benchmarks that go through the page and for the browser tests."""

from __future__ import annotations

import functools
import os
import shutil
import time
from pathlib import Path

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
DESKTOP, PHONE = (1400, 1000), (390, 844)  # window sizes, in CSS pixels
HANG_S = 300.0  # only a hang reaches it (a busy machine may take minutes for seconds' work)


def chromium(
    size: tuple[int, int], microphone: Path, downloads: Path | None = None, niceness: int = 0
):
    """A headless Chromium SIZE wide and high whose microphone plays MICROPHONE (a WAV file,
    looped); downloads land in DOWNLOADS. NICENESS > 0 lowers its CPU priority (and its
    driver's), for a benchmark in which it stands for a student's own device."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}",
        f"--window-size={size[0]},{size[1]}",
    ]:
        options.add_argument(arg)
    lower = {"preexec_fn": functools.partial(os.nice, niceness)} if niceness else {}
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, popen_kw=lower), options=options)
    if downloads is not None:
        driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
    return driver


def wait(condition, timeout: float = HANG_S, every: float = 0.05):
    """Poll CONDITION (an event on the page) until it holds, and return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("the page did not get there in time")
