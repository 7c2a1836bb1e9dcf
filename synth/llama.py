"""Seeded Hugging Face Llama checkpoints and byte-level BPE tokenizers."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from export.vocab import LLAMA3_SPLIT_REGEX
from tutor import chat_format

_CORPUS_MODULES = (
    "os",
    "json",
    "re",
    "collections",
    "functools",
    "itertools",
    "pathlib",
    "string",
    "textwrap",
    "math",
    "statistics",
    "fractions",
    "decimal",
)


@dataclass(frozen=True)
class LlamaShape:
    """Architecture of a synthetic Llama; vocab_size None means the tokenizer's size."""

    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int | None = None
    max_position_embeddings: int = 8192
    rope_theta: float = 10000.0
    # Llama 3 RoPE scaling; a small original context makes the scaling change many dims.
    rope_scaling: dict = field(
        default_factory=lambda: {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        }
    )
    tie_word_embeddings: bool = True
    initializer_range: float = 0.1


# The shape of meta-llama/Llama-3.2-1B-Instruct, for speed and memory work.
LLAMA_3_2_1B = LlamaShape(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    tie_word_embeddings=True,
    initializer_range=0.02,
)


def llama_3_2_1b_scaled(**sizes) -> LlamaShape:
    """Llama 3.2 1B's shape with SIZES changed (hidden_size, layers, ...): its positions and
    RoPE scaling kept, the vocabulary the tokenizer's."""
    return replace(LLAMA_3_2_1B, vocab_size=None, **sizes)


def _corpus() -> list[str]:
    """Deterministic English-and-code text: docstrings of standard-library modules."""
    texts = []
    for name in _CORPUS_MODULES:
        module = __import__(name)
        texts.append(inspect.getdoc(module) or "")
        for attr in sorted(dir(module)):
            doc = inspect.getdoc(getattr(module, attr, None)) if not attr.startswith("_") else None
            if doc:
                texts.append(doc)
    texts += [" ".join(str(i * 37) for i in range(200)), "3.14159 + 2.71828 = 5.85987"]
    return texts


def train_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with Llama 3's pre-tokenizer and special tokens.

    All 256 byte symbols are in the alphabet (llama.cpp looks some of them up by value), the
    special tokens come after the learned vocabulary, as in Llama 3.
    """
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    n_special = len(chat_format.SPECIAL_TOKENS)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_special,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer)
    tok.add_special_tokens(list(chat_format.SPECIAL_TOKENS))
    bos_id = tok.token_to_id(chat_format.BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{chat_format.BOS}:0 $A:0",
                pair=f"{chat_format.BOS}:0 $A:0 {chat_format.BOS}:1 $B:1",
                special_tokens=[(chat_format.BOS, bos_id)],
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=chat_format.BOS,
        eos_token=chat_format.EOT,
        pad_token=chat_format.PAD,
        chat_template=chat_format.LLAMA3_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def build_checkpoint(
    out_dir: Path,
    tokenizer: PreTrainedTokenizerFast | None,
    shape: LlamaShape = LlamaShape(),
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    fit_steps: int = 0,
    never_ends: bool = False,
) -> Path:
    """Write a seeded random LlamaForCausalLM (and its tokenizer) as a Hugging Face checkpoint.

    FIT_STEPS > 0 first fits the model briefly to the tokenizer's corpus: its next-token
    distributions then have clear winners, as a trained model's do, so quantized and exact
    arg-max predictions can be compared meaningfully. NEVER_ENDS zeroes the output rows of the
    tokenizer's special tokens, so that greedy answers always run to their token budget
    (comparable timings, streams that are visibly long), and those of tokens that are not whole
    UTF-8 characters on their own: a server holds those back until a character is complete
    (llama-cpp-python's does, and notices a client gone only when it sends), and a random
    model may never complete one.
    """
    out_dir = Path(out_dir)
    vocab_size = shape.vocab_size or len(tokenizer)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=shape.rope_theta,
        rope_scaling=dict(shape.rope_scaling),
        tie_word_embeddings=shape.tie_word_embeddings,
        initializer_range=shape.initializer_range,
        bos_token_id=tokenizer.bos_token_id if tokenizer else None,
        eos_token_id=tokenizer.eos_token_id if tokenizer else None,
        pad_token_id=tokenizer.pad_token_id if tokenizer else None,
    )
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(dtype)
    # Norm weights are ones at init; perturb them so a wrong norm mapping shows in the logits.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(torch.randn_like(param) * 0.1)
    if fit_steps:
        _fit(model, tokenizer, fit_steps)
    if never_ends:
        with torch.no_grad():
            model.get_output_embeddings().weight[_never_sampled(tokenizer)] = 0.0
    model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


def _never_sampled(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """Ids of the special tokens and of the tokens that are partial UTF-8 characters."""
    partial = [
        i
        for i in range(len(tokenizer))
        if "\ufffd" in tokenizer.decode([i], skip_special_tokens=False)
    ]
    return sorted(set(tokenizer.added_tokens_decoder) | set(partial))


def load_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer directory (e.g. the shared Llama 3 tokenizer)."""
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def _fit(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    steps: int,
    seq_len: int = 64,
    batch: int = 8,
) -> None:
    ids = torch.tensor(tokenizer("\n\n".join(_corpus()))["input_ids"])
    n = (len(ids) // seq_len) * seq_len
    chunks = ids[:n].view(-1, seq_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        rows = torch.arange(step * batch, (step + 1) * batch) % len(chunks)
        loss = model(chunks[rows], labels=chunks[rows]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
