"""End of speech → first answer token of a spoken follow-up on the server: hands-free streaming
(tutor.live, fed the microphone in real time, as the page sends it) against today's one-shot
path (the whole recording to Whisper, then the question), side by side on the app's own
components in one process; alone, then with other students' answers streaming; for each of
Whisper's windows (tutor.transcribe: `full`, `fit`).

    python -m bench.voice_server [--out runs/voice-server] [--repeats 5] [--others 4]

No browser and no HTTP: both paths start where the server has the audio (one-shot: the student
presses Stop as the speech ends; hands-free: chunks of LISTEN_CHUNK_S arrive as they are
spoken; each follow-up's speech ends at another point of a chunk, since when the pause is
heard depends on it) and end at the first answer token. What the page adds to each path is
measured by bench.voice, where Chromium shares these 2 cores; here the cores are the server's,
as on a Space, where each student's browser runs on their own device. Whisper base's and Llama
3.2 1B Q4_K_M's shapes with synthetic weights (bench.models); every transcription decodes as many
tokens as real Whisper (tiny.en, bench.real_whisper) writes for that much audio on the shared
clips; the measured student's answers are 16 tokens, the others' 600 (bench.voice.prompts).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench import hardware, models, real_whisper, speech, voice
from tutor.settings import Settings

BROWSER_RATE = 48000  # Hz: what the page's microphone streams, and its recordings hold
LEAD_S, TRAIL_S = 0.5, 3.0  # silence before the question and after it (hands-free)
MODE = "hint"  # the measured student's mode (16-token answers)
WINDOWS = ("full", "fit")
# The app's way (the fit window, each transcription a student waits for cutting the answer step
# in progress short: tutor.threads) against the same with every transcription waiting for that
# step to end, side by side: "fit-waits".
WAITS = "fit-waits"
EVALUATED = re.compile(r"answer: \d+ prompt tokens \(.*?(\d+) evaluated\)")


class AnswerLog(logging.Handler):
    """The prompt tokens each answer evaluated once asked (none for one begun before it was
    asked, an early answer), from tutor.service's log line."""

    def __init__(self) -> None:
        from tutor.service import BEGUN_EARLY  # here: --help stays light (tests/test_layers.py)

        super().__init__(logging.INFO)
        self.begun_early_note = BEGUN_EARLY
        self.evaluated: list[int] = []
        self.begun_early: list[bool] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if m := EVALUATED.search(message):
            early = self.begun_early_note in message
            self.evaluated.append(0 if early else int(m.group(1)))
            self.begun_early.append(early)


def _first_token(stream: Iterator) -> tuple[float, str]:
    """(when the answer's first text came, the whole answer): the stream (text, and places in
    line) is read to its end."""
    first, answer = None, ""
    for piece in stream:
        if not isinstance(piece, str) or not piece:
            continue
        if first is None:
            first = time.perf_counter()
        answer = piece
    if first is None:
        raise RuntimeError("the answer was empty")
    return first, answer


class Student:
    """One student's spoken follow-ups, on one path; the conversation grows with each."""

    def __init__(self, tutor, question_pcm: np.ndarray, name: str) -> None:
        self.tutor = tutor
        self.question_pcm = question_pcm  # int16 at BROWSER_RATE: the speech alone
        self.history: list[dict] = []
        # A first question of its own: two students' conversations never share a cache entry
        # (the same spoken question and greedy answers would otherwise make them the same).
        greeting = f"Hello, I am {name}. Can you help me with maths?"
        self._answered(greeting, _first_token(tutor.ask(greeting, MODE, []))[1])

    def _answered(self, question: str, answer: str) -> None:
        self.history = self.history + [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]

    def one_shot(self) -> float:
        """Seconds from Stop (pressed as the speech ends) to the first answer token."""
        recording = np.concatenate([_silence(LEAD_S), self.question_pcm])
        stop = time.perf_counter()
        question = self.tutor.transcribe((BROWSER_RATE, recording))
        first, answer = _first_token(self.tutor.ask(question, MODE, self.history))
        self._answered(question, answer)
        return first - stop

    def hands_free(self, listener, phase: float = 0.0, early: bool = True) -> tuple[float, float]:
        """(seconds from the end of the speech to the first answer token, the text's wait after
        the trailing silence as the listener logged it). PHASE (0 to 1): where in a chunk the
        speech ends, as a fraction of LISTEN_CHUNK_S (a question is heard a chunk at a time, so
        that matters: vary it). EARLY: answers begun at pauses (the app's way), or prefills
        only."""
        from tutor.page import LISTEN_CHUNK_S

        history = self.history
        listener.reset()
        listener.on_words = lambda words, outdated, complete: self.tutor.prefill(
            words, MODE, history, outdated, begin_answer=early and complete
        )
        lead_s = LEAD_S + phase * LISTEN_CHUNK_S
        stream = np.concatenate([_silence(lead_s), self.question_pcm, _silence(TRAIL_S)])
        speech_end_s = (len(stream) - len(_silence(TRAIL_S))) / BROWSER_RATE
        step = int(LISTEN_CHUNK_S * BROWSER_RATE)
        start = time.perf_counter()
        for begin in range(0, len(stream), step):
            # A chunk arrives once it has been spoken.
            time.sleep(max(0.0, start + (begin + step) / BROWSER_RATE - time.perf_counter()))
            question = listener.feed(BROWSER_RATE, stream[begin : begin + step])
            if question is not None:
                break
        else:
            raise RuntimeError("the listener heard no question")
        first, answer = _first_token(self.tutor.ask(question, MODE, history))
        self._answered(question, answer)
        return first - (start + speech_end_s), listener.last_question.waited_s


