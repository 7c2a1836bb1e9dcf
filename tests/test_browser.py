"""The page in a real headless Chromium with a fake microphone: record, transcribe, ask, stream."""

from __future__ import annotations

import time

import pytest
from selenium.common.exceptions import StaleElementReferenceException

from bench.browser import chromium, wait
from page_driver import needs_chromium

pytestmark = [pytest.mark.slow, needs_chromium]

# Records the length of tutor message number arguments[0] at every DOM change, so that growth is
# seen even when updates come faster than a test could poll.
WATCH_ANSWER = """
if (window.__watch) window.__watch.disconnect();
window.__lengths = [];
const chat = document.querySelector('#chat'), index = arguments[0];
window.__watch = new MutationObserver(() => {
  const bots = chat.querySelectorAll('[data-testid="bot"]');
  const n = bots.length > index ? bots[index].textContent.trim().length : 0;
  const seen = window.__lengths;
  if (!seen.length || seen[seen.length - 1] !== n) seen.push(n);
});
window.__watch.observe(chat, {childList: true, subtree: true, characterData: true});
"""


@pytest.fixture
def browser(assets):
    driver = chromium((1400, 1100), assets / "speech/ljspeech/LJ001-0001.wav")
    yield driver
    driver.quit()


def _answer_done(driver) -> bool:
    tracker = driver.find_element("css selector", "#chat [data-testid='status-tracker']")
    return "hide" in tracker.get_attribute("class")


def test_record_transcribe_and_stream_in_every_mode(browser, slow_app_url, artifacts_dir):
    by = "css selector"
    browser.get(slow_app_url)
    wait(lambda: browser.find_elements(by, "#recording button.record-button"))
    browser.find_element(by, "#recording button.record-button").click()
    time.sleep(3)  # the fake microphone plays the clip meanwhile
    browser.find_element(by, "#recording button.stop-button").click()
    question = browser.find_element(by, "#question textarea")
    transcript = wait(lambda: question.get_attribute("value"))
    assert transcript.strip()

    modes = browser.find_elements(by, "#mode label")
    assert len(modes) >= 4
    for i in range(len(modes)):
        label = browser.find_elements(by, "#mode label")[i]
        label.click()
        if i:  # the first question came from the microphone; then type follow-ups
            question.send_keys(f"Follow-up number {i}?")
        n_before = len(browser.find_elements(by, "#chat [data-testid='bot']"))
        browser.execute_script(WATCH_ANSWER, n_before)
        browser.find_element(by, "#send").click()
        wait(lambda: len(browser.find_elements(by, "#chat [data-testid='bot']")) > n_before)
        wait(lambda: _answer_done(browser))
        lengths = [n for n in browser.execute_script("return window.__lengths") if n > 0]
        final = browser.find_elements(by, "#chat [data-testid='bot']")[-1].text.strip()
        assert final, label.text
        # At least two partial steps, then the complete answer. (Markdown rendering may shorten
        # the visible text now and then, so growth is judged from first to last.)
        assert len(set(lengths)) >= 3 and lengths[0] < lengths[-1], (label.text, lengths)
    users = [m.text for m in browser.find_elements(by, "#chat [data-testid='user']")]
    assert users[0].strip() == transcript.strip() and len(users) == len(modes)
    browser.save_screenshot(str(artifacts_dir / "browser-tutor.png"))


def test_stop_halts_the_answer_and_the_next_question_is_answered(browser, slow_app_url):
    from gradio_client import Client

    by = "css selector"
    story = "Tell me a long story about fractions."
    job = Client(slow_app_url, verbose=False).submit(story, "hint", [], api_name="/ask")
    full = list(job)[-1]  # the whole answer, for comparison
    browser.get(slow_app_url)
    question = wait(lambda: browser.find_elements(by, "#question textarea"))[0]

    def bots():
        return browser.find_elements(by, "#chat [data-testid='bot']")

    def last_answer(count: int = 1) -> str:
        """The last answer's text once COUNT answers are on the page ("" until then, also while
        the chat is being redrawn)."""
        try:
            answers = bots()
            return answers[-1].text if len(answers) == count else ""
        except StaleElementReferenceException:
            return ""

    question.send_keys(story)
    browser.find_element(by, "#send").click()
    wait(last_answer, every=0.02)
    browser.find_element(by, "#stop").click()
    stopped = wait(lambda: _answer_done(browser) and last_answer())
    time.sleep(1.0)
    assert last_answer() == stopped  # nothing more arrives after Stop
    assert len(stopped) < 0.8 * len(full)
    question.send_keys("And a short one?")
    browser.find_element(by, "#send").click()
    wait(lambda: _answer_done(browser) and last_answer(2))
