"""The Whisper transcriber: int8 weights everywhere (vocabulary projection included), same
decoding."""

from __future__ import annotations

import numpy as np
import torch
import whisper
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

from tutor.transcribe import Transcriber, load_whisper, quantize_int8


def test_every_linear_layer_and_the_vocabulary_projection_are_int8(tiny_whisper_path):
    fp32 = whisper.load_model(str(tiny_whisper_path), device="cpu")
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in fp32.modules())
    int8 = quantize_int8(whisper.load_model(str(tiny_whisper_path), device="cpu"))
    assert not any(isinstance(m, whisper.model.Linear) for m in int8.modules())
    assert sum(isinstance(m, DynamicInt8Linear) for m in int8.modules()) == n_linear + 1
    assert isinstance(int8.decoder.vocab_proj, DynamicInt8Linear)

    # Same computation up to quantization error.
    mel = whisper.log_mel_spectrogram(
        torch.from_numpy(
            np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32) * 0.1
        ),
        fp32.dims.n_mels,
    )
    mel = whisper.pad_or_trim(mel, 3000)[None]
    tokens = torch.tensor([[50257, 50362, 440, 2068]])
    with torch.no_grad():
        expected = fp32.decoder(tokens, fp32.encoder(mel))
        got = int8.decoder(tokens, int8.encoder(mel))
    assert got.shape == expected.shape
    assert torch.corrcoef(torch.stack([got.flatten(), expected.flatten()]))[0, 1] > 0.99


def test_transcriber_precisions(tiny_whisper_path):
    samples = (np.sin(np.arange(16000 * 2) / 16000 * 2 * np.pi * 220) * 0.3).astype(np.float32)
    for precision in ("int8", "fp32"):
        text = Transcriber(load_whisper(str(tiny_whisper_path)), precision=precision).transcribe(
            samples, "en", sample_len=8
        )
        assert isinstance(text, str) and text
