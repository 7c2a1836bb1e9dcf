"""The Whisper transcriber: int8 weights everywhere (vocabulary projection included), same
decoding; the fitted window (the encoder's cost follows the audio's length)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import whisper
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

from tutor.transcribe import (
    TRANSCRIBE_OPTIONS,
    FittedWhisper,
    Transcriber,
    TranscriberLoadError,
    load_whisper,
    quantize_int8,
    transcribe_window,
)


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


# Transcriber's own options for whisper's transcribe().
OPTIONS = {"language": "en", **TRANSCRIBE_OPTIONS, "sample_len": 8}


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (np.sin(t * 2 * np.pi * 220) * 0.3).astype(np.float32)


def test_one_window_decodes_as_whisper_transcribe_does(tiny_whisper_path):
    """On Whisper's own 30 s window, one window's text is transcribe()'s, silence rule included:
    the fitted window changes the window's length and nothing else."""
    model = whisper.load_model(str(tiny_whisper_path), device="cpu")
    audio = _tone(3.0)
    # As configured; then with every window judged silence (transcribe() drops its text).
    for extra in ({}, {"no_speech_threshold": 0.0, "logprob_threshold": None}):
        options = OPTIONS | extra
        with torch.inference_mode():
            expected = model.transcribe(audio, **options)["text"].strip()
            got = transcribe_window(model, audio, options).text.strip()
        assert got == expected
        assert bool(expected) == (extra == {})


def test_fitted_window_encodes_only_the_audio_and_its_margin(tiny_whisper_path):
    transcriber = Transcriber(load_whisper(str(tiny_whisper_path)), threads=1, window="fit")
    positions = []
    transcriber.model.encoder.blocks[0].register_forward_hook(
        lambda module, args, out: positions.append(out.shape[1])
    )
    for seconds in (1.0, 4.0, 12.0, 29.0):
        transcriber.transcribe(_tone(seconds), "en", sample_len=4, no_speech_threshold=None)
    # 50 positions a second; the audio and 2.56 s of silence, rounded up to 5 s; 30 s at most.
    assert positions == [250, 500, 750, 1500]


def test_fitted_window_shares_the_models_weights(tiny_whisper_path):
    model = load_whisper(str(tiny_whisper_path))
    fitted = FittedWhisper(model, 250)
    assert fitted.dims.n_audio_ctx == 250 and model.dims.n_audio_ctx == 1500
    assert fitted.decoder is model.decoder and fitted.encoder.blocks is model.encoder.blocks
    assert fitted.encoder.positional_embedding.data_ptr() == (
        model.encoder.positional_embedding.data_ptr()
    )
    assert sum(p.numel() for p in fitted.parameters()) == sum(p.numel() for p in model.parameters())


def test_an_unknown_window_is_refused_by_name(tiny_whisper_path):
    with pytest.raises(TranscriberLoadError, match="full or fit"):
        Transcriber(load_whisper(str(tiny_whisper_path)), window="half")


def test_a_fitted_window_whose_text_repeats_is_decoded_again_in_the_full_window(
    tiny_whisper_path,
):
    # Every text fails a compression-ratio threshold of 0, as a looping window's fails 2.4.
    transcriber = Transcriber(load_whisper(str(tiny_whisper_path)), threads=1, window="fit")
    positions = []
    transcriber.model.encoder.blocks[0].register_forward_hook(
        lambda module, args, out: positions.append(out.shape[1])
    )
    options = {"sample_len": 40, "no_speech_threshold": None}
    transcriber.transcribe(_tone(3.0), "en", compression_ratio_threshold=0.0, **options)
    assert positions == [500, 1500] and transcriber.fallbacks == 1
    transcriber.transcribe(_tone(3.0), "en", compression_ratio_threshold=None, **options)
    assert positions == [500, 1500, 500] and transcriber.fallbacks == 1  # the check is off
