"""The student's page in real headless Chromium, at a desktop's and a phone's size: a chat that
behaves like the chat apps students know."""

from __future__ import annotations

import base64
import json
import re
import time

import numpy as np
import pytest
import soundfile
from gradio_client import Client, handle_file

from audio_files import encode, write
from bench.harness import ROOT
from bench.browser import DESKTOP, PHONE, PageClock, chromium, wait
from bench.speech import reference
from bench.streaming_wer import wer
from page_driver import BY, Page, needs_chromium
from tutor.math_text import dollars_to_parens
from tutor.page import AUDIO_FILE_TYPES, MODE_TAG, MODE_TAG_RE, NEW_CONVERSATION_STARTED

pytestmark = [pytest.mark.slow, needs_chromium]

AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
QUESTION = "How do I solve 3x + 5 = 20?"
# tutor.service's line per answer: its prompt tokens, and how many of them were reused.
ANSWER_LOGGED = re.compile(r"answer: (\d+) prompt tokens \((\d+) reused")
NEW_CONVERSATION_ROUNDS = 20
# Records a 3-second clip from the (fake) microphone with the browser's own MediaRecorder, as
# a phone or a browser records a question; returns it base64-encoded.
RECORD_WEBM = """
const done = arguments[arguments.length - 1];
navigator.mediaDevices.getUserMedia({audio: true}).then((stream) => {
  const recorder = new MediaRecorder(stream, {mimeType: "audio/webm;codecs=opus"});
  const chunks = [];
  recorder.ondataavailable = (e) => chunks.push(e.data);
  recorder.onstop = async () => {
    const bytes = new Uint8Array(await new Blob(chunks).arrayBuffer());
    let s = "";
    for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
    stream.getTracks().forEach((t) => t.stop());
    done([recorder.mimeType, btoa(s)]);
  };
  recorder.start();
  setTimeout(() => recorder.stop(), 3000);
}).catch((e) => done(["error", String(e)]));
"""


@pytest.fixture(params=[DESKTOP, PHONE], ids=["desktop", "phone"])
def page(request, slow_app_url, assets, tmp_path):
    driver = chromium(request.param, assets / "speech/ljspeech/LJ001-0001.wav", tmp_path)
    yield Page(driver, slow_app_url).open()
    driver.quit()


@pytest.fixture
def desktop(slow_app_url, assets, tmp_path):
    driver = chromium(DESKTOP, assets / "speech/ljspeech/LJ001-0001.wav", tmp_path)
    yield Page(driver, slow_app_url).open()
    driver.quit()


def _guesses(url: str) -> dict[str, int]:
    """The app's prefills and early answers so far, by how they ended (and "claimed")."""
    return Client(url, verbose=False).predict(api_name="/health")["prefills_ended"]


def _prefills(url: str) -> int:
    """Prefills (and early answers) the app has run so far, however they ended."""
    return sum(n for how, n in _guesses(url).items() if how != "claimed")


def _size(page: Page) -> str:
    return "phone" if page.driver.get_window_size()["width"] < 800 else "desktop"


def test_text_typed_while_an_answer_streams_survives(page, artifacts_dir):
    page.ask(QUESTION)  # Enter sends
    assert page.question.get_attribute("value") == ""  # cleared once, when sent
    focused = page.driver.switch_to.active_element
    assert focused == page.question  # focus is back in the box
    page.question.send_keys("And what if it were 3x + 5 = 26?")
    page.screenshot(artifacts_dir / f"page-{_size(page)}-mid-answer.png")
    page.answered()
    assert page.question.get_attribute("value") == "And what if it were 3x + 5 = 26?"
    assert len(page.users()) == 1  # typing sent nothing


def test_prices_stay_text_and_formulas_render(page):
    page.ask(r"The book costs $5 and the pen $3. Is that $x^2$ or $$\int_0^1 x\,dx$$?")
    user = page.users()[-1]
    assert "The book costs $5 and the pen $3." in user.text
    assert len(user.find_elements(BY, ".katex")) == 2  # x^2 and the integral, nothing else
    page.answered()


