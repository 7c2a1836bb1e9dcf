"""The held-out conversations of a training config and how a model scores on them: one home for
the validation split and the loss and ROUGE loops that evaluation and experiments share."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable

from train.config import RunConfig
from train.data import clean, mix, split

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def heldout_conversations(
    cfg: RunConfig, count_tokens: Callable[[list[dict]], int], limit: int
) -> list[list[dict]]:
    """CFG's validation split, as training cuts it (at most LIMIT conversations)."""
    kept, _ = clean(cfg.data, count_tokens, cfg.train.seq_len)
    _, val = split(mix(cfg.data, kept), cfg.data.val_fraction)
    return [example.messages for example in val[:limit]]


def assistant_loss(model, conversations: Iterable[list[dict]]) -> tuple[float, int]:
    """(summed negative log-likelihood, tokens) of MODEL on the assistant turns."""
    nll, tokens = 0.0, 0
    for messages in conversations:
        total, count = model.assistant_nll(messages)
        nll, tokens = nll + total, tokens + count
    return nll, tokens


def rouge_scorer():
    from rouge_score import rouge_scorer as scorers

    return scorers.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)


def rouge_of(scorer, reference: str, reply: str) -> dict[str, float]:
    """F-measure per ROUGE key of REPLY against REFERENCE."""
    result = scorer.score(reference, reply)
    return {key: result[key].fmeasure for key in ROUGE_KEYS}


def mean_per_key(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.fmean(row[key] for row in rows) for key in ROUGE_KEYS}