def listener_for(tutor, settings: Settings, drafts: bool = True):
    """A hands-free listener as the app's (partials and drafts with the fit window); DRAFTS off:
    every piece decoded from scratch."""
    from tutor.page import Listeners

    def from_scratch(audio, language, max_tokens, draft=None, urgent=True) -> str:
        return tutor.transcriber.transcribe(audio, language, max_tokens, urgent=urgent)

    return Listeners(tutor, settings, None if drafts else from_scratch).of("bench", "en")


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * BROWSER_RATE), np.int16)


class Pieces:
    """Pieces of text streamed to the other students so far (about a token each)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self) -> None:
        with self._lock:
            self.count += 1


def ask_the_tutor(tutor, i: int, stopping: threading.Event, pieces: Pieces | None = None) -> None:
    """Student I asks TUTOR until STOPPING (the answer in flight stops at its next token); each
    piece of text streamed is counted in PIECES, if given."""
    while not stopping.is_set():
        for piece in tutor.ask(voice.other_question(i), "explain", [], cancel=stopping):
            if pieces is not None and isinstance(piece, str) and piece:
                pieces.add()


def run(repeats: int, others: int, threads: int, end_of_speech_s: float) -> dict:
    """The figures: for each load and window, each path's follow-ups, alternating."""
    from tutor import app

    llama, whisper_ckpt = models.llama_1b_q4(), models.whisper_base()
    result: dict = {
        "ceiling": hardware.ceiling(llama, threads),
        "repeats": repeats,
        "others": others,
        "end_of_speech_s": end_of_speech_s,
    }
    clip, _ = speech.clip_near(5.0)
    question_pcm = pcm_of(clip)
    answers = AnswerLog()
    logging.getLogger("tutor.service").addHandler(answers)
    logging.getLogger("tutor.service").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        settings = replace(
            Settings(),
            model=str(llama),
            whisper=str(whisper_ckpt),
            threads=threads,
            prompts=str(voice.prompts(Path(tmp) / "p")),
            parallel=others + 2,  # a slot for each: the measured conversations never wait
            end_of_speech_s=end_of_speech_s,
        )
        tutor = app.load(settings).tutor
        # The synthetic Whisper writes 30 tokens for any audio; real Whisper writes as many as
        # were said: every transcription, on both paths, decodes what tiny.en would.
        whisper = tutor.transcriber
        result["tokens_per_s"] = real_whisper.tokens_per_second()
        tutor.transcriber = real_whisper.DecodesLikeRealWhisper(whisper, result["tokens_per_s"])
        native, interrupt = tutor.llm.thread, tutor.llm.thread.interrupt
        pieces = Pieces()
        for load in ("alone", f"{others} others"):
            others_now = others if load != "alone" else 0
            with voice.OtherStudents(
                others_now, functools.partial(ask_the_tutor, tutor, pieces=pieces)
            ):
                for variant in (*WINDOWS, WAITS):
                    print(f"voice on the server, {load}, {variant} …", flush=True)
                    window = "fit" if variant == WAITS else variant
                    whisper.window = window
                    native.interrupt = None if variant == WAITS else interrupt
                    # As the app would listen with this window (partials with `fit`).
                    listener = listener_for(tutor, replace(settings, whisper_window=window))
                    drafted = (whisper.draft_right_tokens, whisper.drafted_tokens)
                    cut_short = tutor.llm.steps_cut_short()
                    pieces_before, start = pieces.count, time.perf_counter()
                    figures = _paths(
                        tutor, listener, question_pcm, repeats, answers, end_of_speech_s
                    )
                    # What the other students' answers got meanwhile (the cost of cutting
                    # their steps short, fit against fit-waits).
                    figures["others_pieces_per_s"] = (pieces.count - pieces_before) / (
                        time.perf_counter() - start
                    )
                    figures["draft_tokens"] = {
                        "right": whisper.draft_right_tokens - drafted[0],
                        "written": whisper.drafted_tokens - drafted[1],
                    }
                    figures["steps_cut_short"] = tutor.llm.steps_cut_short() - cut_short
                    result.setdefault(load, {})[variant] = figures
        native.interrupt = interrupt
    logging.getLogger("tutor.service").removeHandler(answers)
    for variant in (*WINDOWS, WAITS):
        alone, busy = result["alone"][variant], result[f"{others} others"][variant]
        result[f"{variant}_streaming_vs_one_shot"] = (
            alone["after_silence_median_s"] / alone["one_shot_median_s"]
        )
        result[f"{variant}_streaming_busy_vs_alone"] = (
            busy["after_silence_median_s"] / alone["after_silence_median_s"]
        )
    busy = result[f"{others} others"]
    result["fit_busy_waits_vs_cuts_short"] = (
        busy[WAITS]["after_silence_median_s"] / busy["fit"]["after_silence_median_s"]
    )
    result["others_fit_vs_waits"] = (
        busy["fit"]["others_pieces_per_s"] / busy[WAITS]["others_pieces_per_s"]
    )
    result["fit_streaming_vs_full_one_shot"] = (
        result["alone"]["fit"]["after_silence_median_s"]
        / result["alone"]["full"]["one_shot_median_s"]
    )
    return result


