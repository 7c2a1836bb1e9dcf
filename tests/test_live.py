"""Hands-free listening (tutor.live) on real speech, Silero VAD and the tiny Whisper: segments cut
at pauses go to Whisper while the student speaks; a trailing silence ends the question."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile
import soxr

from bench.vad import non_speech
from tutor import audio
from tutor.audio import SAMPLE_RATE
from tutor.live import MIN_SEGMENT_S, PAUSE_S, Listener
from tutor.transcribe import Transcriber, load_whisper

BROWSER_RATE = 48000  # what Chromium's microphone streams
CHUNK_S = 0.25
END_OF_QUESTION_S = 0.8
VAD_LATENCY_S = 0.3  # Silero's padding and windows: how late an end may be noticed


@pytest.fixture(scope="module")
def transcriber(tiny_whisper_path) -> Transcriber:
    return Transcriber(load_whisper(str(tiny_whisper_path)), threads=2)


@pytest.fixture(scope="module")
def speech(assets) -> list[np.ndarray]:
    """Two real spoken sentences at the browser's rate."""
    clips = []
    for name in ("LJ001-0001", "LJ001-0002"):
        x, rate = soundfile.read(assets / f"speech/ljspeech/{name}.wav", dtype="float32")
        clips.append(soxr.resample(x, rate, BROWSER_RATE).astype(np.float32))
    return clips


class Recorder:
    """The transcriber, noting each piece's length and how much audio had been streamed when
    the listener handed the piece over (through `handover`, its one background worker)."""

    def __init__(self, transcriber: Transcriber) -> None:
        self.transcriber = transcriber
        self.fed_s = 0.0
        self.handed_over_s: list[float] = []  # audio streamed when each piece was handed over
        self.lengths_s: list[float] = []  # each transcribed piece's length
        self.texts: list[str] = []  # each transcribed piece's text
        self.drafts: list[str | None] = []  # each piece's draft (its beginning's text)
        recorder = self

        class Handover(ThreadPoolExecutor):
            def submit(self, fn, /, *args, **kwargs):
                recorder.handed_over_s.append(recorder.fed_s)
                return super().submit(fn, *args, **kwargs)

        self.handover = Handover(1)

    def __call__(
        self,
        audio: np.ndarray,
        language: str | None,
        max_tokens: int,
        draft: str | None = None,
        urgent: bool = True,
    ) -> str:
        self.lengths_s.append(len(audio) / SAMPLE_RATE)
        self.drafts.append(draft)
        self.texts.append(
            self.transcriber.transcribe(audio, language, max_tokens, draft=draft, urgent=urgent)
        )
        return self.texts[-1]


def _stream(
    listener: Listener, recorder: Recorder, audio: np.ndarray, keep_up: bool = False
) -> list[tuple[float, str]]:
    """Feed AUDIO as the browser does, in int16 chunks; (audio streamed, text) per question.
    KEEP_UP: each chunk's transcriptions end before the next chunk comes (a fast machine)."""
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    step, questions = int(CHUNK_S * BROWSER_RATE), []
    for start in range(0, len(pcm), step):
        recorder.fed_s = (start + step) / BROWSER_RATE
        text = listener.feed(BROWSER_RATE, pcm[start : start + step])
        if text is not None:
            questions.append((recorder.fed_s, text))
        if keep_up:
            recorder.handover.submit(lambda: None).result()
    return questions


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * BROWSER_RATE), np.float32)


def test_a_question_is_sent_once_its_trailing_silence_has_passed(transcriber, speech):
    recorder = Recorder(transcriber)
    listener = Listener(recorder, recorder.handover, "en", END_OF_QUESTION_S)
    audio = np.concatenate([_silence(0.5), speech[0], _silence(2.0)])
    speech_end_s = (len(audio) - len(_silence(2.0))) / BROWSER_RATE
    questions = _stream(listener, recorder, audio)
    assert len(questions) == 1
    at_s, text = questions[0]
    assert speech_end_s + END_OF_QUESTION_S - CHUNK_S <= at_s
    assert at_s <= speech_end_s + END_OF_QUESTION_S + VAD_LATENCY_S + CHUNK_S
    assert text.strip()


def test_speech_before_a_pause_is_transcribed_while_the_student_goes_on(transcriber, speech):
    recorder = Recorder(transcriber)
    listener = Listener(recorder, recorder.handover, "en", END_OF_QUESTION_S)
    first_end_s = 0.5 + len(speech[0]) / BROWSER_RATE
    second_end_s = first_end_s + 0.6 + len(speech[1]) / BROWSER_RATE
    questions = _stream(
        listener,
        recorder,
        np.concatenate([_silence(0.5), speech[0], _silence(0.6), speech[1], _silence(2.0)]),
    )
    assert len(questions) == 1  # a 0.6 s pause is a pause, not the end of the question
    assert len(recorder.handed_over_s) >= 2
    assert recorder.handed_over_s[0] < first_end_s + PAUSE_S + CHUNK_S  # long before the end
    # At the end of speech only the last piece was left: shorter than the whole question.
    assert recorder.lengths_s[-1] < second_end_s - 0.5 - 1.0
    # Whisper's cost per piece is a whole window: no piece but the last is shorter than the floor,
    # unless it was a guess at a pause that did not end the question.
    short = sum(length < MIN_SEGMENT_S for length in recorder.lengths_s[:-1])
    assert short <= listener.last_question.guesses_dropped


