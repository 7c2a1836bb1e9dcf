"""The tutor as a service: recording → question, question + mode + history → streamed answer.

Everything the app does, without the user interface: the Gradio app and its API endpoints are
thin layers over `Tutor`, and tests can drive it directly.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from tutor import audio
from tutor.conversation import Message, fit_messages, normalize_history
from tutor.errors import TutorError
from tutor.llm import Activity, GenerationStats, InLine
from tutor.modes import Generation, TutorMode, get_mode

MAX_QUESTION_CHARS = 20000
log = logging.getLogger(__name__)
BEGUN_EARLY = " (begun before it was asked)"  # in the answer's log line: an early answer


# Control characters other than newline and tab (a model may sample any byte): nothing a page
# shows; a carriage return ends a line as a newline does.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def printable(text: str) -> str:
    """TEXT with line ends as newlines and no other control characters than tabs."""
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


class LanguageModel(Protocol):
    """What the tutor needs of a language model: the embedded `tutor.llm.TutorLLM`, or
    `tutor.remote_llm.RemoteLLM` on an OpenAI-compatible server."""

    n_ctx: int  # one conversation's window, in tokens

    def pin(self, messages: list[Message]) -> int: ...

    def prefill(
        self,
        messages: list[Message],
        cancel: threading.Event | None = None,
        answer: Generation | None = None,
        max_tokens: int | None = None,
    ) -> None: ...

    def count_tokens(self, messages: list[Message]) -> int: ...

    def stream(
        self,
        messages: list[Message],
        generation: Generation,
        max_tokens: int | None = None,
        cancel: threading.Event | None = None,
        seed: int | None = None,
        stats: GenerationStats | None = None,
        places: bool = False,
    ) -> Iterator[str | InLine]: ...

    def activity(self) -> Activity: ...


class SpeechToText(Protocol):
    """What the tutor needs of a transcriber: the local `tutor.transcribe.Transcriber`, or
    `tutor.remote_stt.RemoteTranscriber`."""

    def transcribe(
        self,
        audio: np.ndarray,
        language: str | None = None,
        max_tokens: int | None = None,
        draft: str | None = None,
        urgent: bool = True,
    ) -> str: ...


class Tutor:
    """A language model, a transcriber and the tutor modes, ready to serve students."""

    def __init__(
        self,
        llm: LanguageModel,
        transcriber: SpeechToText,
        modes: dict[str, TutorMode],
        audio_limits: audio.AudioLimits = audio.AudioLimits(),
    ) -> None:
        self.llm = llm
        self.transcriber = transcriber
        self.modes = modes
        self.audio_limits = audio_limits
        for mode in modes.values():  # every student's first question shares these
            llm.pin([{"role": "system", "content": mode.system_prompt}])

    def transcribe(
        self,
        recording: str | Path | bytes | tuple[int, np.ndarray] | None,
        language: str | None = None,
    ) -> str:
        """The question spoken in RECORDING (a path, bytes or (rate, samples))."""
        if recording is None:
            raise audio.AudioError("No recording yet: press the microphone button and speak.")
        return self.transcriber.transcribe(audio.load(recording, self.audio_limits), language)

    def ask(
        self,
        question: str,
        mode: str,
        history: Sequence[dict] | None = None,
        cancel: threading.Event | None = None,
        places: bool = False,
    ) -> Iterator[str | InLine]:
        """Stream the answer to QUESTION in MODE after HISTORY: each item is the answer so far
        (with PLACES, also an `InLine` whenever the question's place in line changes).

        The question, mode and window are checked before this returns, so a bad request fails
        here, with a TutorError, before anything is streamed; a full line fails at the first
        item, with a BusyError.
        """
        tutor_mode = get_mode(self.modes, mode)
        messages, budget = self._prompt(question, tutor_mode, history)
        stats = GenerationStats()
        return self._accumulate(
            self.llm.stream(
                messages,
                tutor_mode.generation,
                max_tokens=budget,
                cancel=cancel,
                stats=stats,
                places=places,
            ),
            stats,
        )

    def prefill(
        self,
        question: str,
        mode: str,
        history: Sequence[dict] | None = None,
        cancel: threading.Event | None = None,
        begin_answer: bool = False,
    ) -> None:
        """Evaluate the prompt that asking QUESTION in MODE after HISTORY would send, ahead of
        the question (a hands-free question whose trailing silence is still running), when the
        model has a slot free; returns at once. A bad question is simply not prefilled.

        BEGIN_ANSWER: the words may be the whole question (they end at a pause): begin its
        answer too, for `ask` to take over with its first tokens ready (tutor.batching)."""
        try:
            tutor_mode = get_mode(self.modes, mode)
            messages, budget = self._prompt(question, tutor_mode, history)
        except TutorError:
            return
        if begin_answer:
            self.llm.prefill(messages, cancel, tutor_mode.generation, budget)
        else:
            self.llm.prefill(messages, cancel)

    def _prompt(
        self, question: object, tutor_mode: TutorMode, history: Sequence[dict] | None
    ) -> tuple[list[Message], int]:
        """(the messages for QUESTION in TUTOR_MODE after HISTORY, the answer's token budget);
        TutorError for a bad question or history."""
        if not isinstance(question, str | None):
            raise TutorError("The question must be text.")
        question = (question or "").strip()
        if not question:
            raise TutorError("Please type or record a question first.")
        if len(question) > MAX_QUESTION_CHARS:
            raise TutorError(
                f"The question is too long ({len(question)} characters; the limit is "
                f"{MAX_QUESTION_CHARS}). Please shorten it."
            )
        messages, budget, _ = fit_messages(
            tutor_mode.system_prompt,
            normalize_history(history),
            question,
            self.llm.count_tokens,
            self.llm.n_ctx,
            tutor_mode.generation.max_tokens,
        )
        return messages, budget

    @staticmethod
    def _accumulate(pieces: Iterator[str | InLine], s: GenerationStats) -> Iterator[str | InLine]:
        answer, shown = "", ""
        for piece in pieces:
            if isinstance(piece, InLine):
                yield piece
                continue
            answer += piece
            now = printable(answer)
            if now != shown:  # a lone control character shows nothing new
                shown = now
                yield shown
        log.info(
            "answer: %d prompt tokens (%d reused from %s, %d evaluated), %d generated, "
            "waited %.2f s, first token %.2f s%s, %.1f tokens/s, stopped: %s",
            s.prompt_tokens,
            s.reused_tokens,
            s.reused_from or "nothing",
            s.evaluated_tokens,
            s.generated_tokens,
            s.queued_s,
            s.time_to_first_token_s,
            BEGUN_EARLY if s.begun_early else "",
            s.tokens_per_s,
            s.stopped,
        )