def test_each_answer_shows_its_mode(desktop):
    for label in desktop.driver.find_elements(BY, "#mode label")[:2]:
        label.click()
        desktop.ask(f"In the mode {label.text}?")
        assert desktop.bots()[-1].find_element(BY, ".mode-tag").text == label.text
        desktop.answered()


def test_an_error_is_a_note_by_the_input_and_the_chat_stays_readable(page, artifacts_dir, tmp_path):
    page.ask(QUESTION)
    answer = page.answered()
    page.find("#send").click()  # nothing typed
    wait(lambda: "type or record a question" in page.status())
    silence = write(tmp_path / "silence.wav", np.zeros((16000 * 2, 1), np.float32), 16000)
    page.upload(silence)
    wait(lambda: "speech" in page.status().lower())  # says what to do next
    assert not page.driver.find_elements(BY, "[data-testid='toast-body']")  # no overlay
    assert page.answer_text() == answer and len(page.users()) == 1
    page.screenshot(artifacts_dir / f"page-{_size(page)}-after-error.png")


def test_a_reload_brings_the_conversation_back_and_new_conversation_empties_it(page):
    page.ask(QUESTION)
    answer = page.answered()
    page.driver.refresh()
    page.open()
    wait(lambda: page.bots())
    assert [u.text for u in page.users()] == [QUESTION] and page.answer_text() == answer
    page.find("#new").click()
    wait(lambda: page.status() == NEW_CONVERSATION_STARTED)
    assert not page.bots() and not page.users()
    page.driver.refresh()
    page.open()
    assert not page.bots() and not page.users()


def test_a_follow_up_after_a_reload_reuses_the_whole_conversation_so_far(desktop, slow_app_log):
    # The chat shows "$x^2$" as "\(x^2\)": a prompt rebuilt from the screen would leave the
    # KV cache inside the first question, and evaluate it and the whole answer again.
    def answers_logged_since(offset: int) -> list[tuple[int, int]]:
        text = slow_app_log.read_bytes()[offset:].decode(errors="replace")
        return [(int(a), int(b)) for a, b in ANSWER_LOGGED.findall(text)]

    logged = slow_app_log.stat().st_size
    desktop.ask("What is $x^2$ when x = 3?")
    desktop.answered()
    (first_prompt, _), *_ = wait(lambda: answers_logged_since(logged))
    desktop.driver.refresh()
    desktop.open()
    wait(desktop.bots)
    logged = slow_app_log.stat().st_size
    desktop.ask("And when x = 4?")
    desktop.answered()
    (_, reused), *_ = wait(lambda: answers_logged_since(logged))
    # Reused: the first question's whole prompt, and the answer up to where its text stops
    # matching the model's tokens (this random model writes bytes that are not UTF-8).
    assert reused >= first_prompt


def test_the_downloaded_markdown_equals_the_conversation(page, slow_app_url, tmp_path):
    expected_answer = Client(slow_app_url, verbose=False).predict(
        QUESTION, "hint", [], api_name="/ask"
    )
    page.ask(QUESTION)
    page.answered()
    page.find("#download").click()
    path = tmp_path / "tutor-conversation.md"
    wait(path.is_file)
    assert path.read_text() == "\n".join(
        [
            "# Voice tutor conversation",
            "",
            "**Student:**",
            "",
            dollars_to_parens(QUESTION),
            "",
            "**Tutor (Hints):**",
            "",
            _as_the_chat_keeps(dollars_to_parens(expected_answer)),
            "",
        ]
    )


def _as_the_chat_keeps(answer: str) -> str:
    """ANSWER as Gradio's Chatbot keeps it, and so shows it (it tidies each message with
    inspect.cleandoc: tabs become spaces)."""
    import gradio as gr

    tagged = MODE_TAG.format(title="Hints") + answer
    kept = gr.Chatbot().postprocess([{"role": "assistant", "content": tagged}]).root[0]
    return MODE_TAG_RE.sub("", kept.content[0].text)


