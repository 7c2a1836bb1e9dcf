"""The full app through gradio_client: generation speed, voice to first token, peak memory."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from bench.llm import QUESTIONS
from tutor.modes import PROMPTS_DIR

if TYPE_CHECKING:  # gradio_client is imported where used: `--help` need not wait
    from gradio_client import Client


def greedy_prompts(folder: Path, max_tokens: int) -> Path:
    """The shipped modes, greedy and with a fixed answer budget, for comparable timings."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in PROMPTS_DIR.glob("*.yaml"):
        mode = yaml.safe_load(path.read_text())
        mode["generation"].update(temperature=0.0, max_tokens=max_tokens)
        (folder / path.name).write_text(yaml.safe_dump(mode))
    return folder


def _stream(
    client: Client, question: str, mode: str, history: list[dict], start: float
) -> tuple[float, float, str, int]:
    """(time to first non-empty update, end time, final answer, updates) of one /ask."""
    job = client.submit(question, mode, history, api_name="/ask")
    first, answer, updates = None, "", 0
    for update in job:
        if update and first is None:
            first = time.perf_counter() - start
        answer, updates = update, updates + 1
    job.result()
    return first, time.perf_counter() - start, answer, updates


def generation(url: str, count_tokens, repeats: int) -> dict:
    """Tokens per second seen by an API client (streamed updates), step-by-step mode."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    speeds, ttfts = [], []
    for i in range(repeats + 1):
        start = time.perf_counter()
        first, end, answer, _ = _stream(
            client, QUESTIONS[i % 3] + f" (variant {i})", "step_by_step", [], start
        )
        n = count_tokens(answer)
        if i:
            speeds.append((n - 1) / (end - first))
            ttfts.append(first)
    return {"tokens_per_s": statistics.median(speeds), "ttft_s": statistics.median(ttfts)}


def voice_to_first_token(url: str, clip: Path, repeats: int) -> dict:
    """From the end of a recording (upload starts) to the first answer token on the client."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    warm = Client(url, verbose=False)  # another student already asked in this mode
    _stream(warm, "What is a prime number?", "hint", [], time.perf_counter())
    first_q, follow = [], []
    for i in range(repeats + 1):
        start = time.perf_counter()
        question = client.predict(handle_file(str(clip)), "en", api_name="/transcribe")
        first, _, answer, _ = _stream(client, f"{question} ({i})", "hint", [], start)
        history = [
            {"role": "user", "content": f"{question} ({i})"},
            {"role": "assistant", "content": answer},
        ]
        start = time.perf_counter()
        question = client.predict(handle_file(str(clip)), "en", api_name="/transcribe")
        second, _, _, _ = _stream(client, question, "hint", history, start)
        if i:
            first_q.append(first)
            follow.append(second)
    return {
        "first_question_s": statistics.median(first_q),
        "follow_up_s": statistics.median(follow),
        "follow_up_each_s": follow,
    }


def cpu_seconds(pid: int) -> float:
    """CPU time the process (all its threads) has used so far, user and system."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident memory (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc status")
