"""Scaling out: the app on llama-server (`--llm-url`) beside the embedded engine, side by side.

Three ways one student's answer can be streamed on this machine, from the same GGUF with the
same KV cache type and answer slots, all alive at once and taking turns round by round (the
order rotating), so that they see the same machine state:

- `embedded`: the app with the model in its own process (the default);
- `remote`: the app with `--llm-url` to llama-server (one HTTP hop more, streamed twice);
- `llama-server`: the openai client straight to llama-server (no app), the hop's floor.

Tokens are counted by llama-server's own /tokenize.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.harness import running_app
from bench import app, llama_server
from bench.llm import QUESTIONS
from tutor.defaults import DEFAULT_KV_TOKENS, DEFAULT_KV_TYPE, DEFAULT_PARALLEL
from tutor.modes import load_modes

if TYPE_CHECKING:
    import openai

MODE = "step_by_step"
TARGETS = ("embedded", "remote", "llama-server")


def run(
    llama: Path, whisper_ckpt: Path, threads: int, rounds: int, repeats: int, new_tokens: int
) -> dict:
    """Medians over ROUNDS of each target's median over REPEATS answers of NEW_TOKENS."""
    import openai  # here: `--help` need not wait for it

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        prompts = app.greedy_prompts(tmp_path / "prompts", new_tokens)
        common = (
            "--whisper",
            str(whisper_ckpt),
            "--threads",
            str(threads),
            "--prompts",
            str(prompts),
        )
        # llama-server as the app's own engine is set up: the same slots, cells and cell type.
        kv = ["-ctk", DEFAULT_KV_TYPE, "-ctv", DEFAULT_KV_TYPE, "-fa", "on"]
        with (
            llama_server.running(
                llama,
                DEFAULT_PARALLEL,
                DEFAULT_KV_TOKENS,
                threads,
                tmp_path / "llama-server.log",
                *kv,
            ) as server,
            running_app(*common, model=llama, log=tmp_path / "embedded.log") as embedded,
            running_app(*common, llm_url=f"{server}/v1", log=tmp_path / "remote.log") as remote,
        ):
            client = openai.OpenAI(base_url=f"{server}/v1", api_key="none")

            def count_tokens(text: str) -> int:
                return len(
                    client.post(f"{server}/tokenize", cast_to=object, body={"content": text})[
                        "tokens"
                    ]
                )

            system_prompt = load_modes(prompts)[MODE].system_prompt
            measure = {
                "embedded": lambda: app.generation(embedded.url, count_tokens, repeats),
                "remote": lambda: app.generation(remote.url, count_tokens, repeats),
                "llama-server": lambda: _direct(client, system_prompt, new_tokens, repeats),
            }
            per_round: dict[str, list[dict]] = {name: [] for name in TARGETS}
            for r in range(rounds):
                for name in TARGETS[r % 3 :] + TARGETS[: r % 3]:
                    per_round[name].append(measure[name]())
    result = {
        name: {key: statistics.median(m[key] for m in measured) for key in measured[0]}
        for name, measured in per_round.items()
    }
    return {
        "rounds": rounds,
        "repeats": repeats,
        "answer_tokens": new_tokens,
        "mode": MODE,
        **result,
        "ratios": {
            "remote_vs_embedded_tokens_per_s": result["remote"]["tokens_per_s"]
            / result["embedded"]["tokens_per_s"],
            "remote_vs_embedded_ttft": result["remote"]["ttft_s"] / result["embedded"]["ttft_s"],
            "remote_vs_direct_tokens_per_s": result["remote"]["tokens_per_s"]
            / result["llama-server"]["tokens_per_s"],
            "remote_vs_direct_ttft": result["remote"]["ttft_s"] / result["llama-server"]["ttft_s"],
        },
    }


def _direct(client: openai.OpenAI, system_prompt: str, new_tokens: int, repeats: int) -> dict:
    """The openai client streaming from llama-server itself, as the app's requests are sent."""
    speeds, ttfts = [], []
    for i in range(repeats + 1):
        start = time.perf_counter()
        first, tokens = None, 0
        stream = client.chat.completions.create(
            model="default",
            stream=True,
            max_tokens=new_tokens,
            temperature=0.0,
            messages=[
                {"role": "system", "content": system_prompt},
                {"role": "user", "content": QUESTIONS[i % 3] + f" (direct {i})"},
            ],
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                tokens += 1
                if first is None:
                    first = time.perf_counter() - start
        end = time.perf_counter() - start
        if i:
            speeds.append((tokens - 1) / (end - first))
            ttfts.append(first)
    return {"tokens_per_s": statistics.median(speeds), "ttft_s": statistics.median(ttfts)}


def markdown(remote: dict) -> list[str]:
    lines = [
        f"Scaling out: one student, {remote['mode']} mode, {remote['answer_tokens']}-token "
        f"answers, {remote['rounds']} rounds of {remote['repeats']} (medians), the three "
        "taking turns:",
        "",
        "| path | tokens/s | first token (s) |",
        "|---|---|---|",
    ]
    labels = {
        "embedded": "app, embedded engine",
        "remote": "app → llama-server (--llm-url)",
        "llama-server": "openai client → llama-server (no app)",
    }
    for name in TARGETS:
        lines.append(
            f"| {labels[name]} | {remote[name]['tokens_per_s']:.1f} | "
            f"{remote[name]['ttft_s']:.3f} |"
        )
    r = remote["ratios"]
    lines += [
        "",
        f"The HTTP hop: the app on llama-server streams at "
        f"{r['remote_vs_embedded_tokens_per_s']:.2f}× the embedded engine's tokens/s, "
        f"first token {r['remote_vs_embedded_ttft']:.2f}× its time; against llama-server "
        f"without the app, {r['remote_vs_direct_tokens_per_s']:.2f}× the tokens/s and "
        f"{r['remote_vs_direct_ttft']:.2f}× the first-token time.",
    ]
    return lines
