"""Seeded openai-whisper checkpoints in whisper's own format (`{"dims", "model_state_dict"}`)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import whisper.tokenizer
from whisper.model import ModelDimensions, Whisper

from tutor.files import atomic_output

# A tiny English-only model: real audio front-end (80 mels, 30 s window) and real vocabulary.
TINY_EN = ModelDimensions(
    n_mels=80,
    n_audio_ctx=1500,
    n_audio_state=64,
    n_audio_head=2,
    n_audio_layer=2,
    n_vocab=51864,
    n_text_ctx=448,
    n_text_state=64,
    n_text_head=2,
    n_text_layer=2,
)
# The shape of Whisper `base` (multilingual), for speed and memory work.
BASE = ModelDimensions(
    n_mels=80,
    n_audio_ctx=1500,
    n_audio_state=512,
    n_audio_head=8,
    n_audio_layer=6,
    n_vocab=51865,
    n_text_ctx=448,
    n_text_state=512,
    n_text_head=8,
    n_text_layer=6,
)


FIRST_WORD_ID = 1000  # ordinary BPE tokens from here on make up the synthetic text


def _towards(model: Whisper, token: int) -> torch.Tensor:
    """A residual-stream vector large enough that the decoder's next token is TOKEN."""
    direction = model.decoder.ln.weight * model.decoder.token_embedding.weight[token]
    return 100 * direction / direction.norm()


def build_checkpoint(
    path: Path, dims: ModelDimensions = TINY_EN, seed: int = 0, end_after: int | None = None
) -> Path:
    """Write a seeded random Whisper checkpoint loadable by `whisper.load_model(path)`.

    END_AFTER makes transcripts END_AFTER distinct tokens long, as a real model's are for a
    short clip (random weights would otherwise run to the 224-token limit, repeating a few
    tokens, which Whisper's own check takes for a failed decoding: tutor.transcribe): at each of
    those positions, then from the next on, the decoder's positional embedding dominates the
    residual stream in a direction that the final layer norm's gains map onto one token's
    embedding: a different word's (FIRST_WORD_ID onwards), then the end of text.
    """
    torch.manual_seed(seed)
    model = Whisper(dims)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.05)
        if end_after is not None:
            eot = whisper.tokenizer.get_tokenizer(
                model.is_multilingual, num_languages=model.num_languages
            ).eot
            first = 4  # after <|startoftranscript|><|lang|><|task|><|notimestamps|>
            positions = model.decoder.positional_embedding
            for i in range(end_after):
                positions[first + i - 1] += _towards(model, FIRST_WORD_ID + i)
            positions[first + end_after - 1 :] += _towards(model, eot)
    with atomic_output(Path(path)) as tmp:
        torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, tmp)
    return Path(path)
