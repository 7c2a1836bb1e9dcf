"""The student's page: the conversation first and the input under it, as in a chat app (a
phone's narrow screen included); errors as a short note by the input; the conversation kept in
the browser (never on the server) so that a reload brings it back.

`add_page` builds it inside a `gr.Blocks`; the API endpoints are added by `tutor.app`.
"""

from __future__ import annotations

import html
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np

from tutor.conversation import Message, normalize_history
from tutor.errors import BusyError, TutorError
from tutor.fairness import InFlightLimits
from tutor.live import Listener
from tutor.llm import InLine
from tutor.math_text import dollars_to_parens
from tutor.service import Tutor
from tutor.settings import Settings
from tutor.web import client_of, coalesce, user_message, waiting_message

EXAMPLES = [
    "How do I solve 3x + 5 = 20?",
    "Why does ice float on water?",
    "What is the derivative of x squared times sine of x?",
    "A patient has a fever, a stiff neck and a headache. What should I consider?",
]
# No lone "$": it would turn prices into formulas; single-dollar maths is rewritten as \(…\)
# first (tutor.math_text), by Pandoc's rule.
LATEX = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "\\(", "right": "\\)", "display": False},
    {"left": "\\[", "right": "\\]", "display": True},
]
LANGUAGES = [
    ("English", "en"),
    ("Detect automatically", "auto"),
    ("French", "fr"),
    ("German", "de"),
    ("Spanish", "es"),
    ("Italian", "it"),
    ("Portuguese", "pt"),
    ("Dutch", "nl"),
]
# What tutor.audio decodes (soundfile; PyAV for WebM, MP4/M4A and AMR): the picker offers these.
AUDIO_FILE_TYPES = [
    ".wav",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".webm",
    ".weba",
    ".mp4",
    ".m4a",
    ".amr",
]
LISTEN_CHUNK_S = 0.25  # the browser sends the microphone this often in hands-free mode
MAX_LISTEN_S = 1800  # one hands-free stream's longest run; pressing the microphone again renews it
STORAGE_KEY = "voice-tutor-conversation"  # localStorage key: one conversation per device
# ... and the model's own words of it (model_history), so that a follow-up after a reload
# still finds the conversation in the KV cache.
SAID_STORAGE_KEY = "voice-tutor-model-words"
# BrowserState encrypts with this; it is sent to the page, so it hides nothing from the
# student's own device. It is fixed so that a conversation outlives a restart of the app.
STORAGE_SECRET = "voice-tutor"
MAX_EXPECTED_ANSWERS = 4096  # sessions remembered between sending a question and its answer
STOPPED, DROPPED = "stopped", "dropped"  # what became of an answer before it began
ANSWER_END_WAIT_S = 600.0  # only a hang reaches it: a stopped answer ends at its next token
NEW_CONVERSATION_STARTED = "New conversation started."  # said once the old answer has ended
STOPPED_BEFORE_IT_BEGAN = "Stopped before the tutor began; your question is back in the box."
MODE_TAG = '<span class="mode-tag">{title}</span>\n\n'
MODE_TAG_RE = re.compile(r'^<span class="mode-tag">([^<]*)</span>\n\n')
_WHITESPACE = re.compile(r"\s+")

CHAT_HEIGHT = "max(16rem, calc(100dvh - 21rem))"  # the rest: title, input row, modes
CSS = """
.gradio-container { max-width: 60rem !important; margin: 0 auto !important; }
#title h1 { font-size: 1.5rem; margin: 0; }
.mode-tag { display: inline-block; font-size: 0.8em; font-weight: 600; color: #1f3a8a;
            background: #e0e7ff; border-radius: 0.6em; padding: 0 0.5em; }
#status:empty, #status .prose:empty { display: none; }
#status { color: #1f2937; }
#input-row { align-items: flex-end; flex-wrap: nowrap; gap: 0.4rem; }
#input-row button { min-width: fit-content !important; flex-grow: 0; white-space: nowrap;
                    padding: 0 0.9rem; }
/* WCAG AA contrast (axe-core checks it in tests/test_page.py): Gradio's orange and red buttons
   and its grey footer fall short with white or grey text. */
#send { background: #1d4ed8 !important; border-color: #1d4ed8 !important; color: #fff !important; }
#stop { background: #b91c1c !important; border-color: #b91c1c !important; color: #fff !important; }
footer, footer * { color: #374151 !important; opacity: 1 !important; }
.visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden;
                   clip: rect(0 0 0 0); white-space: nowrap; }
@media (max-width: 640px) {
  #title h1 { font-size: 1.2rem; margin: 0; }
  #title p { display: none; }
  .gradio-container { padding: 0.3rem !important; }
}
"""