def test_a_short_question_is_transcribed_during_its_trailing_silence(transcriber, speech):
    recorder = Recorder(transcriber)
    listener = Listener(recorder, recorder.handover, "en", end_of_question_s=1.5)
    assert len(speech[1]) / BROWSER_RATE < MIN_SEGMENT_S  # no pause alone would cut it
    questions = _stream(listener, recorder, np.concatenate([_silence(0.5), speech[1], _silence(3)]))
    assert len(questions) == 1
    at_s, _ = questions[0]
    assert len(recorder.lengths_s) == 1  # Whisper ran once, on the whole question
    # ... sent at the pause, long before the trailing silence was over.
    assert recorder.handed_over_s[0] <= at_s - (1.5 - PAUSE_S - VAD_LATENCY_S - CHUNK_S)
    assert listener.last_question.pieces == 1


def test_a_guess_at_a_pause_is_dropped_when_the_student_goes_on(transcriber, speech):
    recorder = Recorder(transcriber)
    listener = Listener(recorder, recorder.handover, "en", END_OF_QUESTION_S)
    short = speech[1]
    audio = np.concatenate([_silence(0.5), short, _silence(0.5), short, _silence(2.0)])
    questions = _stream(listener, recorder, audio)
    assert len(questions) == 1  # the 0.5 s pause did not end it
    assert listener.last_question.guesses_dropped == 1
    assert listener.last_question.pieces == 1
    # The one piece kept holds both utterances: the first was not lost with its guess.
    assert recorder.lengths_s[-1] > 2 * len(short) / BROWSER_RATE - 0.5


LOUD = 10 ** (-30 / 20)  # a sample this loud (-30 dBFS) is speech, not the room


def _covered(recording: np.ndarray, pieces: list[np.ndarray]) -> np.ndarray:
    """Which samples of RECORDING (16 kHz) the PIECES handed to the transcriber hold."""
    covered = np.zeros(len(recording), bool)
    for piece in pieces:
        k = int(np.argmax(np.abs(piece)))  # a distinctive sample, then the whole piece
        starts = [i - k for i in np.flatnonzero(recording == piece[k]) if i >= k]
        start = next(a for a in starts if np.array_equal(recording[a : a + len(piece)], piece))
        covered[start : start + len(piece)] = True
    return covered


