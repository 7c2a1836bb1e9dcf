"""The memory-bandwidth ceiling of token generation: every weight is read once per token."""

from __future__ import annotations

import statistics
import time
from pathlib import Path


def read_bandwidth(threads: int, gib: float = 1.0, repeats: int = 15) -> float:
    """Bytes per second that THREADS threads read from memory (sum over a large array)."""
    import torch

    torch.set_num_threads(threads)
    data = torch.ones(int(gib * 2**30 / 4), dtype=torch.float32)
    data.sum()  # fault the pages in
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        times.append(time.perf_counter() - start)
    return data.numel() * 4 / statistics.median(times)


def weight_bytes(model: Path) -> int:
    """Bytes of all tensors in a GGUF: what one generated token reads (embeddings are tied)."""
    import gguf

    return sum(int(t.n_bytes) for t in gguf.GGUFReader(model).tensors)


def ceiling(model: Path, threads: int) -> dict:
    bandwidth = read_bandwidth(threads)
    per_token = weight_bytes(model)
    return {
        "read_bandwidth_gb_s": bandwidth / 1e9,
        "weight_bytes_per_token": per_token,
        "ceiling_tokens_per_s": bandwidth / per_token,
    }
