"""Hands-free transcripts (tutor.live: pieces cut at the VAD's pauses, transcribed one by one)
against the one-shot transcript of the same recording, by word error rate, on the shared clips.

    python -m bench.streaming_wer [--out runs/streaming-wer]

Recognizers trained on real speech, both from PyPI wheels (the Hub and Whisper's own download site
cannot be reached here): Whisper tiny.en through the app's own transcriber (tutor.transcribe,
int8), with each of its encoder windows (`full`, 30 s; `fit`, the audio's length), and CMU
PocketSphinx. A word cut in half, or a piece too short to recognise, is an error of the hands-free
transcript that the one-shot transcript of the same audio does not make; and the one-shot
transcripts of the two windows, each against the reference, say what the fitted window costs.
Words are compared after Whisper's English text normalizer (case, punctuation, spelling,
numbers), as Whisper's own evaluations do.

Questions: each clip alone (LEAD_S of silence before it, TRAIL_S after), and each two consecutive
clips joined by a BREATH_S pause (a question said in two breaths: the listener cuts it there).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np

from bench import speech
from tutor import audio
from tutor.audio import SAMPLE_RATE, AudioError
from tutor.live import END_OF_QUESTION_S, PIECE_LEAD_S, PIECE_TAIL_S, Listener

LEAD_S = 0.5  # silence before a question
TRAIL_S = END_OF_QUESTION_S + 0.7  # after it: enough for the trailing silence to end it
BREATH_S = 0.5  # the pause inside a two-breath question (shorter than the trailing silence)
# How pieces are cut: the app's margins around speech (tutor.live) against none.
MARGINS = {
    f"{PIECE_LEAD_S:.2f} s before, {PIECE_TAIL_S:.2f} s after (the app)": (
        PIECE_LEAD_S,
        PIECE_TAIL_S,
    ),
    "at Silero's bounds": (0.0, 0.0),
}
CHUNK_S = 0.25  # what the page streams at a time (tutor.page.LISTEN_CHUNK_S)
RECOGNIZERS = ("whisper tiny.en, full window", "whisper tiny.en, fit window", "pocketsphinx en-us")
# The app's listener with the fitted window: partials every second of speech, and each piece
# decoded from its latest partial's words (tutor.draft_decoding); with the app's margins only.
AS_THE_APP = "whisper tiny.en, fit window, partials and drafts (the app)"


def words(texts: list[str]) -> list[str]:
    """TEXTS as Whisper's evaluations compare them (its English normalizer)."""
    from whisper.normalizers import EnglishTextNormalizer

    normalize = EnglishTextNormalizer()
    # It drops words in parentheses, as hesitations; a reference's parentheses hold words read.
    return [normalize(t.replace("(", " ").replace(")", " ")) for t in texts]