def test_new_conversation_mid_answer_always_starts_over(slow_app_url, assets, tmp_path):
    driver = chromium(PHONE, assets / "speech/ljspeech/LJ001-0001.wav")
    try:
        page = Page(driver, slow_app_url).open()
        page.ask(QUESTION)
        reference = page.answered()  # a question asked in an empty conversation
        page.find("#new").click()
        wait(lambda: page.status() == NEW_CONVERSATION_STARTED)
        clear_chat = "#chat button[aria-label='Clear the conversation']"
        for round_ in range(NEW_CONVERSATION_ROUNDS + 2):
            page.ask(f"Question number {round_}?")
            # The history sent is what the chat shows: only this question.
            assert [u.text for u in page.users()] == [f"Question number {round_}?"], round_
            # Twenty times the button, then twice the chat's own clear (its trash icon).
            page.find("#new" if round_ < NEW_CONVERSATION_ROUNDS else clear_chat).click()
            # Said once the stopped answer has ended, and the chat emptied after it.
            wait(lambda: page.status() == NEW_CONVERSATION_STARTED)
            assert not page.users() and not page.bots(), round_
        page.ask(QUESTION)
        assert [u.text for u in page.users()] == [QUESTION]
        assert page.answered() == reference  # the same answer: no old turn was sent with it
    finally:
        driver.quit()


def test_browser_and_phone_recordings_transcribe_through_the_page_and_the_api(
    desktop, slow_app_url, assets, tmp_path
):
    accept = desktop.upload_input().get_attribute("accept").split(",")
    assert sorted(a.strip() for a in accept) == sorted(AUDIO_FILE_TYPES)
    mime, recorded = desktop.driver.execute_async_script(RECORD_WEBM)
    assert mime.startswith("audio/webm"), recorded
    webm = tmp_path / "chromium-recording.webm"
    webm.write_bytes(base64.b64decode(recorded))
    samples, rate = soundfile.read(
        assets / "speech/ljspeech/LJ001-0001.wav", dtype="float32", always_2d=True
    )
    m4a = encode(tmp_path / "voice-memo.m4a", samples, rate, "aac", out_rate=44100)
    client = Client(slow_app_url, verbose=False)
    for recording in (webm, m4a):
        through_api = client.predict(handle_file(str(recording)), "en", api_name="/transcribe")
        assert through_api.strip(), recording.name
        desktop.clear_question()
        desktop.upload(recording)
        wait(lambda: desktop.question.get_attribute("value"))
        assert desktop.question.get_attribute("value") == through_api, recording.name
        assert not desktop.status()
        if recording is m4a:  # the whole clip, as a phone's voice memo: its words came out
            assert wer([reference("LJ001-0001")], [through_api]) < 0.1, through_api


@pytest.mark.skipif(not AXE.is_file(), reason="axe-core is not installed (make test runs npm ci)")
def test_no_serious_accessibility_violations(page):
    page.ask(QUESTION)
    page.answered()
    page.find("#send").click()  # an error note on the page too
    wait(lambda: page.status())
    page.driver.execute_script(AXE.read_text())
    page.driver.set_script_timeout(120)
    result = page.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {runOnly: ['wcag2a', 'wcag2aa', 'best-practice']})"
        ".then((r) => done(r.violations)).catch((e) => done(String(e)));"
    )
    assert isinstance(result, list), result
    serious = [
        {
            "id": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "nodes": [n["target"] for n in v["nodes"]][:5],
        }
        for v in result
        if v["impact"] in ("serious", "critical")
    ]
    assert not serious, json.dumps(serious, indent=1)


# Records what the page asks the browser's speech synthesis to say (and each cancel).
INTERCEPT_SPEECH = """
window.__spoken = [];
speechSynthesis.speak = (utterance) => window.__spoken.push(utterance.text);
speechSynthesis.cancel = () => window.__spoken.push("<cancel>");
"""
# What read_aloud.js should have said for the answer ARGUMENTS[0]: each sentence, then the rest.
EXPECTED_SPEECH = """
const text = arguments[0], {done, rest} = sentences(text);
return done.concat([text.slice(rest)]).map(speakable).filter((s) => s.replace(/\\W/g, ""));
"""


