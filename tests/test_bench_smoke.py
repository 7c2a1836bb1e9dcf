"""The benchmark's parts run on tiny models (no timing is asserted: speed lives in `python -m bench`)."""

from __future__ import annotations

import whisper

from bench import hardware, llm, speech


def test_llm_benchmark_parts_run(tiny_gguf):
    engine = llm.TutorLLM(tiny_gguf, n_ctx=1024, n_threads=2)
    result = llm.generation(engine, repeats=1, n_tokens=16)
    assert result["raw"]["tokens_per_s"] > 0 and result["engine"]["tokens_per_s"] > 0
    follow = llm.follow_up(engine, repeats=1, n_tokens=16)
    assert follow["third_turn_cached_s"] > 0 and follow["third_turn_prompt_tokens"] > 0
    assert hardware.weight_bytes(tiny_gguf) < tiny_gguf.stat().st_size


def test_speech_benchmark_decodes_a_fixed_length(tiny_whisper_path, assets):
    model = whisper.load_model(str(tiny_whisper_path), device="cpu")
    clip, seconds = speech.clip_near(5.0)
    assert abs(seconds - 5.0) < 1.5
    result = model.transcribe(speech.audio.load(clip), language="en", fp16=False,
                              temperature=0.0, **speech.fixed_length_options(model))
    assert sum(len(s["tokens"]) for s in result["segments"]) == speech.DECODED_TOKENS