class PocketSphinx:
    """Speech (float32 at 16 kHz) → lower-case words; one decoder, used by one thread at a time."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self.decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")

    def __call__(
        self,
        samples: np.ndarray,
        language: str | None = None,
        _tokens: int = 0,
        draft=None,
        urgent=True,
    ) -> str:
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hypothesis = self.decoder.hyp()
        return hypothesis.hypstr if hypothesis else ""


@dataclass(frozen=True)
class Question:
    name: str
    speech: list[np.ndarray]  # its breaths, at 16 kHz
    reference: str

    def recording(self) -> np.ndarray:
        """Silence, the breaths with BREATH_S between them, silence: what the microphone hears."""
        gap = np.zeros(int(BREATH_S * SAMPLE_RATE), np.float32)
        parts = [np.zeros(int(LEAD_S * SAMPLE_RATE), np.float32)]
        for i, breath in enumerate(self.speech):
            parts += [gap, breath] if i else [breath]
        parts.append(np.zeros(int(TRAIL_S * SAMPLE_RATE), np.float32))
        return np.concatenate(parts)


def questions() -> dict[str, list[Question]]:
    """The shared clips as one-breath questions, and consecutive pairs as two-breath ones."""
    clips = [(r["audio"].stem, audio.load(r["audio"]), r["text"]) for r in speech.clips()]
    single = [Question(name, [x], text) for name, x, text in clips]
    pairs = [
        Question(f"{a[0]}+{b[0]}", [a[1], b[1]], f"{a[2]} {b[2]}")
        for a, b in zip(clips[::2], clips[1::2])
    ]
    return {"one breath": single, "two breaths": pairs}


def hands_free(listener: Listener, recording: np.ndarray) -> tuple[str, int]:
    """(the text of the questions heard in RECORDING, their pieces), RECORDING fed to LISTENER
    as the page streams it, each chunk's transcriptions done before the next comes (a machine
    that keeps up: partials every second of speech). A pause longer than the trailing silence
    (JFK's) ends a question: the speech after it is the next one."""
    step = int(CHUNK_S * SAMPLE_RATE)
    listener.reset()
    texts, pieces = [], 0
    for begin in range(0, len(recording), step):
        try:
            text = listener.feed(SAMPLE_RATE, recording[begin : begin + step])
        except AudioError:  # a question with no words recognised
            text = ""
        listener.executor.submit(lambda: None).result()
        if text is not None:
            texts.append(text)
            pieces += listener.last_question.pieces
    if not texts:
        raise RuntimeError("the listener heard no question")
    return " ".join(texts), pieces


def wer(reference: list[str], hypothesis: list[str]) -> float:
    """Word error rate of HYPOTHESIS against REFERENCE, over all their sentences together."""
    return jiwer.wer(words(reference), words(hypothesis))


def recognizers() -> tuple[dict, dict]:
    """(each recognizer by name: one for the listener, one for the one-shot transcripts;
    Whisper's transcribers by recognizer name: they count their fallbacks)."""
    from bench.real_whisper import tiny_en
    from tutor.transcribe import Transcriber, load_whisper

    whisper = {
        name: Transcriber(load_whisper(str(tiny_en())), window=window)
        for name, window in zip(RECOGNIZERS, ("full", "fit"))
    }
    by_name = {name: (t.transcribe, t.transcribe) for name, t in whisper.items()}
    by_name[RECOGNIZERS[2]] = (PocketSphinx(), PocketSphinx())
    whisper[AS_THE_APP] = Transcriber(load_whisper(str(tiny_en())), window="fit")
    by_name[AS_THE_APP] = (whisper[AS_THE_APP].transcribe, whisper[AS_THE_APP].transcribe)
    return by_name, whisper


class Counted:
    """FN, counting its calls."""

    def __init__(self, fn) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def one_shot(recognise, recording: np.ndarray) -> str:
    try:
        return recognise(recording, "en")
    except AudioError:  # Whisper heard no speech
        return ""


def run() -> dict:
    """Both sets of questions, for each recognizer: cut with the app's margins and with none
    (Silero's own bounds), and whole."""
    result: dict = {"recognizers": {}}
    sets = questions()
    with ThreadPoolExecutor(1, thread_name_prefix="live") as executor:
        by_name, whisper = recognizers()
        for name, (recognise, whole) in by_name.items():
            recognise, whole = Counted(recognise), Counted(whole)
            shots = {
                kind: [one_shot(whole, q.recording()) for q in asked]
                for kind, asked in sets.items()
            }
            for margins, margins_s in MARGINS.items():
                app = name == AS_THE_APP
                if app and margins_s != (PIECE_LEAD_S, PIECE_TAIL_S):
                    continue
                partials = threading.Semaphore(1) if app else None
                listener = Listener(
                    recognise, executor, "en", margins_s=margins_s, partials=partials
                )
                listener.on_words = lambda words, outdated, complete: (
                    None
                )  # partials are made for it
                for kind, asked in sets.items():
                    print(f"{name}: {kind}, {margins} …", flush=True)
                    rows = []
                    for q, shot in zip(asked, shots[kind]):
                        streamed, pieces = hands_free(listener, q.recording())
                        rows.append(
                            {
                                "question": q.name,
                                "pieces": pieces,
                                "reference": q.reference,
                                "one_shot": shot,
                                "hands_free": streamed,
                            }
                        )
                    result["recognizers"].setdefault(name, {}).setdefault(margins, {})[kind] = (
                        _scores(asked, rows)
                    )
            if name in whisper:
                result.setdefault("transcriptions", {})[name] = {
                    "calls": recognise.calls + whole.calls,
                    "decoded_again_in_full": whisper[name].fallbacks,
                    "drafted_tokens": whisper[name].drafted_tokens,
                    "draft_right_tokens": whisper[name].draft_right_tokens,
                }
    return result


def _scores(asked: list[Question], rows: list[dict]) -> dict:
    refs, shots, frees = ([r[key] for r in rows] for key in ("reference", "one_shot", "hands_free"))
    return {
        "questions": len(rows),
        "speech_s": sum(sum(len(b) for b in q.speech) for q in asked) / SAMPLE_RATE,
        "pieces_mean": statistics.mean(r["pieces"] for r in rows),
        "wer_hands_free_vs_one_shot": wer(shots, frees),
        "wer_one_shot_vs_reference": wer(refs, shots),
        "wer_hands_free_vs_reference": wer(refs, frees),
        "rows": rows,
    }


def markdown(r: dict) -> str:
    rows = [
        f"| {name} | {margins} | {kind} | {s['questions']} | {s['speech_s']:.0f} "
        f"| {s['pieces_mean']:.2f} | **{s['wer_hands_free_vs_one_shot']:.1%}** "
        f"| {s['wer_one_shot_vs_reference']:.1%} | {s['wer_hands_free_vs_reference']:.1%} |"
        for name, by_margins in r["recognizers"].items()
        for margins, sets in by_margins.items()
        for kind, s in sets.items()
    ]
    return "\n".join(
        [
            "Hands-free transcripts (cut at pauses) vs one-shot ones of the same recordings, "
            "by word error rate (Whisper's English normalizer):",
            "",
            "| recognizer | pieces cut | questions | n | speech (s) | pieces per question "
            "| WER hands-free vs one-shot | WER one-shot vs reference "
            "| WER hands-free vs reference |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Whisper's fitted windows whose text looped and were decoded again in the 30 s window: "
            + ", ".join(
                f"{name}: {n['decoded_again_in_full']} of {n['calls']} transcriptions"
                for name, n in r.get("transcriptions", {}).items()
            )
            + ". Pieces decoded from a draft (their latest partial's words): "
            + ", ".join(
                f"{name}: {n['draft_right_tokens']} of {n['drafted_tokens']} tokens from the draft"
                for name, n in r.get("transcriptions", {}).items()
                if n.get("drafted_tokens")
            )
            + ".",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.streaming_wer", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/streaming-wer"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result = run()
    (args.out / "streaming-wer.json").write_text(json.dumps(result, indent=1))
    (args.out / "streaming-wer.md").write_text(markdown(result) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
