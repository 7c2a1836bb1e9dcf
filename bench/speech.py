"""Speech: openai-whisper as shipped vs the tutor's transcriber, on real clips."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

from train.assets import assets_dir
from tutor import audio

if TYPE_CHECKING:  # whisper (and torch) are imported where used: `--help` need not wait
    import whisper

DECODED_TOKENS = 30


def clips() -> list[dict]:
    """The shared speech clips, one row each (transcripts.jsonl): `audio` (its path), the
    reference `text`, `duration_s`."""
    speech = assets_dir() / "speech"
    rows = [json.loads(line) for line in (speech / "transcripts.jsonl").open()]
    return [row | {"audio": speech / row["audio"]} for row in rows]


def reference(name: str) -> str:
    """The reference transcript of the shared clip NAME (its file name without suffix)."""
    return next(row["text"] for row in clips() if row["audio"].stem == name)


def clip_near(seconds: float) -> tuple[Path, float]:
    """The shared speech clip whose duration is closest to SECONDS."""
    row = min(clips(), key=lambda r: abs(r["duration_s"] - seconds))
    return row["audio"], row["duration_s"]


def fixed_length_options(model: whisper.Whisper) -> dict:
    """Decode exactly DECODED_TOKENS tokens (end-of-text suppressed), one pass, full 30 s window."""
    import whisper

    tokenizer = whisper.tokenizer.get_tokenizer(
        model.is_multilingual, num_languages=model.num_languages
    )
    return {
        "sample_len": DECODED_TOKENS,
        "without_timestamps": True,
        "suppress_tokens": [-1, tokenizer.eot],
        "compression_ratio_threshold": None,
        "logprob_threshold": None,
        "no_speech_threshold": None,
    }


def transcription(checkpoint: Path, repeats: int, threads: int) -> dict:
    """Median seconds to transcribe a ~5 s clip: shipped fp32 vs the tutor's int8, alternating."""
    import whisper

    from tutor.transcribe import Transcriber, load_whisper

    clip, duration = clip_near(5.0)
    samples = audio.load(clip)
    tutor = Transcriber(load_whisper(str(checkpoint)), threads=threads)
    shipped = whisper.load_model(str(checkpoint), device="cpu")

    def run_shipped() -> None:  # on the transcriber's thread: one OpenMP team (tutor.threads)
        shipped.transcribe(
            samples,
            language="en",
            fp16=False,
            temperature=0.0,
            condition_on_previous_text=False,
            **options,
        )

    options = fixed_length_options(shipped)
    runs: dict[str, list[float]] = {"openai-whisper fp32": [], "tutor int8": []}
    for i in range(repeats + 1):  # first round: warm-up
        start = time.perf_counter()
        tutor.thread.run(run_shipped)
        middle = time.perf_counter()
        tutor.transcribe(samples, "en", **options)
        end = time.perf_counter()
        if i:
            runs["openai-whisper fp32"].append(middle - start)
            runs["tutor int8"].append(end - middle)
    out = {
        "clip": clip.name,
        "clip_seconds": duration,
        "decoded_tokens": DECODED_TOKENS,
        **{name: statistics.median(values) for name, values in runs.items()},
    }
    out["tutor_vs_shipped"] = out["tutor int8"] / out["openai-whisper fp32"]
    return out
