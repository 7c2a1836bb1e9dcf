"""llama.cpp helpers for tests: load a GGUF exactly and read its logits."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import numpy as np


def load(path: Path, n_ctx: int = 256, logits_all: bool = True) -> llama_cpp.Llama:
    """Load with an F32 KV cache and no flash attention, so F32 models compute exactly."""
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_threads=2,
        n_batch=n_ctx,
        logits_all=logits_all,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        flash_attn=False,
        verbose=False,
    )


def logits(path: Path, ids: list[int]) -> np.ndarray:
    """Logits for every position of IDS (one row per token)."""
    llm = load(path)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)
