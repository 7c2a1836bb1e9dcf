"""Speech → text with openai-whisper, on CPU, from a float32 16 kHz mono array (no ffmpeg).

On CPU, Whisper's time goes into matrix products with fp32 weights, and per decoded token mostly
into the vocabulary projection (a product with the token embedding, not a Linear layer). `int8`
precision (the default) stores every linear layer's weights, that projection included, as int8
and quantizes activations on the fly (PyTorch dynamic quantization), which keeps openai-whisper's
decoding exactly as it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import whisper
from torch import Tensor, nn
from whisper.model import TextDecoder

from tutor.audio import SAMPLE_RATE, AudioError
from tutor.errors import TranscriberLoadError, first_line
from tutor.threads import DedicatedThread
from tutor.vad import SpeechDetector

__all__ = [
    "Int8VocabDecoder",
    "Transcriber",
    "TranscriberLoadError",
    "load_whisper",
    "quantize_int8",
]


def load_whisper(spec: str, download_root: str | None = None) -> whisper.Whisper:
    """A Whisper model by name (`base.en`, downloaded to whisper's cache) or checkpoint path."""
    path = Path(spec).expanduser()
    if path.is_file():
        target = str(path)
    elif spec in whisper.available_models():
        target = spec
    else:
        raise TranscriberLoadError(
            f"Whisper model {spec!r} not found: give a checkpoint path or "
            f"one of {', '.join(whisper.available_models())}"
        )
    try:
        return whisper.load_model(target, device="cpu", download_root=download_root)
    except Exception as e:  # offline download, corrupt checkpoint: both mean "not available"
        raise TranscriberLoadError(f"cannot load Whisper model {spec!r}: {first_line(e)}") from None


class Int8VocabDecoder(TextDecoder):
    """Whisper's text decoder with the vocabulary projection as a (quantizable) Linear layer."""

    vocab_proj: nn.Module

    def forward(self, x: Tensor, xa: Tensor, kv_cache: dict | None = None) -> Tensor:
        # whisper.model.TextDecoder.forward, but for the last product.
        offset = next(iter(kv_cache.values())).shape[1] if kv_cache else 0
        x = self.token_embedding(x) + self.positional_embedding[offset : offset + x.shape[-1]]
        x = x.to(xa.dtype)
        for block in self.blocks:
            x = block(x, xa, mask=self.mask, kv_cache=kv_cache)
        return self.vocab_proj(self.ln(x)).float()


def quantize_int8(model: whisper.Whisper) -> whisper.Whisper:
    """Int8 weights for every linear layer and the vocabulary projection (in place)."""
    # whisper's Linear subclasses nn.Linear; the quantizer matches exact types, so swap them.
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is whisper.model.Linear:
                plain = nn.Linear(
                    child.in_features, child.out_features, bias=child.bias is not None
                )
                plain.load_state_dict(child.state_dict())
                setattr(parent, name, plain)
    decoder = model.decoder
    decoder.__class__ = Int8VocabDecoder
    n_vocab, n_state = decoder.token_embedding.weight.shape
    decoder.vocab_proj = nn.Linear(n_state, n_vocab, bias=False)
    decoder.vocab_proj.weight = decoder.token_embedding.weight
    return torch.ao.quantization.quantize_dynamic(
        model, {nn.Linear}, dtype=torch.qint8, inplace=True
    )


class Transcriber:
    """Whisper on CPU; `language` is a code such as "en", or "auto" to detect it."""

    def __init__(
        self,
        model: whisper.Whisper,
        language: str = "en",
        threads: int | None = None,
        precision: str = "int8",
        thread: DedicatedThread | None = None,
        detect_speech: bool = False,
    ) -> None:
        """THREAD runs every torch call (the app shares it with llama.cpp; see tutor.threads).
        DETECT_SPEECH: refuse recordings without speech (tutor.vad) before Whisper runs."""
        if precision not in ("int8", "fp32"):
            raise TranscriberLoadError(f"unknown Whisper precision {precision!r} (int8 or fp32)")
        # One transcription at a time, always on the same thread (see tutor.threads).
        self.thread = thread or DedicatedThread("whisper")
        if threads:
            self.thread.run(torch.set_num_threads, threads)
        self.model = (
            self.thread.run(quantize_int8, model.eval()) if precision == "int8" else model.eval()
        )
        self.language = language
        self.detector = SpeechDetector() if detect_speech else None

    def transcribe(
        self,
        audio: np.ndarray,
        language: str | None = None,
        max_tokens: int | None = None,
        **decode_options,
    ) -> str:
        """Text of AUDIO (float32, 16 kHz, mono), or AudioError if Whisper heard no speech.

        MAX_TOKENS caps the text decoded (a short piece of speech has few words); DECODE_OPTIONS
        go to whisper's transcribe (benchmarks fix the decoded length with them).
        """
        if max_tokens is not None:
            decode_options.setdefault("sample_len", max_tokens)
        language = language or self.language
        if not self.model.is_multilingual:
            language = "en"
        if self.detector is not None:
            self.detector.require_speech(audio)
        result = self.thread.run(self._transcribe, audio, language, decode_options)
        text = result["text"].strip()
        if not text:
            raise AudioError(
                f"No speech was recognised in the {len(audio) / SAMPLE_RATE:.1f} s "
                "recording. Please try again."
            )
        return text

    def _transcribe(self, audio: np.ndarray, language: str, decode_options: dict) -> dict:
        with torch.inference_mode():
            return self.model.transcribe(
                audio.astype(np.float32, copy=False),
                language=None if language == "auto" else language,
                **{
                    "fp16": False,
                    "temperature": 0.0,
                    "condition_on_previous_text": False,
                    "without_timestamps": True,
                    "verbose": None,
                    **decode_options,
                },
            )
