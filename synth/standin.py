"""Small stand-in models for running the app offline (answers are not meaningful).

When the real models are neither cached nor downloadable, the app still starts on these: a tiny
Llama (fitted for a few seconds to English text, exported to GGUF through the project's own
exporter) and a tiny random Whisper. They are built once into a cache folder.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tutor.defaults import CACHE_DIR


def standin_llm(cache_dir: Path = CACHE_DIR) -> Path:
    """Path of the stand-in GGUF, built on first use."""
    from export.to_gguf import export
    from synth import llama as synth_llama  # torch and transformers: only to build it

    path = cache_dir / "standin-llama-q8_0.gguf"
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            checkpoint = synth_llama.build_checkpoint(
                Path(tmp), synth_llama.train_tokenizer(), fit_steps=60
            )
            export(checkpoint, path, "Q8_0", name="stand-in (not a real model)")
    return path


STANDIN_TOKENS = 12  # what the stand-in Whisper writes for any recording


def standin_whisper(cache_dir: Path = CACHE_DIR) -> Path:
    """Path of the stand-in Whisper checkpoint, built on first use: its text is STANDIN_TOKENS
    distinct tokens (a random model's repeats a few to the 224-token limit, which the
    transcriber takes for a looping window and decodes twice)."""
    from synth import whisper as synth_whisper

    path = cache_dir / f"standin-whisper-tiny-en-{STANDIN_TOKENS}-tokens.pt"
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        synth_whisper.build_checkpoint(path, end_after=STANDIN_TOKENS)
    return path
