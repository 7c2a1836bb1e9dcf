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


def build_checkpoint(
    path: Path, dims: ModelDimensions = TINY_EN, seed: int = 0, end_after: int | None = None
) -> Path:
    """Write a seeded random Whisper checkpoint loadable by `whisper.load_model(path)`.

    END_AFTER makes transcripts end after that many tokens, as a real model's do for a short
    clip (random weights would otherwise run to the 224-token limit): from that position on, the
    decoder's positional embedding dominates the residual stream in a direction that the final
    layer norm's gains map onto the end-of-text token's embedding.
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
            start = 4 + end_after  # after <|startoftranscript|><|lang|><|task|><|notimestamps|>
            direction = model.decoder.ln.weight * model.decoder.token_embedding.weight[eot]
            model.decoder.positional_embedding[start:] += 100 * direction / direction.norm()
    with atomic_output(Path(path)) as tmp:
        torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, tmp)
    return Path(path)
