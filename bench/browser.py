"""Headless Chromium (Debian's, driven by its chromedriver) whose microphone plays a WAV file,
and the tutor's page in it: for the benchmarks that go through the page and for the browser
tests. Waits are on events, not durations."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
BY = "css selector"
DESKTOP, PHONE = (1400, 1000), (390, 844)  # window sizes, in CSS pixels
HANG_S = 300.0  # only a hang reaches it (a busy machine may take minutes for seconds' work)
TIMES_READ_EVERY_S = 0.1  # how often a bench reads the times the page keeps (PageClock)

# The page notes, on its own clock (epoch milliseconds), when each question appears in the chat,
# when each answer first shows text of its own (its mode tag aside) and when the hands-free
# microphone began to listen; and it can press Send itself as soon as a transcript is in the box.
# A bench reads the times now and then: asking the browser every few milliseconds (WebDriver
# round trips through chromedriver, each a DOM query) took a share of the very cores the app is
# measured on.
PAGE_CLOCK = """
const stamp = () => performance.timeOrigin + performance.now();
const times = window.__times = {questions: [], answers: [], listening: null, marks: {}};
const look = () => {
  if (times.listening === null && document.querySelector('#live button.stop-button')) {
    times.listening = stamp();
  }
  document.querySelectorAll('#chat [data-testid="user"]').forEach((user, k) => {
    if (times.questions[k] == null) times.questions[k] = stamp();
  });
  document.querySelectorAll('#chat [data-testid="bot"]').forEach((bot, k) => {
    if (times.answers[k] != null) return;
    const tag = bot.querySelector('.mode-tag');
    if (bot.innerText.trim().length > (tag ? tag.innerText.trim().length : 0)) {
      times.answers[k] = stamp();
    }
  });
};
new MutationObserver(look).observe(document.body, {childList: true, subtree: true,
                                                    characterData: true});
look();
window.__mark = (name) => { times.marks[name] = stamp(); };
window.__sendWhenTranscribed = () => {
  const timer = setInterval(() => {
    const box = document.querySelector('#question textarea');
    if (box && box.value) { clearInterval(timer); document.querySelector('#send').click(); }
  }, 5);
};
"""


def chromium(size: tuple[int, int], microphone: Path, downloads: Path | None = None):
    """A headless Chromium SIZE wide and high whose microphone plays MICROPHONE (a WAV file,
    looped); downloads land in DOWNLOADS."""
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
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
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


class Page:
    """The tutor's page in DRIVER, by the ids tutor.page gives its parts."""

    def __init__(self, driver, url: str) -> None:
        self.driver = driver
        self.url = url

    def open(self) -> Page:
        self.driver.get(self.url)
        wait(lambda: self.driver.find_elements(BY, "#question textarea"))
        wait(self.idle)  # the conversation kept in the browser has been put back
        return self

    def find(self, selector: str):
        return self.driver.find_element(BY, selector)

    @property
    def question(self):
        return self.find("#question textarea")

    def clear_question(self) -> None:
        """Empty the question box as a user does (the page hears of it)."""
        from selenium.webdriver.common.keys import Keys

        self.question.send_keys(Keys.CONTROL, "a")
        self.question.send_keys(Keys.DELETE)
        wait(lambda: not self.question.get_attribute("value"))

    def upload(self, path: Path) -> None:
        """Choose PATH in the "Upload a recording" picker."""
        self.upload_input().send_keys(str(path))

    def upload_input(self):
        return self.find("input[data-testid='Upload a recording-upload-button']")

    def bots(self) -> list:
        return self.driver.find_elements(BY, "#chat [data-testid='bot']")

    def users(self) -> list:
        return self.driver.find_elements(BY, "#chat [data-testid='user']")

    def idle(self) -> bool:
        """No event of the chat's is running (its status tracker is hidden)."""
        trackers = self.driver.find_elements(BY, "#chat [data-testid='status-tracker']")
        return bool(trackers) and "hide" in trackers[0].get_attribute("class")

    def ask(self, text: str) -> None:
        """Type TEXT and press Enter; return once its answer has begun to stream."""
        n = len(self.bots())
        self.question.send_keys(text)
        self.question.send_keys("\n")
        wait(lambda: len(self.bots()) > n and self.answer_text())

    def answer_text(self) -> str:
        """The last answer's text without its mode tag."""
        bots = self.bots()
        if not bots:
            return ""
        tags = bots[-1].find_elements(BY, ".mode-tag")
        text = bots[-1].text
        return text[len(tags[0].text) :].strip() if tags else text.strip()

    def answered(self) -> str:
        """Wait for the running answer to finish; its text."""
        wait(self.idle)
        return self.answer_text()

    def status(self) -> str:
        return self.find("#status").text.strip()

    def screenshot(self, path: Path) -> None:
        self.driver.save_screenshot(str(path))


class PageClock:
    """Times the page itself notes (PAGE_CLOCK), in seconds on its clock."""

    def __init__(self, driver) -> None:
        self.driver = driver
        driver.execute_script(PAGE_CLOCK)

    def _times(self) -> dict:
        return self.driver.execute_script("return window.__times")

    def listening(self) -> float:
        """When the hands-free microphone began to listen (waits for it)."""
        return wait(lambda: self._times()["listening"], every=TIMES_READ_EVERY_S) / 1000

    def question(self, k: int) -> float:
        """When question K (from 0) appeared in the chat (waits for it)."""
        return self._noted("questions", k)

    def answer(self, k: int) -> float:
        """When answer K (from 0) first showed text of its own (waits for it)."""
        return self._noted("answers", k)

    def _noted(self, kind: str, k: int) -> float:
        def noted() -> float | None:
            times = self._times()[kind]
            return times[k] if len(times) > k else None

        return wait(noted, every=TIMES_READ_EVERY_S) / 1000

    def mark(self, name: str) -> float:
        """Note NAME's time now, on the page's clock; returns it."""
        self.driver.execute_script("window.__mark(arguments[0])", name)
        return self._times()["marks"][name] / 1000

    def send_when_transcribed(self) -> None:
        """Press Send as soon as a transcript is in the question box (a student at once)."""
        self.driver.execute_script("window.__sendWhenTranscribed()")
