"""The benchmark's parts run on tiny models (no timing is asserted: speed lives in
`python -m bench`)."""

from __future__ import annotations

import pytest
import whisper

from bench import hardware, llm, speech
from tutor.llm import TutorLLM

pytestmark = pytest.mark.slow  # starts apps, servers, a browser or training


def test_llm_benchmark_parts_run(tiny_gguf):
    engine = TutorLLM(tiny_gguf, n_ctx=1024, n_threads=2)
    result = llm.generation(engine, repeats=1, n_tokens=16)
    assert result["raw"]["tokens_per_s"] > 0 and result["engine"]["tokens_per_s"] > 0
    follow = llm.follow_up(engine, repeats=1, n_tokens=16)
    assert follow["third_turn_cached_s"] > 0 and follow["third_turn_prompt_tokens"] > 0
    assert hardware.weight_bytes(tiny_gguf) < tiny_gguf.stat().st_size


def test_speech_benchmark_decodes_a_fixed_length(tmp_path, assets):
    from synth import whisper as synth_whisper

    # Random weights with no end built in (the shared tiny Whisper's text ends by design).
    model = whisper.load_model(str(synth_whisper.build_checkpoint(tmp_path / "w.pt")), device="cpu")
    clip, seconds = speech.clip_near(5.0)
    assert abs(seconds - 5.0) < 1.5
    result = model.transcribe(
        speech.audio.load(clip),
        language="en",
        fp16=False,
        temperature=0.0,
        **speech.fixed_length_options(model),
    )
    assert sum(len(s["tokens"]) for s in result["segments"]) == speech.DECODED_TOKENS


def test_concurrency_benchmark_students_and_goals_run(tiny_gguf, tiny_whisper_path, tmp_path):
    """Two students at once through the app, twice, and the goal arithmetic over a table of rows."""
    from bench.harness import running_app
    from bench import concurrency
    from bench.app import greedy_prompts

    prompts = greedy_prompts(tmp_path / "prompts", max_tokens=16)
    with running_app(
        model=tiny_gguf,
        whisper=tiny_whisper_path,
        prompts=prompts,
        n_ctx=1024,
        threads=2,
        parallel=2,
    ) as app:
        student = concurrency.app_student(app.url, 16)
        row = concurrency.summary([concurrency.at_once(student, 2) for _ in range(2)])
    assert row["students"] == 2 and row["rounds"] == 2 and row["aggregate_tokens_per_s"] > 0
    assert 0 < row["p50_first_token_s"] <= row["p95_first_token_s"]  # pooled over both rounds
    assert row["slowest_student_s"] > row["p50_first_token_s"]  # the median round's slowest
    rows = [
        {**row, "server": server, "students": n}
        for server in ("app --parallel 8", "app --parallel 1", "llama-server --parallel N")
        for n in (1, 8)
    ]
    goals = concurrency.goals(
        {
            "parallel": 8,
            "rows": rows,
            "app_peak_rss_gb": 1.5,
            "transcription_stall": {"transcription_s": 0.5, "longest_stall_s": 0.6},
        }
    )
    assert goals["aggregate_8_vs_server"] == 1.0
    assert abs(goals["stall_beyond_transcription_s"] - 0.1) < 1e-9
    assert {key for key, *_ in concurrency.GOALS} == set(goals)
