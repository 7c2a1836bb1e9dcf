"""Training and serving tokenize alike: SmolLM2's GGUF read by transformers (as the training
recipe reads a GGUF base) gives llama.cpp's token ids, id for id, on 200 real texts; and the
exporter writes the pre-tokenizer name llama.cpp needs for that split."""

from __future__ import annotations

import json
import random
from pathlib import Path

import llama_cpp
import pytest

from export.vocab import pre_tokenizer_name
from train.gguf_base import load_tokenizer

TEXTS_PER_SOURCE = {"finetome": 60, "gsm8k": 80, "mathdial": 60}


def real_texts(assets: Path, seed: int = 0) -> list[str]:
    """200 texts: FineTome turns, GSM8K questions with their worked solutions, MathDial
    dialogues (numbered steps, digits after newlines, money, fractions)."""
    rng = random.Random(seed)

    def rows(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]

    finetome = [
        turn["value"]
        for row in rows(assets / "finetome" / "finetome50.jsonl")
        for turn in row["conversations"]
    ]
    gsm8k = [f"{r['question']}\n\n{r['answer']}" for r in rows(assets / "gsm8k" / "train.jsonl")]
    mathdial = [
        r["conversation"].replace("|EOM|", "\n")
        for r in rows(assets / "mathdial" / "mathdial_test_part.jsonl")
    ]
    chosen = []
    for name, texts in (("finetome", finetome), ("gsm8k", gsm8k), ("mathdial", mathdial)):
        chosen += rng.sample(texts, TEXTS_PER_SOURCE[name])
    return chosen


@pytest.fixture(scope="module")
def texts(assets) -> list[str]:
    return real_texts(assets)


@pytest.fixture(scope="module")
def served(smollm2_gguf):
    """llama.cpp's tokenizer of the GGUF (the vocabulary only)."""
    vocab = llama_cpp.Llama(str(smollm2_gguf), vocab_only=True, verbose=False)
    return lambda text: vocab.tokenize(text.encode(), add_bos=False, special=False)


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf):
    """The GGUF's tokenizer as the training recipe reads it."""
    return load_tokenizer(smollm2_gguf)


def test_transformers_reads_smollm2s_gguf_tokenizer_as_llama_cpp_serves_it(
    tokenizer, texts, served
):
    differ = [
        text
        for text in texts
        if tokenizer(text, add_special_tokens=False)["input_ids"] != served(text)
    ]
    assert len(texts) == 200 and differ == []


def test_without_the_pre_tokenizer_fix_transformers_splits_numbered_lists_differently(
    smollm2_gguf, texts, served
):
    """The test above can fail: transformers on its own falls back to GPT-2's split, which
    tokenizes "\\n\\n1." as Ċ,Ċ,1 where llama.cpp has ĊĊ,1 (the step-by-step mode's format)."""
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    assert plain("\n\n1.", add_special_tokens=False)["input_ids"] != served("\n\n1.")
    differ = sum(plain(t, add_special_tokens=False)["input_ids"] != served(t) for t in texts)
    assert differ > 0


def test_the_exporter_names_the_pre_tokenizer_llama_cpp_needs(tokenizer):
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    assert pre_tokenizer_name(spec) == "smollm"
