"""The benchmark's models: real architectures, synthetic seeded weights, built once and cached.

Llama-3.2-1B-Instruct's shape with the real Llama 3 tokenizer, exported through the project's
own exporter to Q4_K_M; Whisper `base`'s shape in openai-whisper's checkpoint format. Random
weights cost the same to run as trained ones.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from synth.standin import CACHE_DIR
from train.assets import assets_dir

BENCH_DIR = CACHE_DIR / "bench"


def llama_1b_q4(cache: Path = BENCH_DIR) -> Path:
    """Llama-3.2-1B-shaped Q4_K_M GGUF (≈ 0.8 GB), built on first use (a few minutes).

    Its answers never end early (no special token is ever the greedy choice), so that every
    engine compared generates exactly the tokens asked for.
    """
    import torch

    from export.to_gguf import export
    from synth import llama as synth_llama

    path = cache / "llama-3.2-1b-shape-never-ends-Q4_K_M.gguf"
    if path.is_file():
        return path
    tokenizer_dir = assets_dir() / "tokenizers" / "llama3"
    if not tokenizer_dir.is_dir():
        raise SystemExit(f"the Llama 3 tokenizer is needed from {tokenizer_dir} (TUTOR_ASSETS)")
    checkpoint = cache / "llama-3.2-1b-shape-hf"
    if not (checkpoint / "config.json").is_file():
        tmp = cache / "llama-3.2-1b-shape-hf.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        synth_llama.build_checkpoint(
            tmp,
            synth_llama.load_tokenizer(tokenizer_dir),
            synth_llama.LLAMA_3_2_1B,
            dtype=torch.bfloat16,
            never_ends=True,
        )
        tmp.rename(checkpoint)
    export(checkpoint, path, "Q4_K_M", name="Llama-3.2-1B shape, synthetic weights")
    shutil.rmtree(checkpoint)  # 2.5 GB that the benchmark no longer needs
    return path


SPOKEN_QUESTION_TOKENS = 30  # what Whisper decodes for a ~5 s spoken question


def whisper_base(cache: Path = BENCH_DIR) -> Path:
    """Whisper-base-shaped checkpoint whose transcripts are 30 distinct tokens, like real ones
    (a text that repeats would be taken for a failed decoding and decoded again)."""
    from synth import whisper as synth_whisper

    path = cache / f"whisper-base-shape-{SPOKEN_QUESTION_TOKENS}-distinct-tokens.pt"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        synth_whisper.build_checkpoint(path, synth_whisper.BASE, end_after=SPOKEN_QUESTION_TOKENS)
    return path
