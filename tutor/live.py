"""Hands-free questions: the microphone streamed to the server, cut at the pauses Silero VAD hears
and transcribed while the student is still speaking; a trailing silence ends the question, and
by then its transcript is (nearly) ready.

One `Listener` per student who is listening. Its segments end at pauses (PAUSE_S), so no word is
cut in half, once they hold MIN_SEGMENT_S of speech; each goes to Whisper at once, in the
background, with margins of silence around Silero's bounds (PIECE_LEAD_S, PIECE_TAIL_S). A
shorter piece goes to Whisper at its pause too, as a guess: if the pause turns out to be the end
of the question, the guess is the rest of the transcript, computed during the trailing silence;
if the student goes on, it is dropped (or never started) and the piece joins the next one.
Whenever the words so far are all transcribed, `on_words` hears them: the app prefills the
model with the question they make (tutor.batching), so that the answer's prompt is mostly
evaluated by the time the trailing silence sends it; when they end at a pause (they may be the
whole question), it begins the answer itself, whose first tokens then wait for the question.
With partials on (Whisper's `fit` window, whose cost follows the audio's length), the words of
the piece still being spoken are transcribed every PARTIAL_EVERY_S as well, for the prefill
only (a partial may end in the middle of a word: no answer begins), so that when the question
ends only its last words remain to be evaluated; and the piece's own transcription decodes from the
latest partial's words (a draft: tutor.draft_decoding), so that mostly its last words cost a
decoding step each.

How they share the cores: the VAD (Silero's ONNX model, ~6 ms of one core per second of audio)
runs on the thread that receives the chunk; Whisper runs one piece at a time, on the one native
thread that llama.cpp's answer steps also use (tutor.threads), so a piece's transcription holds
the other students' answers for its duration, as an uploaded recording's does, and no more. A
piece cut at a pause (or a guess) does not wait for the answer step in progress: it cuts it
short, and the step is redone after it, which costs the others at most one step per piece (a
partial waits for the step to end: it costs them nothing more).
A guess dropped before it starts never runs (one already running finishes, unused), so each
pause costs at most one transcription. Partials are bounded app-wide: one in flight at a time
(a student whose turn it would be skips it rather than queue), each at most PARTIAL_EVERY_S
apart per student, each the speech so far in a window fitted to it (~0.1 s of encoder for 5 s
of speech, plus its words' decoding). A prefill is prompt evaluation in the engine's steps: it
takes a slot only while one is free and no one waits, gives it up to any real question at the
next step, and is cancelled once its words are outdated, so it delays other students' tokens by
at most its share of the steps it runs in, as a newcomer's prompt does (chunked prefill). An
early answer adds, on the same terms, at most EARLY_TOKENS (8) tokens of one more sequence to
the steps per pause, and its prompt step goes first, without the others' tokens (as any answer
about to sample its first token: tutor.batching), so their next tokens come one step later; it
is cancelled as soon as the student speaks again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import soxr

from tutor.audio import SAMPLE_RATE, AudioError
from tutor.vad import MIN_SPEECH_S, load_vad  # a shorter burst (a click) is no speech

VAD_WINDOW = 512  # samples Silero VAD takes at a time at 16 kHz (32 ms)
PAUSE_S = 0.3  # a pause this long may end a segment: it goes to Whisper while the student goes on
# ... once it holds this much: openai-whisper encodes a whole 30 s window for any piece, so each
# piece costs as much as a whole question; fewer, longer pieces keep Whisper from falling behind
# the speech and from holding the native thread that other students' answers use.
MIN_SEGMENT_S = 2.0
END_OF_QUESTION_S = 0.8  # default trailing silence that ends a question (--end-of-speech-s)
MAX_QUESTION_S = 60.0  # speech beyond this in one question ends it
# Whisper's text for a piece of speech is capped: fast speech is ~4 words (~6 tokens) a second,
# and a cap bounds what noise mistaken for speech can cost.
TOKENS_PER_S, MIN_TOKENS = 10, 16
PREROLL_S = 1.0  # audio kept from before a question's first speech (Silero's start is padded)
# Silero's streaming events bound speech tightly (30 ms of padding at the start; none at the end),
# and a soft onset or a word's fading end falls outside them: on the shared clips its start came
# up to 0.35 s after the first loud sample (> -30 dBFS), and a recognizer trained on real speech
# loses or changes a word cut there (bench.streaming_wer). So a question's first piece starts
# PIECE_LEAD_S before its first speech (from the pre-roll), and each piece ends PIECE_TAIL_S into
# the pause after its speech (half of PAUSE_S: audio already heard when the pause is noticed; the
# next piece starts there, so nothing is lost or heard twice).
PIECE_LEAD_S = 0.5
PIECE_TAIL_S = PAUSE_S / 2
# While a student speaks, the words so far are transcribed this often (when partials are on),
# for `on_words` only: the transcript itself is made of whole pieces cut at pauses.
PARTIAL_EVERY_S = 1.0
DRAFTS_KEPT = 2  # transcriptions of the open piece's beginning kept as drafts (the latest wins)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuestionTiming:
    """How a hands-free question's transcript came together."""

    pieces: int  # pieces whose text makes up the question
    guesses_dropped: int  # pieces sent at a pause that turned out not to end the question
    waited_s: float  # from the end of the trailing silence until the whole text was ready