def test_answers_are_read_aloud_sentence_by_sentence_and_stop_silences_them(desktop, slow_app_url):
    expected_answer = Client(slow_app_url, verbose=False).predict(
        QUESTION, "hint", [], api_name="/ask"
    )
    desktop.driver.execute_script(INTERCEPT_SPEECH)
    wait(lambda: desktop.driver.find_elements(BY, "#read-aloud input"))[0].click()
    desktop.ask(QUESTION)
    desktop.answered()
    content = MODE_TAG.format(title="Hints") + dollars_to_parens(expected_answer)
    expected = desktop.driver.execute_script(EXPECTED_SPEECH, content)
    wait(lambda: len(desktop.driver.execute_script("return window.__spoken")) >= len(expected))
    spoken = desktop.driver.execute_script("return window.__spoken")
    assert len(expected) >= 2 and spoken == expected  # in order, sentence by sentence

    desktop.ask("Tell me a long story about fractions.")
    before = len(desktop.driver.execute_script("return window.__spoken"))
    desktop.find("#stop").click()
    wait(desktop.idle)
    stopped = desktop.answer_text()
    spoken = desktop.driver.execute_script("return window.__spoken")[before:]
    assert "<cancel>" in spoken and spoken[-1] == "<cancel>"  # silenced, and nothing after
    time.sleep(1.0)  # ~100 tokens' time: the answer stopped, and no error shows
    assert desktop.answer_text() == stopped and desktop.idle() and not desktop.status()


def test_switching_read_aloud_off_silences_it(desktop):
    desktop.driver.execute_script(INTERCEPT_SPEECH)
    switch = wait(lambda: desktop.driver.find_elements(BY, "#read-aloud input"))[0]
    switch.click()
    switch.click()
    wait(lambda: "<cancel>" in desktop.driver.execute_script("return window.__spoken"))
    desktop.ask(QUESTION)
    desktop.answered()
    assert desktop.driver.execute_script("return window.__spoken") == ["<cancel>"]


def test_hands_free_sends_the_question_when_speech_ends_with_no_further_click(
    slow_app_url, assets, tmp_path, artifacts_dir
):
    speech, rate = soundfile.read(assets / "speech/ljspeech/LJ001-0001.wav", dtype="float32")
    lead_s, trail_s = 0.5, 2.0
    clip = write(
        tmp_path / "question.wav",
        np.concatenate([np.zeros(int(lead_s * rate)), speech, np.zeros(int(trail_s * rate))])[
            :, None
        ],
        rate,
    )
    speech_end_s = lead_s + len(speech) / rate  # into the file (the fake microphone loops it)
    prefills_before = _prefills(slow_app_url)
    driver = chromium(DESKTOP, clip)
    try:
        page = Page(driver, slow_app_url).open()
        clock = PageClock(driver)  # times noted by the page: no busy polling beside the app
        wait(lambda: driver.find_elements(BY, "#hands-free input"))[0].click()  # the one click
        listening_since = clock.listening()
        sent = clock.question(0)  # transcribed and sent by itself
        first_token = clock.answer(0)
        # Real Whisper heard the clip's own words: pieces cut at pauses, joined in order.
        heard = page.users()[0].text
        assert wer([reference("LJ001-0001")], [heard]) < 0.1, heard
        wait(lambda: len(page.answer_text()) > 20)  # the answer streams
        # The words heard before the end went to the model ahead of the question (its prompt was
        # prefilled while the student spoke and paused).
        assert _prefills(slow_app_url) > prefills_before
        timings = {
            "speech_end_to_question_sent_s": sent - listening_since - speech_end_s,
            "speech_end_to_first_answer_token_s": first_token - listening_since - speech_end_s,
            # Whether the answer began at the last pause (only if that pause's words were
            # transcribed before the trailing silence ended: a matter of the machine's speed).
            "answer_begun_early": _guesses(slow_app_url).get("claimed", 0) > 0,
            "note": "real Whisper tiny.en, the slow stand-in Llama; the microphone's start is "
            "when the page showed it listening",
        }
        (artifacts_dir / "hands-free-latency.json").write_text(json.dumps(timings, indent=1))
        print(timings)
    finally:
        driver.quit()
