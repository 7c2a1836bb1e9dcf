"""HF Llama → GGUF export: llama.cpp must compute, tokenize and template exactly as HF does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import llama_cpp_helpers
from export.to_gguf import export
from tutor import chat_format

PROMPT = (
    "The derivative of x squared is 2x, so the slope at x = 3 is 6. "
    "Integrals undo derivatives: the integral of 2x is x squared plus a constant."
)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gguf")


def _ids(tokenizer, n: int = 64) -> list[int]:
    ids = tokenizer(PROMPT * 4)["input_ids"][:n]
    assert len(ids) == n
    return ids


def _hf_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.fixture(scope="module")
def tiny_f32(tiny_llama_dir, export_dir) -> Path:
    return export(tiny_llama_dir, export_dir / "tiny-f32.gguf", "F32").path


def test_f32_logits_match_hf(tiny_f32, tiny_llama_dir, tiny_tokenizer):
    ids = _ids(tiny_tokenizer)
    expected = _hf_logits(tiny_llama_dir, ids)
    got = llama_cpp_helpers.logits(tiny_f32, ids)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4
    # The fixture is not degenerate: logits vary across positions and tokens.
    assert expected.std() > 0.1


def test_f32_logits_match_hf_real_tokenizer_untied(llama3_tiny_dir, llama3_tokenizer, export_dir):
    """Untied output head and Llama 3's real RoPE scaling and vocabulary."""
    path = export(llama3_tiny_dir, export_dir / "llama3-tiny-f32.gguf", "F32").path
    ids = _ids(llama3_tokenizer)
    diff = np.abs(llama_cpp_helpers.logits(path, ids) - _hf_logits(llama3_tiny_dir, ids))
    assert diff.max() <= 1e-4


# A random tiny model has near ties: top-2 logit gaps of 0.01-0.07 where Q8_0's logits are off by
# up to ~0.15. Which positions tie follows the tokenizer, trained on standard-library docstrings,
# which differ between Python patch releases: 60/64 agreed on Debian 12's 3.11.2, 63/64 on 3.11.7.
@pytest.mark.parametrize("qtype, min_agreement", [("Q8_0", 0.9), ("F16", 0.95), ("BF16", 0.95)])
def test_argmax_agrees_with_hf(qtype, min_agreement, tiny_llama_dir, tiny_tokenizer, export_dir):
    path = export(tiny_llama_dir, export_dir / f"tiny-{qtype}.gguf", qtype).path
    ids = _ids(tiny_tokenizer)
    expected = _hf_logits(tiny_llama_dir, ids).argmax(-1)
    got = llama_cpp_helpers.logits(path, ids).argmax(-1)
    assert (got == expected).mean() >= min_agreement