class Listener:
    """One student's microphone stream → questions, each ready soon after its trailing silence.

    `feed` takes each chunk the browser sends and returns a question's text when one has ended
    (or raises AudioError when nothing in it could be understood), else None. `on_words`, when
    set, is called with the question's words so far, an Event set once they are outdated, and
    whether they end at a pause (and so may be the whole question), whenever they are all
    transcribed (on the transcription thread: it must return quickly).
    """

    def __init__(
        self,
        transcribe: Callable[..., str],
        executor: ThreadPoolExecutor,
        language: str | None,
        end_of_question_s: float = END_OF_QUESTION_S,
        partials: threading.Semaphore | None = None,
        margins_s: tuple[float, float] = (PIECE_LEAD_S, PIECE_TAIL_S),
    ) -> None:
        """TRANSCRIBE(audio at 16 kHz, language, max_tokens, draft=text of the audio's beginning
        or None, urgent=False for a partial) → text runs on EXECUTOR.
        PARTIALS, when given (one semaphore for all listeners: partial transcriptions in flight
        app-wide), turns on partial transcriptions while the student speaks (PARTIAL_EVERY_S).
        MARGINS_S: audio kept before a question's first speech and after each piece's speech
        (PIECE_LEAD_S, PIECE_TAIL_S)."""
        from silero_vad import VADIterator

        self.transcribe = transcribe
        self.executor = executor
        self.language = language
        self.end_of_question = int(end_of_question_s * SAMPLE_RATE)  # samples
        # A model per listener: Silero keeps its recurrent state inside the model.
        self.vad = VADIterator(
            load_vad(), sampling_rate=SAMPLE_RATE, min_silence_duration_ms=int(PAUSE_S * 1000)
        )
        self._resampler: soxr.ResampleStream | None = None
        self._rate = 0
        self._pending = np.zeros(0, np.float32)  # resampled, not yet seen by the VAD
        self._lock = threading.Lock()
        self.last_question: QuestionTiming | None = None
        self.on_words: Callable[[str, threading.Event, bool], None] | None = None
        self._dropped = 0  # guesses dropped in the question in progress
        self._question_id = 0  # which question the transcriptions in flight belong to
        # The question that ended last: its words, once transcribed, still go to `on_words`
        # (the prefill then runs while the page sends the question back).
        self._ended_id = 0
        self._outdated: threading.Event | None = None  # set once the words heard are outdated
        self._outdated_lock = threading.Lock()
        self.partials = partials
        self._lead, self._tail_after = (int(m * SAMPLE_RATE) for m in margins_s)  # samples
        self._start_listening()

    def feed(self, rate: int, samples: np.ndarray) -> str | None:
        """Add a chunk (RATE Hz; int16 or float; mono, or (frames, channels))."""
        with self._lock:
            self._pending = np.concatenate([self._pending, self._to_16k(rate, samples)])
            n = len(self._pending) // VAD_WINDOW * VAD_WINDOW
            windows, self._pending = self._pending[:n], self._pending[n:]
            segments = self._listen(windows)
            if segments is None:
                self._maybe_partial()
                return None
            ended = time.perf_counter()
            text = _text_of(segments)
            timing = QuestionTiming(len(segments), self._dropped, time.perf_counter() - ended)
            self.last_question, self._dropped = timing, 0
            log.info(
                "hands-free question: %d piece(s), %d guess(es) dropped, its text ready %.2f s "
                "after its trailing silence",
                timing.pieces,
                timing.guesses_dropped,
                timing.waited_s,
            )
        if not text:
            raise AudioError("No words were recognised in what you said. Please try again.")
        return text

    def reset(self) -> None:
        """Forget the question in progress and listen afresh."""
        with self._lock:
            self._drop_guess()
            self._dropped = 0
            self.vad.reset_states()
            self._pending = np.zeros(0, np.float32)
            self._rate = 0  # a fresh resampler: the old one still holds the last sounds
            self._start_listening()

    def _start_listening(self) -> None:
        self._heard = 0  # samples the VAD has seen since its reset (its own sample count)
        self._preroll = np.zeros(0, np.float32)
        self._start_question()

    def _start_question(self) -> None:
        self._question_id += 1
        self._audio = np.zeros(0, np.float32)  # the question so far, from its pre-roll
        self._offset = 0  # VAD sample at which _audio starts
        self._cut = 0  # where in _audio the next segment starts
        self._spoken_from = 0  # where in _audio the next segment's speech starts (its length)
        self._speech_start: int | None = None  # VAD sample of the open segment's start
        self._last_end: int | None = None  # VAD sample of the last segment's end
        self._segments: list[Future] = []  # transcriptions of the question's finished segments
        self._guess: tuple[int, Future] | None = None  # (VAD sample it ends at, its transcript)
        self._partial_end = 0  # where in _audio the last partial transcription ended
        # Transcriptions of the open piece's beginning (partials, a dropped guess), latest last:
        # the piece's own transcription decodes from the latest's words (tutor.draft_decoding).
        self._drafts: deque[Future] = deque(maxlen=DRAFTS_KEPT)

    def _to_16k(self, rate: int, samples: np.ndarray) -> np.ndarray:
        x = samples.astype(np.float32) / (32768.0 if samples.dtype == np.int16 else 1.0)
        if x.ndim == 2:
            x = x.mean(axis=1)
        if rate == SAMPLE_RATE:
            return x
        if rate != self._rate:
            self._resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
            self._rate = rate
        return self._resampler.resample_chunk(x)

    def _listen(self, windows: np.ndarray) -> list[Future] | None:
        """The VAD over WINDOWS; a question's segments when it ended."""
        import torch  # here: an app on remote servers loads torch only if a student listens

        with torch.inference_mode():
            for i in range(0, len(windows), VAD_WINDOW):
                window = windows[i : i + VAD_WINDOW]
                event = self.vad(torch.from_numpy(window)) or {}
                self._heard += VAD_WINDOW
                in_question = self._speech_start is not None or self._last_end is not None
                if in_question:
                    self._audio = np.concatenate([self._audio, window])
                else:
                    self._preroll = np.concatenate([self._preroll, window])[
                        -int(PREROLL_S * SAMPLE_RATE) :
                    ]
                if "start" in event:
                    if not in_question:  # a question begins
                        self._audio, self._preroll = self._preroll, np.zeros(0, np.float32)
                        self._offset = self._heard - len(self._audio)
                        self._spoken_from = max(0, event["start"] - self._offset)
                        self._cut = max(0, self._spoken_from - self._lead)
                    self._drop_guess()  # the student goes on: the pause did not end it
                    if in_question:
                        self._words_outdated()  # an answer begun at the pause included
                    self._speech_start = event["start"]
                if "end" in event and self._speech_start is not None:
                    if event["end"] - self._speech_start >= MIN_SPEECH_S * SAMPLE_RATE:
                        self._last_end = event["end"]
                        spoken = event["end"] - self._offset - self._spoken_from
                        tail = self._tail(event["end"])
                        if spoken >= MIN_SEGMENT_S * SAMPLE_RATE:
                            self._segment(tail)
                        else:  # perhaps the question's end: its rest, transcribed meanwhile
                            self._guess = (event["end"], self._transcription(tail))
                    elif self._last_end is None:  # only a burst so far: no question began
                        self._start_question()
                    self._speech_start = None
                if self._question_ended():
                    # The chunk's rest is the next question's pre-roll (or its start).
                    self._pending = np.concatenate([windows[i + VAD_WINDOW :], self._pending])
                    return self._finish()
        return None

    def _tail(self, end: int) -> int:
        """Where a piece whose speech ends at END (a VAD sample) is cut: PIECE_TAIL_S into the
        pause, as far as it has been heard."""
        return min(end + self._tail_after, self._heard)

    def _question_ended(self) -> bool:
        if self._speech_start is None and self._last_end is None:
            return False  # no question yet
        if self._heard - self._offset > MAX_QUESTION_S * SAMPLE_RATE:
            return True  # a very long question (or one with only short pauses) ends here
        if self._speech_start is not None:
            return False  # still speaking
        return self._heard - self._last_end >= self.end_of_question

    def _maybe_partial(self) -> None:
        """While the student speaks, every PARTIAL_EVERY_S: the open piece so far goes to
        Whisper, and its words with the pieces' before it to `on_words` (the prefill then follows
        the student). Never part of the transcript: a partial may end in the middle of a word."""
        if self.partials is None or self.on_words is None or self._speech_start is None:
            return
        end = len(self._audio)
        if end - max(self._spoken_from, self._partial_end) < PARTIAL_EVERY_S * SAMPLE_RATE:
            return
        if not self.partials.acquire(blocking=False):
            return  # another student's partial is in flight: this one is skipped, not queued
        self._partial_end = end
        future = self.executor.submit(
            self._transcribe_quietly,
            self._audio[self._cut : end].copy(),
            list(self._drafts),
            urgent=False,  # for the prefill only: it cuts no one's answer step short
        )
        self._drafts.append(future)
        future.add_done_callback(lambda _: self.partials.release())
        words = [*self._segments, future]
        question = self._question_id
        future.add_done_callback(lambda _: self._words_ready(question, words, False))

    def _segment(self, end: int) -> None:
        """Send the speech from the last cut to END to Whisper, in the background."""
        self._segments.append(self._transcription(end))
        self._cut = self._spoken_from = max(self._cut, end - self._offset)
        self._drafts.clear()  # they began where this piece did

    def _transcription(self, end: int) -> Future:
        """The speech from the last cut to END, sent to Whisper in the background; once it and
        the question's pieces before it are transcribed, `on_words` hears them all."""
        stop = max(self._cut, end - self._offset)
        future = self.executor.submit(
            self._transcribe_quietly, self._audio[self._cut : stop].copy(), list(self._drafts)
        )
        self._drafts.append(future)  # a guess dropped, once transcribed, is a draft as well
        words = [*self._segments, future]
        question = self._question_id
        future.add_done_callback(lambda _: self._words_ready(question, words, True))
        return future

    def _words_ready(self, question: int, words: list[Future], complete: bool) -> None:
        """On the transcription thread: WORDS (this question's pieces so far; COMPLETE: the last
        ends at a pause) are transcribed."""
        on_words = self.on_words
        if (
            on_words is None
            or question not in (self._question_id, self._ended_id)  # long over
            or not all(f.done() and not f.cancelled() for f in words)
        ):
            return
        text = _text_of(words)
        if not text:
            return
        # Not the whole question if the student has gone on meanwhile.
        complete = complete and self._speech_start is None
        outdated = threading.Event()
        with self._outdated_lock:
            if self._outdated is not None:
                self._outdated.set()
            self._outdated = outdated
        try:
            on_words(text, outdated, complete)
        except Exception:  # a guess's use must never break listening
            log.exception("on_words failed")

    def _words_outdated(self) -> None:
        with self._outdated_lock:
            if self._outdated is not None:
                self._outdated.set()
                self._outdated = None

    def _drop_guess(self) -> None:
        if self._guess is not None:
            self._guess[1].cancel()  # not started yet: it never runs
            self._guess = None
            self._dropped += 1
            self._words_outdated()

    def _transcribe_quietly(
        self, audio: np.ndarray, drafts: list[Future], urgent: bool = True
    ) -> str:
        """AUDIO's text ("" if none), decoded from the latest of DRAFTS (transcriptions of its
        beginning, oldest first) that has words. URGENT: see `Transcriber.transcribe`."""
        draft = next((t for t in map(_text_or_none, reversed(drafts)) if t), None)
        try:
            max_tokens = MIN_TOKENS + int(TOKENS_PER_S * len(audio) / SAMPLE_RATE)
            return self.transcribe(audio, self.language, max_tokens, draft=draft, urgent=urgent)
        except AudioError:  # a cough, a breath: nothing was said in this piece
            return ""

    def _finish(self) -> list[Future]:
        """The question's segments (the open one cut here); the next question starts afresh."""
        if self._speech_start is not None:  # too long: the open segment ends here
            self._drop_guess()
            self._segment(self._heard)
        elif self._guess is not None and self._guess[0] == self._last_end:
            self._segments.append(self._guess[1])  # the rest, sent at the last pause
            self._guess = None
        elif self._tail(self._last_end) - self._offset > self._cut:  # speech since the last cut
            self._segment(self._tail(self._last_end))
        segments = self._segments
        self._ended_id = self._question_id
        self._start_question()
        return segments


def _text_or_none(transcription: Future) -> str | None:
    """A transcription's text, if it has been made (not cancelled, not failed)."""
    if not transcription.done() or transcription.cancelled() or transcription.exception():
        return None
    return transcription.result()


def _text_of(pieces: list[Future]) -> str:
    """The text of transcribed PIECES, in order (a piece with no words adds nothing)."""
    return " ".join(t for t in (f.result() for f in pieces) if t).strip()
