"""Decoding from a draft (tutor.draft_decoding): greedy decoding's text, with the tokens the
draft has right checked in a decoder pass instead of written a step each."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tutor.draft_decoding import decode_with_draft
from tutor.transcribe import (
    TRANSCRIBE_OPTIONS,
    FittedWhisper,
    Transcriber,
    load_whisper,
    transcribe_window,
)

OPTIONS = {"language": "en", **TRANSCRIBE_OPTIONS}  # the Transcriber's own
N_CTX = 250  # a 5 s window


@pytest.fixture(scope="module")
def model(tiny_whisper_path) -> FittedWhisper:
    return FittedWhisper(Transcriber(load_whisper(str(tiny_whisper_path))).model, N_CTX)


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    t = np.arange(16000 * 2) / 16000
    return (np.sin(t * 2 * np.pi * 220) * 0.3).astype(np.float32)


def _decode(model, audio, draft=None, **options):
    """(the window's text, its tokens, how many the draft had right, decoder forward calls)."""
    calls = []
    hook = model.decoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.inference_mode():
            window = transcribe_window(model, audio, OPTIONS | options, draft)
    finally:
        hook.remove()
    return window.text, window.tokens, window.from_draft, len(calls)


@pytest.mark.parametrize(
    "kind",
    ["beginning", "whole", "too long", "first token misheard", "last token misheard", "unrelated"],
)
def test_any_draft_gives_greedy_decodings_text(model, audio, kind):
    text, written, _, steps = _decode(model, audio)
    assert len(written) >= 8 and steps == len(written) + 1  # a step a token, and the end's
    other = [t + 1 for t in written]  # none of the tokens written
    draft, right = {
        "beginning": (written[:5], 5),
        "whole": (written, len(written)),
        "too long": (written + other[:3], len(written)),
        "first token misheard": (other[:1] + written[1:], len(written) - 1),
        # Then nothing of the draft is left to check, and the text ends after greedy's pick.
        "last token misheard": (written[:-1] + other[-1:], len(written) - 1),
        "unrelated": (other, 0),
    }[kind]
    got, tokens, from_draft, calls = _decode(model, audio, draft)
    assert (got, tokens, from_draft) == (text, written, right)
    if kind in ("whole", "too long"):
        assert calls == 1  # every token checked in one pass, the end of text included
    if right >= 5:
        assert calls < steps


def test_the_length_cap_holds_with_a_draft(model, audio):
    _, written, _, _ = _decode(model, audio)
    _, capped, _, _ = _decode(model, audio, sample_len=4)
    assert capped == written[:4]
    for draft in (written, written[:2]):
        assert _decode(model, audio, draft, sample_len=4)[1] == capped


def test_a_window_that_may_be_silence_is_decoded_without_the_draft(model, audio):
    """transcribe()'s silence rule reads the whole text's log-probability: such a window (here
    every window: a no-speech threshold of 0) is decoded from scratch, and dropped as silence."""
    silence = {"no_speech_threshold": 0.0, "logprob_threshold": None}
    _, written, _, _ = _decode(model, audio)
    assert _decode(model, audio, written, **silence)[:3] == _decode(model, audio, **silence)[:3]
    assert _decode(model, audio, written, **silence)[0] == ""


def test_with_the_silence_rule_off_a_draft_is_used(model, audio, caplog):
    _, written, _, _ = _decode(model, audio)
    got = _decode(model, audio, written, no_speech_threshold=None)
    assert got[1:3] == (written, len(written))
    assert "decoding from a draft failed" not in caplog.text


@pytest.mark.parametrize(
    "options",
    [{"temperature": 0.4}, {"beam_size": 2}, {"language": None}, {"suppress_tokens": ""}],
    ids=["sampling", "beam search", "language detection", "other filters"],
)
def test_decoding_other_than_greedy_text_does_not_use_the_draft(model, audio, options):
    with torch.inference_mode():
        features = model.embed_audio(torch.zeros(1, model.dims.n_mels, 2 * N_CTX))
        assert decode_with_draft(model, features, OPTIONS | options, [1000, 1001], 0.6) is None


def test_a_draft_is_read_as_the_transcriber_wrote_it(tiny_whisper_path, audio):
    """A partial transcript's text is turned back into the tokens written (re-encoding the
    text may split it otherwise): all of them are right."""
    transcriber = Transcriber(load_whisper(str(tiny_whisper_path)), window="fit")
    whole = transcriber.transcribe(audio, "en")
    partial = transcriber.transcribe(audio, "en", max_tokens=5)
    assert transcriber.transcribe(audio, "en", draft=partial) == whole
    assert transcriber.draft_right_tokens == 5 and transcriber.drafted_tokens > 5


def test_a_draft_that_fails_to_decode_costs_no_words(model, audio, monkeypatch, caplog):
    import tutor.transcribe

    text, written, _, _ = _decode(model, audio)

    def broken(*_):
        raise RuntimeError("a bug in the shortcut")

    monkeypatch.setattr(tutor.transcribe, "decode_with_draft", broken)
    assert _decode(model, audio, written)[:3] == (text, written, 0)
    assert "decoding from a draft failed" in caplog.text
