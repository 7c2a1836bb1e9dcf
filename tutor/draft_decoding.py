"""Greedy Whisper decoding that starts from a draft: tokens the draft guessed right cost one
decoder pass between them instead of a step each.

A hands-free question's last piece is transcribed after the student stops speaking, and most of
its words were already transcribed while they spoke: a partial transcript of the same piece, a
second shorter (tutor.live). On CPU a decoding step costs about a third of a decoder pass over
30 tokens (Whisper base: ~18 ms against ~50 ms; per-step overhead, not arithmetic, dominates),
so the words the partial got right are checked in one pass, as speculative decoding checks a
draft model's tokens: greedy decoding picks the highest logit at each position, and where the
draft's token is that pick, greedy decoding would have written it. At the first position where
it is not, greedy's own pick is taken and the rest of the draft is checked again, as if that one
token had been misheard ("printing" for "Printing"), for at most MAX_PASSES passes; then
`whisper.decode` goes on from the checked tokens (its `prefix`) as it would have from scratch.

What is the same as `whisper.decode` without a draft: the logit filters (non-speech tokens and
special tokens suppressed everywhere; blank and end of text at the first position, which lies
inside the checked tokens), the length cap, the no-speech probability (read at the start of
text in the first pass; a window that may be silence is decoded without the draft, for
transcribe()'s rule). What may differ: int8 activations are quantized per pass (tutor.transcribe),
so a pass over many tokens rounds them differently from steps of one, and a near-tie between two
tokens (a comma or none, a capital or not) can go the other way; bench.streaming_wer measures it
on real Whisper.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import whisper
from whisper.model import Whisper
from whisper.tokenizer import Tokenizer
from whisper.utils import compression_ratio

MAX_PASSES = 2  # decoder passes over a draft: a pass pays for itself from ~3 right tokens
MIN_DRAFT_TOKENS = 3  # a draft's rest shorter than this is not worth another pass
# DecodingOptions' fields: whisper.decode takes only these.
DECODING_FIELDS = {f.name for f in dataclasses.fields(whisper.DecodingOptions)}


@dataclass(frozen=True)
class Checked:
    """What greedy decoding writes first, as checked against a draft."""

    tokens: list[int]  # greedy decoding's first tokens (text tokens only)
    ended: bool  # the next one is the end of text
    no_speech_prob: float  # P(<|nospeech|>) at the start of text, as whisper.decode reads it
    from_draft: int  # how many of TOKENS the draft had right


def suppressed_tokens(tokenizer: Tokenizer) -> list[int]:
    """The tokens whisper.decode never writes with its default `suppress_tokens="-1"`."""
    special = [tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev]
    special += [tokenizer.sot_lm] + ([tokenizer.no_speech] if tokenizer.no_speech else [])
    return sorted(set(tokenizer.non_speech_tokens) | set(special))


def check_draft(
    model: Whisper, features: torch.Tensor, tokenizer: Tokenizer, draft: list[int], max_tokens: int
) -> Checked:
    """Greedy decoding's first tokens for audio FEATURES (1, n_audio_ctx, n_audio_state), at most
    MAX_TOKENS, found by checking DRAFT (text tokens) in at most MAX_PASSES decoder passes."""
    sot = list(tokenizer.sot_sequence_including_notimestamps)
    never = suppressed_tokens(tokenizer)
    blank = tokenizer.encode(" ") + [tokenizer.eot]
    tokens: list[int] = []
    rest = draft[:max_tokens]
    no_speech_prob = float("nan")
    from_draft = 0
    for _ in range(MAX_PASSES):
        logits = model.logits(torch.tensor([sot + tokens + rest]), features)[0]
        if not tokens and tokenizer.no_speech is not None:
            no_speech_prob = logits[0].float().softmax(-1)[tokenizer.no_speech].item()
        # Row i predicts the token after sot + tokens + rest[:i].
        rows = logits[len(sot) + len(tokens) - 1 :]
        rows[:, never] = -np.inf
        if not tokens:
            rows[0, blank] = -np.inf  # whisper.decode's SuppressBlank, at its first sample
        picks = rows.argmax(-1).tolist()
        right = 0
        while right < len(rest) and picks[right] == rest[right]:
            right += 1
        tokens += rest[:right]
        from_draft += right
        if picks[right] == tokenizer.eot:
            return Checked(tokens[:max_tokens], True, no_speech_prob, from_draft)
        tokens.append(picks[right])
        # The rest of the draft, as if the one token taken instead had been misheard.
        rest = rest[right + 1 :][: max_tokens - len(tokens)]
        if len(tokens) >= max_tokens:
            return Checked(tokens[:max_tokens], False, no_speech_prob, from_draft)
        if len(rest) < MIN_DRAFT_TOKENS:
            break
    # What follows the last pick is not known: whisper.decode writes that pick again, so that
    # its first sample is not the end of text (an empty continuation, which it cannot rank).
    return Checked(tokens[:-1], False, no_speech_prob, from_draft)


def decode_with_draft(
    model: Whisper,
    features: torch.Tensor,
    options: dict,
    draft: list[int],
    no_speech_threshold: float | None,
) -> tuple[whisper.DecodingResult, int] | None:
    """(whisper.decode's result for audio FEATURES (1, n_audio_ctx, n_audio_state) with OPTIONS,
    found from DRAFT's tokens, how many of its tokens the draft had right), or None where the
    draft cannot be used: options other than greedy text with the default filters, language
    detection, or a window that may be silence (its <|nospeech|> above NO_SPEECH_THRESHOLD)."""
    if (
        options.get("language") is None
        or options.get("temperature", 0.0) != 0.0
        or options.get("beam_size") is not None
        or options.get("suppress_tokens", "-1") != "-1"
        or options.get("suppress_blank", True) is not True
        or options.get("without_timestamps") is not True
        or options.get("prompt")
        or options.get("prefix")
    ):
        return None
    tokenizer = whisper.tokenizer.get_tokenizer(
        model.is_multilingual,
        num_languages=model.num_languages,
        language=options["language"],
        task=options.get("task", "transcribe"),
    )
    max_tokens = options.get("sample_len") or model.dims.n_text_ctx // 2
    checked = check_draft(model, features, tokenizer, draft, max_tokens)
    if no_speech_threshold is not None and checked.no_speech_prob > no_speech_threshold:
        return None  # transcribe()'s silence rule reads the text's log-probability: decode it all
    tokens = checked.tokens
    if not checked.ended and len(tokens) < max_tokens:
        kept = DECODING_FIELDS - {"prefix", "suppress_blank", "sample_len"}
        result = whisper.decode(
            model,
            features[0],
            whisper.DecodingOptions(
                **{k: v for k, v in options.items() if k in kept},
                prefix=tokens,
                suppress_blank=not tokens,  # with tokens, the first position was checked
                sample_len=max_tokens - len(tokens),
            ),
        )
        tokens = tokens + result.tokens
    text = tokenizer.decode(tokens).strip()
    result = whisper.DecodingResult(
        audio_features=features[0],
        language=options["language"],
        tokens=tokens,
        text=text,
        no_speech_prob=checked.no_speech_prob,
        temperature=0.0,
        compression_ratio=compression_ratio(text),
    )
    return result, checked.from_draft