@pytest.mark.parametrize(
    "clips, gap_s, chunk_s",
    [
        (["LJ001-0009"], 0.0, CHUNK_S),  # Silero's start comes 0.1 s after "Printing" begins
        (["LJ001-0025"], 0.0, CHUNK_S),  # ... and 0.35 s after this one's first sound
        (["LJ001-0001", "LJ001-0002"], 0.5, CHUNK_S),  # one question, cut at its pause
        # Two questions, the second begun in the chunk that ended the first (chunks bunched up
        # on a slow link): the rest of that chunk is the next question's start.
        (["LJ001-0002", "LJ001-0009"], END_OF_QUESTION_S + 0.1, 1.0),
    ],
    ids=["soft-onset", "late-start", "two-breaths", "two-questions"],
)
def test_every_loud_sample_of_the_speech_reaches_the_transcriber(assets, clips, gap_s, chunk_s):
    pieces: list[np.ndarray] = []

    def keep(audio: np.ndarray, language: str | None, max_tokens: int, draft=None, urgent=True):
        pieces.append(audio.copy())
        return "words"

    gap = np.zeros(int(gap_s * SAMPLE_RATE), np.float32)
    speech = [audio.load(assets / f"speech/ljspeech/{name}.wav") for name in clips]
    recording = np.concatenate(
        [np.zeros(SAMPLE_RATE // 2, np.float32), *[x for s in speech for x in (s, gap)][:-1]]
        + [np.zeros(2 * SAMPLE_RATE, np.float32)]
    )
    with ThreadPoolExecutor(1) as executor:
        listener = Listener(keep, executor, "en", END_OF_QUESTION_S)
        step = int(chunk_s * SAMPLE_RATE)
        for start in range(0, len(recording), step):
            listener.feed(SAMPLE_RATE, recording[start : start + step])
    loud = np.abs(recording) > LOUD
    assert loud.any() and not (loud & ~_covered(recording, pieces)).any()


def test_noise_and_silence_are_not_questions(transcriber):
    recorder = Recorder(transcriber)
    listener = Listener(recorder, recorder.handover, "en", END_OF_QUESTION_S)
    draws = non_speech(np.random.default_rng(0))
    sounds = [
        soxr.resample(draws[kind](), SAMPLE_RATE, BROWSER_RATE).astype(np.float32)
        for kind in ("silence", "white noise", "steady tone", "keyboard clicks")
    ]
    assert _stream(listener, recorder, np.concatenate(sounds)) == []
    assert recorder.lengths_s == []  # Whisper never ran


def test_reset_forgets_the_question_in_progress(transcriber, speech):
    recorder = Recorder(transcriber)
    listener = Listener(recorder, recorder.handover, "en", END_OF_QUESTION_S)
    assert (
        _stream(listener, recorder, np.concatenate([_silence(0.5), speech[0][:BROWSER_RATE]])) == []
    )
    listener.reset()  # an answer began: what was heard is not a question
    assert _stream(listener, recorder, _silence(2.0)) == []


def test_a_question_that_never_pauses_long_enough_ends_at_the_length_limit(
    transcriber, speech, monkeypatch
):
    monkeypatch.setattr("tutor.live.MAX_QUESTION_S", 12.0)  # the limit, scaled down for speed
    recorder = Recorder(transcriber)
    listener = Listener(recorder, recorder.handover, "en", END_OF_QUESTION_S)
    talk = np.concatenate([speech[0], _silence(0.5)] * 3)  # 0.5 s pauses: never the end
    questions = _stream(listener, recorder, talk)
    assert questions and questions[0][0] <= 12.0 + 1.0 + CHUNK_S


def test_the_words_heard_are_handed_on_while_the_trailing_silence_runs(transcriber, speech):
    recorder = Recorder(transcriber)
    listener = Listener(recorder, recorder.handover, "en", END_OF_QUESTION_S)
    heard: list[tuple[str, threading.Event, bool]] = []
    listener.on_words = lambda *words: heard.append(words)
    speech_end = np.concatenate([_silence(0.5), speech[1], _silence(PAUSE_S + 2 * CHUNK_S)])
    assert _stream(listener, recorder, speech_end) == []  # the pause is heard, not yet the end
    recorder.handover.submit(lambda: None).result()  # the guess's transcription is done
    assert [words for words, _, _ in heard] == [recorder.texts[-1]]
    assert heard[0][2]  # they end at a pause: perhaps the whole question (its answer may begin)
    questions = _stream(listener, recorder, _silence(2.0))
    assert [text for _, text in questions] == [heard[0][0]]  # the question is those words
    assert not heard[0][1].is_set()  # still the question's words


def test_words_transcribed_after_the_trailing_silence_are_still_handed_on(transcriber, speech):
    """A slow machine: the question's last piece is transcribed only once its trailing silence
    has ended. Its words still go to on_words (the prefill then runs while the page sends the
    question back), as soon as they are ready."""
    recorder = Recorder(transcriber)
    question_end_s = 0.5 + len(speech[1]) / BROWSER_RATE + END_OF_QUESTION_S
    slow = recorder.__call__

    def after_the_silence(audio, language, max_tokens, draft=None, urgent=True):
        while recorder.fed_s < question_end_s:  # the feed that ends the question has begun
            time.sleep(0.005)
        return slow(audio, language, max_tokens, draft, urgent)

    listener = Listener(after_the_silence, recorder.handover, "en", END_OF_QUESTION_S)
    heard: list[str] = []
    listener.on_words = lambda words, outdated, complete: heard.append(words)
    questions = _stream(listener, recorder, np.concatenate([_silence(0.5), speech[1], _silence(2)]))
    assert len(questions) == 1
    recorder.handover.submit(lambda: None).result()  # its callbacks have run
    assert heard == [questions[0][1]]


def test_words_a_student_goes_on_from_are_marked_outdated(transcriber, speech):
    recorder = Recorder(transcriber)
    listener = Listener(recorder, recorder.handover, "en", END_OF_QUESTION_S)
    heard: list[tuple[str, threading.Event, bool]] = []
    listener.on_words = lambda *words: heard.append(words)
    _stream(listener, recorder, np.concatenate([_silence(0.5), speech[1], _silence(0.6)]))
    recorder.handover.submit(lambda: None).result()
    assert len(heard) == 1 and not heard[0][1].is_set()
    _stream(listener, recorder, speech[1])  # the student goes on
    assert heard[0][1].is_set()


def _listen_with_partials(transcriber, audio, partials):
    """(handovers to Whisper before the speech ended, (words, whether they end at a pause)
    handed on, questions) for AUDIO (speech[0] between silences) streamed to a listener with
    PARTIALS."""
    recorder = Recorder(transcriber)
    listener = Listener(recorder, recorder.handover, "en", END_OF_QUESTION_S, partials)
    heard: list[tuple[str, bool]] = []
    listener.on_words = lambda words, outdated, complete: heard.append((words, complete))
    # Kept up: whether a piece's words came before the student's next words (and so may be the
    # whole question) must not depend on how busy this machine is.
    questions = _stream(listener, recorder, audio, keep_up=True)
    recorder.handover.submit(lambda: None).result()  # every callback has run
    speech_end_s = (len(audio) - len(_silence(2.0))) / BROWSER_RATE
    return sum(at < speech_end_s for at in recorder.handed_over_s), heard, questions


def test_while_the_student_speaks_the_words_so_far_are_handed_on(transcriber, speech):
    """Partials (the fitted window's): the piece still being spoken is transcribed now and then
    for the prefill; the transcript is made of the whole pieces, as without them."""
    audio = np.concatenate([_silence(0.5), speech[0], _silence(2.0)])
    early, heard, questions = _listen_with_partials(transcriber, audio, threading.Semaphore(1))
    early_without, heard_without, questions_without = _listen_with_partials(
        transcriber, audio, None
    )
    assert early > early_without  # more of the speech went to Whisper while it was spoken
    assert len(heard) > len(heard_without)
    assert [q for _, q in questions] == [q for _, q in questions_without]  # the same transcript
    # A partial may end in the middle of a word: never the whole question (no answer begins).
    assert [words for words, complete in heard if complete] == [w for w, _ in heard_without]
    assert all(complete for _, complete in heard_without)


def test_a_partial_is_skipped_while_another_is_in_flight(transcriber, speech):
    audio = np.concatenate([_silence(0.5), speech[0], _silence(2.0)])
    elsewhere = threading.Semaphore(1)
    elsewhere.acquire()  # another student's partial is being transcribed all along
    early, heard, _ = _listen_with_partials(transcriber, audio, elsewhere)
    early_without, heard_without, _ = _listen_with_partials(transcriber, audio, None)
    assert (early, heard) == (early_without, heard_without)


def test_students_beyond_the_listening_limit_hear_busy():
    from types import SimpleNamespace

    from tutor.errors import BusyError
    from tutor.page import Listeners

    tutor = SimpleNamespace(transcriber=SimpleNamespace(transcribe=lambda *_, **__: ""))
    listeners = Listeners(
        tutor,
        SimpleNamespace(max_listeners=2, end_of_speech_s=0.8, whisper_window="full", stt_url=""),
    )
    first = listeners.of("a", "en")
    listeners.of("b", "en")
    assert listeners.of("a", "en") is first  # a student's next chunk: the same listener
    with pytest.raises(BusyError):
        listeners.of("c", "en")
    listeners.close("a")  # a page closed, or its microphone stopped
    listeners.of("c", "en")


def test_partials_only_where_a_piece_costs_what_its_length_does():
    """Partials with the local Whisper's fitted window; not with its 30 s window (each would
    cost a whole window), nor with a speech server (its cost is not known here)."""
    from types import SimpleNamespace

    from tutor.page import Listeners

    tutor = SimpleNamespace(transcriber=SimpleNamespace(transcribe=lambda *_, **__: ""))
    for window, stt_url, partials in (("fit", "", True), ("full", "", False), ("fit", "x", False)):
        settings = SimpleNamespace(
            max_listeners=2, end_of_speech_s=0.8, whisper_window=window, stt_url=stt_url
        )
        listener = Listeners(tutor, settings).of("a", "en")
        assert (listener.partials is not None) == partials


def test_a_piece_is_decoded_from_its_latest_partial(transcriber, speech):
    """The question's last piece is transcribed from the words its latest partial already has
    (tutor.draft_decoding); without partials there is no draft."""
    audio = np.concatenate([_silence(0.5), speech[0], _silence(2.0)])
    drafts = {}
    for partials in (threading.Semaphore(1), None):
        recorder = Recorder(transcriber)
        listener = Listener(recorder, recorder.handover, "en", END_OF_QUESTION_S, partials)
        listener.on_words = lambda words, outdated, complete: None
        _stream(listener, recorder, audio, keep_up=True)
        drafts[partials is not None] = recorder
    with_partials = drafts[True]
    # Pieces (4.7 and 5.6 s long, cut at a pause), each after its partials (every second).
    assert len(with_partials.lengths_s) > 2 + 2 * 2
    for i, draft in enumerate(with_partials.drafts):
        if i and with_partials.lengths_s[i - 1] < with_partials.lengths_s[i]:  # a piece goes on
            assert draft == with_partials.texts[i - 1]
    assert with_partials.drafts[-1] is not None
    assert drafts[False].drafts == [None] * len(drafts[False].drafts)