@pytest.mark.parametrize("qtype", ["Q4_K_M", "Q5_K_M"])
def test_k_quants_load_and_generate(qtype, tiny_llama_dir, tiny_f32, export_dir):
    path = export(tiny_llama_dir, export_dir / f"tiny-{qtype}.gguf", qtype).path
    assert path.stat().st_size < 0.5 * tiny_f32.stat().st_size
    llm = llama_cpp_helpers.load(path, logits_all=False)
    out = llm.create_completion("The derivative of", max_tokens=8, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1
    assert out["choices"][0]["text"]


# Varied text: code, digits, punctuation and whitespace runs, accents, CJK, emoji, specials.
TOKENIZER_TEXTS = [
    "Hello world",
    "def f(x):\n    return x**2  # square\n\n\tprint(f(3))",
    "1234567890 3.14159 -42 1,000,000 2026-11-21 0x1F",
    "Wait... what?!?! (yes) [no] {maybe} <tag/> --- ___ *** !!!",
    "spaces:     five\ttab\t\ttwo\n\n\nnewlines   \n  trailing   ",
    "Café naïve façade Ångström résumé Zürich São Paulo",
    "日本語のテキスト 中文文本 한국어",
    "emoji 🎉🚀 👩‍🔬 ✅",
    "I'm sure they'll say it's John's, we've ALL'S done",
    f"{chat_format.START_HEADER}user{chat_format.END_HEADER}\n\nHi{chat_format.EOT}",
]


@pytest.fixture(scope="module")
def llama3_llm(llama3_tiny_dir, export_dir):
    path = export(llama3_tiny_dir, export_dir / "llama3-tiny-q8.gguf", "Q8_0").path
    return llama_cpp_helpers.load(path, logits_all=False)


@pytest.mark.parametrize("text", TOKENIZER_TEXTS)
def test_llama3_tokenization_matches_hf(text, llama3_llm, llama3_tokenizer):
    expected = llama3_tokenizer(text)["input_ids"]
    assert llama3_llm.tokenize(text.encode(), add_bos=True, special=True) == expected


def test_llama3_chat_template_prompt_matches_hf(llama3_llm, llama3_tokenizer):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    messages = [
        {"role": "system", "content": "You are a patient maths tutor."},
        {"role": "user", "content": "What is 7 x 8?"},
        {"role": "assistant", "content": "Try 7 x 4 first, then double it."},
        {"role": "user", "content": "28, so 56!"},
        {"role": "assistant", "content": "Exactly."},
        {"role": "user", "content": "And 7 x 9?"},
    ]

    # The same inputs llama-cpp-python gives its default chat handler: the special tokens' text.
    def special(token: int) -> str:
        return llama3_llm.detokenize([token], special=True).decode()

    formatter = Jinja2ChatFormatter(
        template=llama3_llm.metadata["tokenizer.chat_template"],
        eos_token=special(llama3_llm.token_eos()),
        bos_token=special(llama3_llm.token_bos()),
    )
    prompt = formatter(messages=messages).prompt
    expected = llama3_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert prompt == expected
    assert llama3_llm.chat_format == "chat_template.default"


def test_special_token_metadata(llama3_llm, llama3_tokenizer):
    meta = llama3_llm.metadata
    assert int(meta["tokenizer.ggml.bos_token_id"]) == llama3_tokenizer.bos_token_id
    assert int(meta["tokenizer.ggml.eos_token_id"]) == llama3_tokenizer.eos_token_id
    assert int(meta["tokenizer.ggml.eot_token_id"]) == llama3_tokenizer.convert_tokens_to_ids(
        chat_format.EOT
    )
    assert int(meta["tokenizer.ggml.padding_token_id"]) == llama3_tokenizer.pad_token_id
    assert meta["tokenizer.ggml.pre"] == "llama-bpe"


def test_lora_adapter_merged_on_export(tiny_llama_dir, tiny_tokenizer, export_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    from train.config import LoraConfig as LoraSettings  # the recipe's target modules

    config = LoraConfig(r=8, lora_alpha=16, target_modules=LoraSettings().target_modules)
    peft_model = get_peft_model(model, config)
    ids = torch.tensor([_ids(tiny_tokenizer)])
    optimizer = torch.optim.AdamW(peft_model.parameters(), lr=1e-2)
    for _ in range(5):
        loss = peft_model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    merged = peft_model.merge_and_unload().eval()
    with torch.no_grad():
        expected = merged(ids).logits[0].numpy()
    base = _hf_logits(tiny_llama_dir, ids[0].tolist())
    assert np.abs(expected - base).max() > 1e-2  # the adapter changed the model

    path = export(
        tiny_llama_dir, export_dir / "tiny-lora-f32.gguf", "F32", adapter=adapter_dir
    ).path
    got = llama_cpp_helpers.logits(path, ids[0].tolist())
    assert np.abs(got - expected).max() <= 1e-4


def _run_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "export.to_gguf", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        timeout=300,
    )


def _bad_inputs(tiny_llama_dir: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Each bad input: (CLI arguments, words its error line must contain)."""
    not_llama = tmp / "gpt2"
    not_llama.mkdir()
    (not_llama / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    )
    corrupt = tmp / "corrupt"
    corrupt.mkdir()
    for f in tiny_llama_dir.iterdir():
        data = f.read_bytes()
        (corrupt / f.name).write_bytes(
            data[: len(data) // 3] if f.suffix == ".safetensors" else data
        )
    a_file = tmp / "a-file"
    a_file.write_text("not a directory")
    out = str(tmp / "out" / "model.gguf")
    return {
        "missing directory": ([str(tmp / "nope"), out], "not a directory"),
        "file instead of directory": ([str(a_file), out], "not a directory"),
        "directory without config": ([str(tmp / "out"), out], "no config.json"),
        "non-llama architecture": ([str(not_llama), out], "unsupported architecture 'gpt2'"),
        "corrupt weights": ([str(corrupt), out], "cannot load the weights"),
        "unknown quantization": (
            [str(tiny_llama_dir), out, "--type", "Q9_X"],
            "unknown quantization type 'Q9_X'",
        ),
        "unwritable destination": (
            [str(tiny_llama_dir), str(a_file / "model.gguf")],
            "cannot write",
        ),
        "missing adapter": (
            [str(tiny_llama_dir), out, "--adapter", str(tmp / "no-adapter")],
            "not a directory",
        ),
    }


def test_bad_inputs_give_one_clear_error_and_no_output(tiny_llama_dir, tmp_path):
    (tmp_path / "out").mkdir()
    for case, (args, words) in _bad_inputs(tiny_llama_dir, tmp_path).items():
        result = _run_export(*args)
        assert result.returncode == 1, case
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and words in lines[-1], (case, result.stderr)
        assert "Traceback" not in result.stderr, case
        assert list((tmp_path / "out").iterdir()) == [], f"{case} left files behind"