READ_ALOUD_JS = Path(__file__).with_name("read_aloud.js").read_text()
# Runs once in the page: read-aloud; names for the controls Gradio leaves unnamed; a polite live
# region for finished answers (the chat itself would be read letter by letter while it streams).
HEAD = (
    "<script>\n"
    + READ_ALOUD_JS
    + "\n</script>\n"
    + """
<script>
(() => {
  const named = {"#mode": "Tutor mode", "#language": "Spoken language"};
  // Gradio's own buttons, renamed where two would share a name ("Clear", "Stop").
  const renamed = [["#chat button[aria-label='Clear']", "Clear the conversation"],
                   ["#recording button[aria-label='Clear']", "Clear the recording"],
                   ["#recording button.stop-button", "Stop recording"],
                   ["#recording button.record-button", "Record a question"]];
  function label() {
    for (const [selector, name] of renamed) {
      for (const button of document.querySelectorAll(selector)) {
        if (button.getAttribute("aria-label") !== name) {
          button.setAttribute("aria-label", name); button.title = name;
        }
      }
    }
    for (const [id, name] of Object.entries(named)) {
      const group = document.querySelector(id + " [role=radiogroup], " + id + " fieldset");
      if (group && !group.getAttribute("aria-label")) group.setAttribute("aria-label", name);
    }
    const status = document.querySelector("#status");
    if (status && !status.getAttribute("role")) {
      status.setAttribute("role", "status");
      status.setAttribute("aria-live", "polite");
    }
    if (!document.querySelector("#announce")) {
      const live = document.createElement("div");
      live.id = "announce"; live.className = "visually-hidden";
      live.setAttribute("aria-live", "polite"); live.setAttribute("role", "status");
      document.body.appendChild(live);
    }
  }
  new MutationObserver(label).observe(document.documentElement, {childList: true, subtree: true});
})();
</script>
"""
)

FOCUS_QUESTION = """(text) => {
  setTimeout(() => document.querySelector("#question textarea")?.focus(), 0);
  return text;
}"""
ANNOUNCE_ANSWER = """(chat, readAloud) => {
  window.readAloud.update(chat, readAloud, true);  // the answer's last words too
  const bots = document.querySelectorAll("#chat [data-testid='bot']");
  const live = document.querySelector("#announce");
  if (live && bots.length) live.textContent = bots[bots.length - 1].innerText;
}"""
ANNOUNCE_STOPPED = """() => {
  window.readAloud.stop();
  const live = document.querySelector("#announce");
  if (live) live.textContent = "Answer stopped.";
}"""
# Hands-free on: the microphone starts listening at once, so that the switch is the only click.
START_LISTENING = """(on) => {
  if (!on) return;
  const started = Date.now();
  const press = () => {
    const button = document.querySelector("#live button.record-button");
    if (button) button.click();
    else if (Date.now() - started < 10000) setTimeout(press, 100);
  };
  press();
}"""
# An empty chat is saved only by "New conversation" (the chat is empty, too, while a page loads).
# One output: a bare array returned would be read as the list of outputs.
SAVE = "(chat, kept) => [chat && chat.length ? chat : kept]"
READ_NEW_SENTENCES = "(chat, readAloud) => { window.readAloud.update(chat, readAloud, false); }"
SILENCE = "() => { window.readAloud.stop(); }"
SILENCE_WHEN_OFF = "(readAloud) => { if (!readAloud) window.readAloud.stop(); }"
DOWNLOAD = """(chat) => {
  const text = (content) => typeof content === "string" ? content
    : (content || []).filter((p) => p.type === "text").map((p) => p.text).join("");
  const tag = /^<span class="mode-tag">([^<]*)<\\/span>\\n\\n/;
  const parts = ["# Voice tutor conversation", ""];
  for (const message of chat || []) {
    let body = text(message.content);
    if (message.role === "user") {
      parts.push("**Student:**", "", body, "");
    } else {
      const mode = body.match(tag);
      body = body.replace(tag, "");
      parts.push(mode ? `**Tutor (${mode[1]}):**` : "**Tutor:**", "", body, "");
    }
  }
  const blob = new Blob([parts.join("\\n")], {type: "text/markdown"});
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "tutor-conversation.md";
  document.body.appendChild(link); link.click(); link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}"""


