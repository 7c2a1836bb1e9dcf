"""Speech → text with openai-whisper, on CPU, from a float32 16 kHz mono array (no ffmpeg)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
import whisper

from tutor.audio import SAMPLE_RATE, AudioError


class TranscriberLoadError(RuntimeError):
    """The Whisper model could not be found, downloaded or loaded."""


def load_whisper(spec: str, download_root: str | None = None) -> whisper.Whisper:
    """A Whisper model by name (`base.en`, downloaded to whisper's cache) or checkpoint path."""
    path = Path(spec).expanduser()
    if path.is_file():
        target = str(path)
    elif spec in whisper.available_models():
        target = spec
    else:
        raise TranscriberLoadError(f"Whisper model {spec!r} not found: give a checkpoint path or "
                                   f"one of {', '.join(whisper.available_models())}")
    try:
        return whisper.load_model(target, device="cpu", download_root=download_root)
    except Exception as e:  # offline download, corrupt checkpoint: both mean "not available"
        raise TranscriberLoadError(f"cannot load Whisper model {spec!r}: "
                                   f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


class Transcriber:
    """Whisper on CPU; `language` is a code such as "en", or "auto" to detect it."""

    def __init__(self, model: whisper.Whisper, language: str = "en", threads: int | None = None) -> None:
        self.model = model.eval()
        self.language = language
        self.threads = threads
        self._lock = threading.Lock()  # one transcription at a time keeps latency predictable

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> str:
        """Text of AUDIO (float32, 16 kHz, mono), or AudioError if Whisper heard no speech."""
        language = language or self.language
        if not self.model.is_multilingual:
            language = "en"
        with self._lock, torch.inference_mode():
            if self.threads:
                torch.set_num_threads(self.threads)
            result = self.model.transcribe(
                audio.astype(np.float32, copy=False), language=None if language == "auto" else language,
                fp16=False, temperature=0.0, condition_on_previous_text=False, verbose=None)
        text = result["text"].strip()
        if not text:
            raise AudioError(f"No speech was recognised in the {len(audio) / SAMPLE_RATE:.1f} s "
                             "recording. Please try again.")
        return text