def _paths(
    tutor,
    listener,
    question_pcm: np.ndarray,
    repeats: int,
    answers: AnswerLog,
    end_of_speech_s: float,
) -> dict:
    """Both paths' REPEATS spoken follow-ups, taking turns."""
    one_shot = Student(tutor, question_pcm, "Ada")
    hands_free = Student(tutor, question_pcm, "Grace")
    times: dict[str, list[float]] = {"one_shot": [], "from_speech_end": [], "text_waited": []}
    evaluated: dict[str, list[int]] = {"one_shot": [], "hands_free": []}
    begun_early = 0
    for i in range(repeats):
        times["one_shot"].append(one_shot.one_shot())
        evaluated["one_shot"].append(answers.evaluated[-1])
        from_speech_end, waited = hands_free.hands_free(listener, phase=i / repeats)
        times["from_speech_end"].append(from_speech_end)
        times["text_waited"].append(waited)
        evaluated["hands_free"].append(answers.evaluated[-1])
        begun_early += answers.begun_early[-1]
    after_silence = [t - end_of_speech_s for t in times["from_speech_end"]]
    return {
        "one_shot_s": times["one_shot"],
        "from_speech_end_s": times["from_speech_end"],
        "after_silence_s": after_silence,
        "text_waited_s": times["text_waited"],
        "evaluated_after_sent": evaluated,
        "begun_early": begun_early,  # hands-free answers begun before their question was sent
        "one_shot_median_s": statistics.median(times["one_shot"]),
        "after_silence_median_s": statistics.median(after_silence),
        "from_speech_end_median_s": statistics.median(times["from_speech_end"]),
        "text_waited_median_s": statistics.median(times["text_waited"]),
    }


def pcm_of(clip: Path) -> np.ndarray:
    """CLIP as the browser's microphone would send it: int16, mono, BROWSER_RATE."""
    import soundfile
    import soxr

    samples, rate = soundfile.read(clip, dtype="float32", always_2d=True)
    mono = soxr.resample(samples.mean(axis=1), rate, BROWSER_RATE)
    return (np.clip(mono, -1, 1) * 32767).astype(np.int16)