def without_mode_tags(history: list[Message]) -> list[Message]:
    """HISTORY as the model wrote it: the page's mode tags taken off the answers."""
    return [{"role": m["role"], "content": MODE_TAG_RE.sub("", m["content"])} for m in history]


def model_history(shown: object, said: object) -> list[Message]:
    """The conversation as the model saw it, for the next prompt: SAID (the page's record of the
    model's own text, kept beside the chat and in the browser) while it matches the chat SHOWN
    turn for turn (the student's turns word for word), else the chat's text without mode tags.
    The chat shows answers rewritten for the screen (maths delimiters, Gradio's clean-up), and a
    prompt with rewritten text would miss the KV cache from the first change on: the whole last
    answer would be evaluated again."""
    chat = without_mode_tags(normalize_history(shown))
    try:
        record = normalize_history(said)  # it may come back from the browser after a reload
    except TutorError:
        return chat
    if len(record) == len(chat) and all(
        m["role"] == c["role"] and (m["role"] == "assistant" or _same_question(m, c))
        for m, c in zip(record, chat)
    ):
        return record
    return chat


def _same_question(said: Message, shown: Message) -> bool:
    """Whether the chat's turn SHOWN is the student's turn SAID, rewritten for the screen (maths
    delimiters; Gradio's clean-up changes only whitespace)."""
    return _WHITESPACE.sub("", dollars_to_parens(said["content"])) == _WHITESPACE.sub(
        "", shown["content"]
    )


@dataclass(frozen=True)
class Answer:
    """An answer about to stream: the Event that stops it, and whether it is dropped (New
    conversation came before it began: nothing of it may show)."""

    stop: threading.Event
    dropped: bool = False


