"""The round trip on the real model (bench.round_trip at a test's size): SmolLM2's GGUF →
dequantized → a LoRA merged → exported → llama.cpp answers as transformers does on F16, nearly so
on Q8_0, stops at its end of turn, and the exporter says where Q4_K_M fell back."""

from __future__ import annotations

import pytest

from bench.round_trip import run
from tutor.llm import TutorLLM
from tutor.modes import Generation

HANG_GUARD_S = 3000  # only a hang reaches it (~2 min on a quiet machine)


@pytest.fixture(scope="module")
def round_trip(smollm2_gguf, tmp_path_factory):
    work = tmp_path_factory.mktemp("round-trip")
    return work, run(smollm2_gguf, work, n_prompts=4, new_tokens=40, seed=0)


@pytest.mark.slow
@pytest.mark.timeout(HANG_GUARD_S)
def test_f16_answers_token_for_token_as_transformers_and_q8_0_nearly(round_trip):
    _, report = round_trip
    assert report["lora_max_logit_change"] > 0.05  # the adapter matters: a lost merge would show
    by_type = {c["qtype"]: c for c in report["comparisons"]}
    f16 = by_type["F16"]
    assert f16["identical_answers"] == f16["prompts"] == 4 and f16["top1_agreement"] == 1.0
    assert by_type["Q8_0"]["top1_agreement"] >= 0.9


@pytest.mark.slow
@pytest.mark.timeout(HANG_GUARD_S)
def test_the_exporter_says_q4_k_m_fell_back_on_576_wide_rows(round_trip):
    _, report = round_trip
    notes = {c["qtype"]: c["fallback"] for c in report["comparisons"]}
    assert notes["F16"] is None and notes["Q8_0"] is None
    assert "576" in notes["Q4_K_M"] and "Q5_0" in notes["Q4_K_M"]


@pytest.mark.slow
@pytest.mark.timeout(HANG_GUARD_S)
def test_the_merged_model_stops_at_its_end_of_turn(round_trip):
    work, _ = round_trip
    llm = TutorLLM(work / "merged-F16.gguf", n_ctx=1024, n_threads=2)
    answer = llm.answer(
        [{"role": "user", "content": "What is 2 + 3?"}],
        Generation(temperature=0.0, max_tokens=96),
    )
    assert llm.stats.stopped == "eot" and "<|im_end|>" not in answer, (answer, llm.stats)