def markdown(r: dict) -> str:
    others = f"{r['others']} others"
    silence = r["end_of_speech_s"]
    rows = []
    for window in WINDOWS:

        def row(label: str, key: str, window: str = window) -> str:
            alone, busy = r["alone"][window][key], r[others][window][key]
            return f"| {window} | {label} | {alone:.2f} | {busy:.2f} |"

        rows += [
            row("one-shot: Stop → first token", "one_shot_median_s"),
            row(
                f"hands-free: end of the {silence} s trailing silence → first token",
                "after_silence_median_s",
            ),
            row("hands-free: end of the speech → first token", "from_speech_end_median_s"),
            row("hands-free: its text ready after the trailing silence", "text_waited_median_s"),
        ]
    evaluated = {
        window: {
            path: statistics.median(n)
            for path, n in r["alone"][window]["evaluated_after_sent"].items()
        }
        for window in WINDOWS
    }
    return "\n".join(
        [
            f"Memory bandwidth in this run: {r['ceiling']['read_bandwidth_gb_s']:.1f} GB/s. "
            f"A spoken follow-up → its first answer token on the server (no browser), median "
            f"of {r['repeats']}; every transcription decodes {r['tokens_per_s']:.2f} tokens per "
            "second of its audio, as real Whisper (tiny.en) does on the shared clips:",
            "",
            f"| Whisper window | path | alone (s) | with {others} answering (s) |",
            "|---|---|---|---|",
            *rows,
            "",
            "Hands-free / one-shot, alone (goal ≤ 0.45×): "
            + ", ".join(f"{w} window **{r[f'{w}_streaming_vs_one_shot']:.2f}×**" for w in WINDOWS)
            + f"; hands-free with the fit window / today's one-shot (full): "
            f"**{r['fit_streaming_vs_full_one_shot']:.2f}×**. Hands-free with {others} / alone "
            "(goal ≤ 1.5×): "
            + ", ".join(f"{w} window **{r[f'{w}_streaming_busy_vs_alone']:.2f}×**" for w in WINDOWS)
            + ".",
            "",
            "Prompt tokens evaluated once the question was sent (median, alone; the prefill "
            "evaluates the rest while the student is silent, and an answer begun early, all of "
            "it): "
            + ", ".join(
                f"{w}: one-shot {evaluated[w]['one_shot']:.0f}, hands-free "
                f"{evaluated[w]['hands_free']:.0f}"
                for w in WINDOWS
            )
            + ". Hands-free answers begun before their question was sent (early answers), of "
            f"{r['repeats']}: "
            + ", ".join(
                f"{w} {r['alone'][w]['begun_early']} alone, {r[others][w]['begun_early']} with "
                f"{others}"
                for w in WINDOWS
            )
            + ".",
            "",
            "When each transcription waits for the answer step in progress instead of cutting "
            f"it short (fit window, `{WAITS}`), hands-free: "
            f"{r['alone'][WAITS]['after_silence_median_s']:.2f} s alone, "
            f"{r[others][WAITS]['after_silence_median_s']:.2f} s with {others} "
            f"(**{r[f'{WAITS}_streaming_busy_vs_alone']:.2f}×** alone), against the app's way "
            "above; with "
            f"{others}, waiting / cutting short: **{r['fit_busy_waits_vs_cuts_short']:.2f}×**. "
            f"The {others}' answers meanwhile (pieces of text a second, all paths of the "
            f"variant): fit {r[others]['fit']['others_pieces_per_s']:.1f}, {WAITS} "
            f"{r[others][WAITS]['others_pieces_per_s']:.1f} "
            f"(**{r['others_fit_vs_waits']:.2f}×**). "
            "Answer steps cut short for a transcription, both paths, fit: "
            f"{r['alone']['fit']['steps_cut_short']} alone, "
            f"{r[others]['fit']['steps_cut_short']} with {others} (of {2 * r['repeats']} "
            "follow-ups).",
            "",
            "Tokens of hands-free pieces decoded from a draft (fit, alone): "
            f"{r['alone']['fit']['draft_tokens']['right']} of "
            f"{r['alone']['fit']['draft_tokens']['written']} came from the draft (the synthetic "
            "Whisper's partials are right as far as they go).",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.voice_server", description=__doc__)
    voice.add_voice_arguments(parser, "runs/voice-server", 5)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args.repeats, args.others, args.threads, args.end_of_speech_s)
    (args.out / "voice-server.json").write_text(json.dumps(result, indent=1))
    (args.out / "voice-server.md").write_text(markdown(result) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