class RunningAnswers:
    """Which sessions have an answer streaming, and how to stop one.

    *Stop answer* and *New conversation* end a session's answer here, on the server, rather than
    with Gradio's `cancels`: the answer's stream then ends at its next token and its event
    completes as any other does. (Cancelled by the page, the event's last message could race the
    page's own clean-up, and the chat then showed "Error" until the next question: seen once in
    about a dozen runs of the read-aloud browser test.) "New conversation" waits for the answer
    to end before it empties the chat, so that no last update lands after.

    Send and the answer's start are two events on the page, and Stop or New conversation can
    come between them: a sent question is remembered until its answer begins. Stopped, that
    answer ends before its first token (its question goes back in the box); dropped by New
    conversation, it does not begin (its turn would bring the old chat back)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # One entry per answer streaming (one per session: tutor.fairness): (ended, stop).
        self._answers: dict[str, tuple[threading.Event, threading.Event]] = {}
        # Questions sent whose answers have not begun yet: "" (nothing pressed since), STOPPED
        # or DROPPED. Oldest out first.
        self._expected: OrderedDict[str, str] = OrderedDict()

    def expect(self, session: str) -> None:
        """SESSION has sent a question: a Stop before its answer begins stops that answer."""
        with self._lock:
            self._expected[session] = ""
            self._expected.move_to_end(session)
            while len(self._expected) > MAX_EXPECTED_ANSWERS:
                self._expected.popitem(last=False)

    @contextmanager
    def running(self, session: str) -> Iterator[Answer]:
        """Registers SESSION's answer while it streams; yields it (stopped already when Stop
        came after the question was sent and before this; dropped when New conversation did)."""
        ended, stop = threading.Event(), threading.Event()
        with self._lock:
            pressed = self._expected.pop(session, "")
            if pressed:
                stop.set()
            self._answers[session] = (ended, stop)
        try:
            yield Answer(stop, dropped=pressed == DROPPED)
        finally:
            ended.set()
            with self._lock:
                if self._answers.get(session, (None,))[0] is ended:
                    del self._answers[session]

    def is_running(self, session: str) -> bool:
        with self._lock:
            return session in self._answers

    def stop(self, session: str, then: str = STOPPED) -> None:
        """End SESSION's streaming answer at its next token; if none streams, the one about to
        begin is THEN: STOPPED (Stop answer) or DROPPED (New conversation)."""
        with self._lock:
            answer = self._answers.get(session)
            if answer is None and session in self._expected:
                self._expected[session] = then
        if answer is not None:
            answer[1].set()

    def wait_until_ended(self, session: str, timeout_s: float = ANSWER_END_WAIT_S) -> None:
        with self._lock:
            answer = self._answers.get(session)
        if answer is not None:
            answer[0].wait(timeout_s)


def add_page(
    app: gr.Blocks,
    tutor: Tutor,
    settings: Settings,
    limits: InFlightLimits,
    transcribe: Callable[[str | None, str], str],
    notice: str | None,
) -> None:
    """The page's components and events, inside APP (being built). TRANSCRIBE raises what
    goes wrong; the page shows it by the input."""
    running = RunningAnswers()
    listeners = Listeners(tutor, settings)
    titles = {m.name: m.title for m in tutor.modes.values()}

    gr.Markdown(
        "# Voice tutor\nAsk by voice or text, pick how the tutor should help, and read "
        "the answer as it is written.",
        elem_id="title",
    )
    if notice:
        gr.Markdown(notice, elem_id="standin-notice")
    saved = gr.BrowserState([], storage_key=STORAGE_KEY, secret=STORAGE_SECRET)
    said_saved = gr.BrowserState([], storage_key=SAID_STORAGE_KEY, secret=STORAGE_SECRET)
    # The chat takes the screen above the input row and the modes, on a phone as on a desktop.
    chat = gr.Chatbot(
        label="Conversation",
        elem_id="chat",
        height=CHAT_HEIGHT,
        latex_delimiters=LATEX,
        buttons=["copy"],
        feedback_options=None,
        placeholder="Your conversation with the tutor appears here.",
        examples=[{"text": example} for example in EXAMPLES],
    )
    status = gr.Markdown("", elem_id="status")
    with gr.Row(elem_id="input-row", equal_height=False):
        question = gr.Textbox(
            label="Your question",
            show_label=False,
            elem_id="question",
            lines=1,
            max_lines=8,
            scale=6,
            container=False,
            placeholder="Type or record a question. Enter sends; Shift+Enter starts a new line.",
        )
        send = gr.Button("Send", variant="primary", elem_id="send", scale=0, size="md")
        stop = gr.Button("Stop answer", variant="stop", elem_id="stop", scale=0, size="md")
    mode = gr.Radio(
        [(m.title, m.name) for m in tutor.modes.values()],
        value=settings.mode,
        label="Tutor mode",
        elem_id="mode",
        container=False,
    )
    with gr.Row(elem_id="voice-row", equal_height=False):
        recording = gr.Audio(
            sources=["microphone"],
            type="filepath",
            label="Ask by voice",
            elem_id="recording",
            scale=3,
        )
        live = gr.Audio(
            sources=["microphone"],
            type="numpy",
            streaming=True,
            visible=False,
            label="Hands-free: ask, pause, and the question is sent",
            elem_id="live",
            scale=3,
            waveform_options=gr.WaveformOptions(show_recording_waveform=False),
        )
        with gr.Column(scale=1, min_width=160):
            upload = gr.UploadButton(
                "Upload a recording", file_types=AUDIO_FILE_TYPES, elem_id="upload", size="sm"
            )
            language = gr.Dropdown(
                LANGUAGES, value=settings.language, label="Spoken language", elem_id="language"
            )
    with gr.Row(elem_id="conversation-row"):
        hands_free = gr.Checkbox(False, label="Hands-free", elem_id="hands-free", container=False)
        read_aloud = gr.Checkbox(
            False, label="Read answers aloud", elem_id="read-aloud", container=False
        )
        new = gr.Button("New conversation", elem_id="new", size="sm")
        download = gr.Button("Download conversation (.md)", elem_id="download", size="sm")
    with gr.Accordion("What the modes do", open=False, elem_id="modes-help"):
        gr.Markdown("\n".join(f"- **{m.title}**: {m.description}" for m in tutor.modes.values()))
    pending = gr.State("")  # the question sent, once the box is cleared
    # The conversation as the model saw it (model_history), on the server for the hands-free
    # stream (a BrowserState input would travel with every chunk) and saved in the browser.
    said = gr.State([])
    heard = gr.Number(0, visible=False)  # counts hands-free questions; each change sends one

    def transcribe_into_box(recording_path: str | None, language_code: str):
        try:
            return transcribe(recording_path, language_code), ""
        except Exception as e:
            return gr.skip(), _note(user_message(e))

    def restore(kept: object, kept_said: object) -> tuple[list[Message], list[Message]]:
        # What the page saved is the chat as the browser holds it; anything else starts afresh.
        try:
            shown = normalize_history(kept)
        except TutorError:
            return [], []
        return shown, model_history(shown, kept_said)

    def use_example(chosen: gr.SelectData) -> str:
        return chosen.value["text"]

    def take_question(text: str, request: gr.Request):
        running.expect(client_of(request)[0])
        return text, ""

    unchanged = (gr.skip(),) * 5  # respond's outputs

    def respond(text: str, mode_name: str, shown: list[dict], kept: list, request: gr.Request):
        session, address = client_of(request)
        began = False
        try:
            # The session's limit first: a refused second question must not stand in for the
            # answer that is running (New conversation waits for that one).
            with limits.hold(session, address), running.running(session) as answer:
                if answer.dropped:  # New conversation came first: only the question stays
                    yield gr.skip(), gr.skip(), text, gr.skip(), gr.skip()
                    yield unchanged
                    return
                stop = answer.stop
                before = history = model_history(shown, kept)
                stream = tutor.ask(text, mode_name, history, cancel=stop, places=True)
                tag = MODE_TAG.format(title=html.escape(titles.get(mode_name, mode_name)))
                turn = list(shown or []) + [
                    {"role": "user", "content": dollars_to_parens(text.strip())},
                    {"role": "assistant", "content": tag},
                ]
                history = history + [
                    {"role": "user", "content": text.strip()},
                    {"role": "assistant", "content": ""},
                ]
                began = True
                yield turn, "", gr.skip(), history, history
                for update in coalesce(stream, settings.update_interval):
                    if isinstance(update, InLine):
                        answer = waiting_message(update.place)
                    else:
                        answer = dollars_to_parens(update)
                        history[-1] = {"role": "assistant", "content": update}
                    turn[-1] = {"role": "assistant", "content": tag + answer}
                    yield turn, gr.skip(), gr.skip(), history, history
                if stop.is_set() and not history[-1]["content"]:
                    # Stopped while it waited in line: as if never asked; the question goes back.
                    yield list(shown or []), _note(STOPPED_BEFORE_IT_BEGAN), text, before, before
                # Gradio's message that ends the run repeats its last values: let them be none,
                # so that nothing the page applies late can bring back an answer whose chat "New
                # conversation" has emptied. Every update above was sent before this point.
                yield unchanged
        except Exception as e:
            # Refused before it began (busy, a bad request): the question goes back in the box.
            # Failed mid-answer: the partial answer stays in the chat; the note says why.
            back = gr.skip() if began else text
            yield gr.skip(), _note(user_message(e)), back, gr.skip(), gr.skip()

    def listen(
        chunk: tuple[int, np.ndarray] | None,
        language_code: str,
        count: float,
        mode_name: str,
        kept: list,
        request: gr.Request,
    ):
        """A chunk of the hands-free microphone; a question is sent when its speech ends."""
        session = client_of(request)[0]
        nothing = gr.skip(), gr.skip(), gr.skip()
        try:
            mine = listeners.of(session, language_code)
            # The words heard so far, asked in this mode after this conversation, are likely the
            # question: the model evaluates its prompt while the student finishes, and at a
            # pause begins the answer, which the question takes over when the silence sends it.
            mine.on_words = lambda words, outdated, complete: tutor.prefill(
                words, mode_name, kept, outdated, begin_answer=complete
            )
            if chunk is None:
                return nothing
            if running.is_running(session):  # the answer is streaming: not a question
                mine.reset()
                return nothing
            text = mine.feed(*chunk)
            if text is None:
                return nothing
            running.expect(session)
            return text, count + 1, ""
        except Exception as e:
            return gr.skip(), gr.skip(), _note(user_message(e))

    def stop_listening(request: gr.Request) -> None:
        listeners.close(client_of(request)[0])

    def stop_answer(request: gr.Request) -> None:
        running.stop(client_of(request)[0])

    def end_answer(request: gr.Request) -> None:
        session = client_of(request)[0]
        running.stop(session, then=DROPPED)
        running.wait_until_ended(session)

    def new_conversation():
        return [], [], NEW_CONVERSATION_STARTED, [], []

    def answers(trigger):
        """The answer to PENDING once TRIGGER fires; announced (and read aloud) when done."""
        answer = trigger(
            respond,
            [pending, mode, chat, said],
            [chat, status, question, said, said_saved],
            concurrency_limit=None,
            api_visibility="private",
            show_progress="minimal",
        )
        answer.success(None, [chat, read_aloud], js=ANNOUNCE_ANSWER)

    for trigger in (send.click, question.submit):
        answers(
            trigger(
                take_question,
                [question],
                [pending, question],
                js=FOCUS_QUESTION,
                queue=False,
                show_progress="hidden",
                api_visibility="private",
            ).then
        )
    answers(heard.change)  # a hands-free question
    live.stream(
        listen,
        [live, language, heard, mode, said],
        [pending, heard, status],
        stream_every=LISTEN_CHUNK_S,
        time_limit=MAX_LISTEN_S,
        concurrency_limit=None,
        api_visibility="private",
        show_progress="hidden",
    )
    hands_free.change(None, [hands_free], None, js=START_LISTENING)
    hands_free.change(
        lambda on: (gr.update(visible=not on), gr.update(visible=on)),
        [hands_free],
        [recording, live],
        queue=False,
        api_visibility="private",
        show_progress="hidden",
    )
    live.stop_recording(stop_listening, api_visibility="private", show_progress="hidden")
    app.unload(stop_listening)
    stop.click(
        stop_answer,
        js=ANNOUNCE_STOPPED,
        queue=False,  # at once, past any line
        api_visibility="private",
        show_progress="hidden",
    )
    for clear in (new.click, chat.clear):
        clear(None, js=SILENCE)
        # The answer streaming ends first, then the chat is emptied, in an event of its own: the
        # page may apply the answer's last updates after another event's that came with them.
        clear(end_answer, api_visibility="private", show_progress="hidden").then(
            new_conversation,
            None,
            [chat, saved, status, said, said_saved],
            api_visibility="private",
            show_progress="hidden",
        )
    recording.stop_recording(
        transcribe_into_box,
        [recording, language],
        [question, status],
        concurrency_limit=None,
        api_visibility="private",
    )
    upload.upload(
        transcribe_into_box,
        [upload, language],
        [question, status],
        concurrency_limit=None,
        api_visibility="private",
    )
    chat.example_select(use_example, None, [question], queue=False, api_visibility="private")
    download.click(None, [chat], js=DOWNLOAD)
    chat.change(None, [chat, saved], [saved], js=SAVE, show_progress="hidden")
    chat.change(None, [chat, read_aloud], None, js=READ_NEW_SENTENCES, show_progress="hidden")
    read_aloud.change(None, [read_aloud], None, js=SILENCE_WHEN_OFF)
    app.load(
        restore, [saved, said_saved], [chat, said], api_visibility="private", show_progress="hidden"
    )


class Listeners:
    """Hands-free listeners (tutor.live), one per session listening, at most --max-listeners;
    a session's goes when its microphone stops or its page closes."""

    def __init__(
        self,
        tutor: Tutor,
        settings: Settings,
        transcribe: Callable[..., str] | None = None,
    ) -> None:
        """TRANSCRIBE: a piece's text (tutor.live.Listener's); the tutor's transcriber's."""
        self.tutor = tutor
        self.settings = settings
        self.transcribe = transcribe or tutor.transcriber.transcribe
        self._by_session: dict[str, Listener] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        # Partial transcriptions while students speak (tutor.live), one in flight app-wide: on
        # only where a piece's cost follows its length (the local Whisper's fitted window).
        fitted = settings.whisper_window == "fit" and not settings.stt_url
        self._partials = threading.Semaphore(1) if fitted else None

    def of(self, session: str, language: str) -> Listener:
        """SESSION's listener (a new one on its first chunk); BusyError when too many listen."""
        with self._lock:
            listener = self._by_session.get(session)
            if listener is None:
                if len(self._by_session) >= self.settings.max_listeners:
                    raise BusyError()
                if self._executor is None:  # the first hands-free student
                    # One segment transcription at a time (the local Whisper also runs on the
                    # native thread, which answers share: tutor.live says how).
                    self._executor = ThreadPoolExecutor(1, thread_name_prefix="live-whisper")
                listener = Listener(
                    self.transcribe,
                    self._executor,
                    language,
                    self.settings.end_of_speech_s,
                    self._partials,
                )
                self._by_session[session] = listener
        listener.language = language
        return listener

    def close(self, session: str) -> None:
        with self._lock:
            self._by_session.pop(session, None)


def _note(message: str) -> str:
    return f"⚠️ {message}" if message else ""
