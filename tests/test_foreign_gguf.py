"""GGUF files written by llama.cpp's own converter, not by this project.

The reference `convert_hf_to_gguf.py` ships in llama-cpp-python's source release, which
`make test` fetches from PyPI into .cache/reference. Its files must load and answer in the app's
engine (with and without a chat template), and our exporter must write the same tensors.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import llama_cpp_helpers
from bench import llama_server
from export.to_gguf import export
from tutor.chat_format import LLAMA3_CHAT_TEMPLATE
from tutor.llm import TutorLLM
from tutor.modes import Generation

pytestmark = pytest.mark.slow  # starts apps, servers, a browser or training

GREEDY = Generation(temperature=0.0, max_tokens=16)
MESSAGES = [
    {"role": "system", "content": "You are a tutor."},
    {"role": "user", "content": "What is a fraction?"},
]


@pytest.fixture(scope="module")
def converter(tmp_path_factory) -> Path:
    """llama.cpp's convert_hf_to_gguf.py with its conversion package and gguf-py."""
    root = tmp_path_factory.mktemp("llama.cpp")
    source = llama_server.extract_llama_cpp(
        root,
        lambda name: (
            name.endswith("/convert_hf_to_gguf.py") or "/conversion/" in name or "/gguf-py/" in name
        ),
    )
    return source / "convert_hf_to_gguf.py"


def _convert(converter: Path, src: Path, out: Path, outtype: str) -> Path:
    result = subprocess.run(
        [sys.executable, str(converter), str(src), "--outfile", str(out), "--outtype", outtype],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def reference_q8(converter, llama3_tiny_dir, tmp_path_factory) -> Path:
    return _convert(
        converter, llama3_tiny_dir, tmp_path_factory.mktemp("ref") / "ref-q8_0.gguf", "q8_0"
    )


def test_reference_gguf_loads_and_answers_with_its_template(reference_q8, llama3_tokenizer):
    llm = TutorLLM(reference_q8, n_ctx=512, n_threads=2)
    assert llm.has_own_template
    assert llm.kv_type == "f16"  # no CPU flash attention for its head size: q8_0 falls back
    answer = llm.answer(MESSAGES, GREEDY)
    assert llm.stats.generated_tokens > 0 and llm.stats.stopped in ("eot", "max_tokens")
    assert answer or llm.stats.stopped == "eot"
    assert llm.stats.prompt == llama3_tokenizer.apply_chat_template(
        MESSAGES, tokenize=False, add_generation_prompt=True
    )


def test_reference_gguf_without_template_falls_back_to_llama3(reference_q8, tmp_path):
    bare = tmp_path / "no-template.gguf"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gguf.scripts.gguf_new_metadata",
            str(reference_q8),
            str(bare),
            "--remove-metadata",
            "tokenizer.chat_template",
            "--force",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    llm = TutorLLM(bare, n_ctx=512, n_threads=2)
    assert not llm.has_own_template and llm.template == LLAMA3_CHAT_TEMPLATE
    llm.answer(MESSAGES, GREEDY)
    assert llm.stats.generated_tokens > 0
    assert llm.stats.prompt.startswith("<|begin_of_text|><|start_header_id|>system")


def _fields(path: Path) -> dict:
    reader = gguf.GGUFReader(path)
    values = {
        name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")
    }
    return values, {t.name: np.array(t.data) for t in reader.tensors}


def test_our_export_writes_what_llama_cpp_writes(converter, llama3_tiny_dir, tmp_path):
    ref_meta, ref_tensors = _fields(
        _convert(converter, llama3_tiny_dir, tmp_path / "ref.gguf", "f32")
    )
    ours = export(llama3_tiny_dir, tmp_path / "ours.gguf", "F32").path
    our_meta, our_tensors = _fields(ours)
    assert ref_tensors.keys() == our_tensors.keys()
    for name, data in ref_tensors.items():
        assert np.array_equal(data, our_tensors[name]), name
    # Every setting llama.cpp reads from the reference file is in ours, with the same value.
    cosmetic = {"general.name", "general.size_label", "tokenizer.ggml.add_sep_token"}
    for key, value in ref_meta.items():
        if key not in cosmetic:
            assert our_meta.get(key) == value, key
    ids = list(range(1000, 1064))
    assert np.array_equal(
        llama_cpp_helpers.logits(ours, ids), llama_cpp_helpers.logits(tmp_path / "ref.gguf", ids)
    )
