"""Language-model speed: raw llama-cpp-python vs the tutor's engine, fresh and follow-up turns."""

from __future__ import annotations

from statistics import median
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tutor.modes import Generation, load_modes

if TYPE_CHECKING:  # llama.cpp is imported where used: `--help` need not wait
    import llama_cpp

    from tutor.llm import TutorLLM

QUESTIONS = [
    "A farmer has 3 fields of 12.5 hectares and sells a third of the total. How many hectares "
    "are left, and how would you check the answer with a quick estimate?",
    "Why does the sum of the interior angles of a triangle equal 180 degrees, and what happens "
    "on the surface of a sphere?",
    "How do I find the derivative of x squared times sine of x, and why does the product rule "
    "work?",
]


@dataclass
class Timing:
    ttft_s: float
    tokens_per_s: float
    tokens: int


def chat_messages(mode_prompt: str, turns: list[str]) -> list[dict]:
    roles = ["user", "assistant"] * len(turns)
    return [{"role": "system", "content": mode_prompt}] + [
        {"role": r, "content": t} for r, t in zip(roles, turns)
    ]


def long_system_prompt() -> str:
    """The step-by-step mode's prompt with a worked example: a realistic ~350-token chat prompt."""
    mode = load_modes()["step_by_step"]
    example = (
        "Example. Question: solve 2x + 6 = 14. 1. Subtract 6 from both sides: 2x = 8. "
        "2. Divide both sides by 2: x = 4. 3. Check: 2 * 4 + 6 = 14, correct. "
        "Answer: x = 4. "
    ) * 3
    return mode.system_prompt + "\n" + example


def raw_run(llm: llama_cpp.Llama, prompt: str, n_tokens: int) -> Timing:
    """Fresh prompt (no KV reuse), greedy, N_TOKENS generated, with llama-cpp-python alone."""
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    llm.reset()
    start = time.perf_counter()
    first, count = None, 0
    for _ in llm.generate(tokens, temp=0.0, reset=True):
        first = first or time.perf_counter()
        count += 1
        if count >= n_tokens:
            break
    end = time.perf_counter()
    return Timing(first - start, (count - 1) / (end - first), count)


def engine_run(
    engine: TutorLLM, messages: list[dict], n_tokens: int, fresh: bool, repeat_penalty: float = 1.0
) -> Timing:
    """One answer through TutorLLM.stream, timed from the call to the first piece."""
    if fresh:
        engine.forget()
    start = time.perf_counter()
    first = None
    greedy = Generation(temperature=0.0, max_tokens=n_tokens, repeat_penalty=repeat_penalty)
    for _ in engine.stream(messages, greedy):
        first = first or time.perf_counter()
    end = time.perf_counter()
    n = engine.stats.generated_tokens
    return Timing(first - start, (n - 1) / (end - first) if n > 1 else 0.0, n)


def generation(engine: TutorLLM, repeats: int, n_tokens: int) -> dict:
    """Raw vs engine (same greedy sampling), alternating, fresh prompts: medians and ratios.

    A third variant prices llama.cpp's repetition penalty (a pass over the 128k vocabulary per
    token), which is why the modes leave it off.
    """
    # Raw llama-cpp-python runs on the engine's thread too: one OpenMP team in this process, as
    # in the app (two calling threads would slow both; see tutor.threads).
    threads = engine.n_threads
    import llama_cpp

    raw = engine.thread.run(
        llama_cpp.Llama,
        model_path=str(engine.model_path),
        n_ctx=4096,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    system = long_system_prompt()
    runs: dict[str, list[Timing]] = {"raw": [], "engine": [], "engine, repeat_penalty 1.1": []}
    prompt_tokens = 0
    for i in range(repeats + 1):  # the first round warms caches up and is not counted
        messages = chat_messages(system, [QUESTIONS[i % len(QUESTIONS)]])
        prompt = engine.render(messages)
        prompt_tokens = len(engine.tokenize(prompt))
        timings = [
            engine.thread.run(raw_run, raw, prompt, n_tokens),
            engine_run(engine, messages, n_tokens, True),
            engine_run(engine, messages, n_tokens, True, repeat_penalty=1.1),
        ]
        if i:
            for name, timing in zip(runs, timings):
                runs[name].append(timing)
    out = {"prompt_tokens": prompt_tokens, "new_tokens": n_tokens, "repeats": repeats}
    for name, timings in runs.items():
        out[name] = {
            "ttft_s": median([t.ttft_s for t in timings]),
            "tokens_per_s": median([t.tokens_per_s for t in timings]),
            "prompt_tokens_per_s": prompt_tokens / median([t.ttft_s for t in timings]),
        }
    out["engine_vs_raw_tokens_per_s"] = out["engine"]["tokens_per_s"] / out["raw"]["tokens_per_s"]
    out["engine_vs_raw_ttft"] = out["engine"]["ttft_s"] / out["raw"]["ttft_s"]
    del raw
    return out


def follow_up(engine: TutorLLM, repeats: int, n_tokens: int) -> dict:
    """Third-turn time to first token, cached vs fresh; alone and with another student between."""
    system = long_system_prompt()
    cached, interleaved, fresh = [], [], []
    for i in range(repeats + 1):
        a, b = [QUESTIONS[i % 3]], [QUESTIONS[(i + 1) % 3]]
        engine.forget()
        for turn in range(2):  # student A alone: turns 1 and 2, then the timed turn 3
            a.append(
                engine.answer(
                    chat_messages(system, a), Generation(temperature=0.0, max_tokens=n_tokens)
                )
            )
            a.append(f"Thanks. Can you explain step {turn + 2} again?")
        timed_cached = engine_run(engine, chat_messages(system, a), 16, fresh=False)
        timed_fresh = engine_run(engine, chat_messages(system, a), 16, fresh=True)
        engine.forget()
        a, b = a[:1], b
        for turn in range(2):  # students A and B take turns on the one model
            for conv in (a, b):
                conv.append(
                    engine.answer(
                        chat_messages(system, conv),
                        Generation(temperature=0.0, max_tokens=n_tokens),
                    )
                )
                conv.append(f"Thanks. Can you explain step {turn + 2} again?")
        timed_interleaved = engine_run(engine, chat_messages(system, a), 16, fresh=False)
        if i:
            cached.append(timed_cached.ttft_s)
            fresh.append(timed_fresh.ttft_s)
            interleaved.append(timed_interleaved.ttft_s)
    out = {
        "third_turn_cached_s": median(cached),
        "third_turn_fresh_s": median(fresh),
        "third_turn_interleaved_s": median(interleaved),
        "third_turn_prompt_tokens": engine.stats.prompt_tokens,
    }
    out["cached_vs_fresh"] = out["third_turn_cached_s"] / out["third_turn_fresh_s"]
    out["interleaved_vs_fresh"] = out["third_turn_interleaved_s"] / out["third_turn_fresh_s"]
    return out
