"""Tokenizer → GGUF metadata: vocabulary, merges, pre-tokenizer, special tokens, chat template.

llama.cpp re-implements the tokenizer from these fields; any mismatch (a wrong pre-tokenizer,
a special token typed as normal text, a missing end-of-turn id) makes a fine-tuned model produce
garbage only in llama.cpp, which is why the tests compare tokenizations id for id.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from export.quiet import quiet_logger

# Pre-tokenizer split regexes and the names llama.cpp knows them by (`tokenizer.ggml.pre`).
LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS_BY_REGEX = {LLAMA3_SPLIT_REGEX: "llama-bpe"}
# Pre-tokenizers llama.cpp knows by a name that transformers' GGUF reader does not (it then falls
# back to GPT-2's splitting), as tokenizer.json specs. `smollm`: every digit alone, then GPT-2's
# byte-level split (SmolLM's own tokenizer.json; llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM).
HF_PRE_TOKENIZERS = {
    "smollm": {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": True,
                "use_regex": True,
            },
        ],
    },
}
# Text of end-of-turn tokens, for templates whose turns do not end with EOS.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>")


class UnsupportedTokenizerError(ValueError):
    """The tokenizer cannot be represented faithfully in llama.cpp."""


def pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's name for the pre-tokenizer in a tokenizer.json, or an error if unknown."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if (
        kinds == ["Digits", "ByteLevel"]
        and steps[0].get("individual_digits")
        and steps[1].get("use_regex", True)
    ):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = steps[0].get("pattern", {}).get("Regex")
        if regex in PRE_TOKENIZERS_BY_REGEX:
            return PRE_TOKENIZERS_BY_REGEX[regex]
    raise UnsupportedTokenizerError(
        f"unsupported pre-tokenizer {json.dumps(pre)[:120]}...: llama.cpp would split text "
        "differently from Hugging Face (supported: Llama 3 byte-level BPE, GPT-2 byte-level BPE, "
        "SmolLM's single digits + GPT-2)"
    )


def match_llama_cpp_pre_tokenizer(tok: PreTrainedTokenizerBase, name: str) -> bool:
    """Give TOK (a fast tokenizer read from a GGUF) the pre-tokenizer llama.cpp uses for NAME
    (`tokenizer.ggml.pre`) where transformers would split text differently; True if changed."""
    from tokenizers import Tokenizer

    spec = HF_PRE_TOKENIZERS.get(name)
    if spec is None:
        return False
    full = json.loads(tok.backend_tokenizer.to_str())
    full["pre_tokenizer"] = spec
    # The pre-tokenizer is rebuilt through tokenizers' own JSON form, its public serialisation.
    tok.backend_tokenizer.pre_tokenizer = Tokenizer.from_str(json.dumps(full)).pre_tokenizer
    return True


def token_table(tok: PreTrainedTokenizerBase, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token texts and llama.cpp token types for ids 0..vocab_size-1 (as llama.cpp's converter)."""
    reverse = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:  # embedding rows beyond the tokenizer (padding to a round size)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            types.append(
                gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
            )
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def add_vocab(writer: gguf.GGUFWriter, tokenizer_dir: Path, vocab_size: int) -> None:
    """Write the tokenizer of TOKENIZER_DIR into the GGUF being built by WRITER."""
    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    if spec.get("model", {}).get("type") != "BPE" or spec["model"].get("byte_fallback"):
        raise UnsupportedTokenizerError(
            "only byte-level BPE tokenizers (Llama 3.x) are supported; "
            f"found a {spec.get('model', {}).get('type')} model"
        )
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if len(tok) > vocab_size:
        raise UnsupportedTokenizerError(
            f"the tokenizer has {len(tok)} tokens but the model only {vocab_size} embeddings"
        )
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(spec))
    tokens, types = token_table(tok, vocab_size)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # SpecialVocab is used for its merges only (both merge formats); its guesses about special
    # tokens, and its warnings about them, are replaced by the tokenizer's own answers below.
    with quiet_logger("gguf.vocab"):
        merges = gguf.SpecialVocab(tokenizer_dir, load_merges=True, special_token_types=()).merges
    writer.add_token_merges(merges)

    writer.add_bos_token_id(tok.bos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)
    if tok.pad_token_id is not None:
        writer.add_pad_token_id(tok.pad_token_id)
    vocab = tok.get_vocab()
    eot = next((vocab[t] for t in END_OF_TURN_TOKENS if t in vocab), tok.eos_token_id)
    writer.add_eot_token_id(eot)
    # Whether BOS/EOS are added is read off the tokenizer's behaviour, not its config flags,
    # which differ between transformers versions.
    ids = tok("a")["input_ids"]
    writer.add_add_bos_token(ids[0] == tok.bos_token_id)
    writer.add_add_eos_token(ids[-1] == tok.eos_token_id)
    if isinstance(tok.chat_template, str):
        writer.add_chat_template(tok.chat_template)
