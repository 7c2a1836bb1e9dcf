"""The llama.cpp runtime's own duties (real llama.cpp): decode steps cut short, llama.cpp's log."""

from __future__ import annotations

import logging

import pytest

from tutor.llama_runtime import (
    DECODE_ABORTED,
    ContextOptions,
    LlamaContext,
    LlamaError,
    LlamaModel,
)


@pytest.fixture
def context(tiny_gguf):
    model = LlamaModel(tiny_gguf)
    ctx = LlamaContext(model, ContextOptions(kv_tokens=256, n_seq_max=2, n_batch=64, n_threads=2))
    yield model, ctx
    ctx.close()
    model.close()


def _prompt(ctx: LlamaContext, tokens: list[int], seq: int = 0) -> None:
    ctx.clear_batch()
    for pos, token in enumerate(tokens):
        ctx.add(token, pos, seq, pos == len(tokens) - 1)


def test_an_interrupted_step_leaves_the_cache_as_it_was_and_logs_no_error(context, caplog):
    model, ctx = context
    caplog.set_level(logging.DEBUG, logger="llama.cpp")
    tokens = model.tokenize(b"What is seven times eight?")
    _prompt(ctx, tokens)
    ctx.interrupt.set()
    assert ctx.decode(interruptible=True) == DECODE_ABORTED
    assert not ctx.interrupt.is_set()  # spent
    _prompt(ctx, tokens)  # the same positions again: llama.cpp took the cut step's cells back
    assert ctx.decode(interruptible=True) == 0
    cut = [r for r in caplog.records if r.name == "llama.cpp"]
    assert cut and all(r.levelno == logging.DEBUG for r in cut)


def test_a_decode_that_must_finish_is_redone_when_interrupted(context):
    model, ctx = context
    _prompt(ctx, model.tokenize(b"Explain photosynthesis."))
    ctx.interrupt.set()
    assert ctx.decode() == 0
    assert not ctx.interrupt.is_set()


def test_llama_cpp_errors_reach_the_log_as_errors(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="llama.cpp")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(LlamaError):
        LlamaModel(broken)
    assert any(r.name == "llama.cpp" and r.levelno == logging.ERROR for r in caplog.records)
