"""A class at once: N students ask at the same moment, then follow up; three servers side by side.

Compared on one GGUF, one machine, one run: the app with the one-at-a-time engine
(`--parallel 1`), the app with the batched engine (`--parallel P`), and llama.cpp's own
`llama-server --parallel N` (its best case: a slot per student). Students talk to the app
through `gradio_client` (`/ask`, as the README shows) and to llama-server through its
OpenAI-compatible API with the official `openai` client. Every answer is greedy and exactly
ANSWER_TOKENS long (the benchmark model never ends early).
"""

from __future__ import annotations

import collections
import math
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import openai
from gradio_client import Client, handle_file

from app_process import running_app
from bench import llama_server
from bench.app import greedy_prompts, peak_rss_bytes
from tutor.llm import DEFAULT_KV_TOKENS
from tutor.modes import load_modes

STUDENT_COUNTS = (1, 2, 4, 8, 16)
ANSWER_TOKENS = 200
MODE = "hint"
FOLLOW_UP = "I am not sure I follow. Can you give me a smaller first step?"
STUDENT_TIMEOUT_S = 900.0  # only a hang reaches it
SERVER_CELLS_PER_SLOT = 1024  # llama-server's context per student: two turns fit with room


def question(i: int) -> str:
    """Student I's question: different for everyone, a realistic length."""
    return (f"I am student {i}. A train leaves at {8 + i % 5}:15 and travels {60 + 7 * i} km "
            f"at {40 + 3 * i} km/h. When does it arrive, and how do I set this up?")


@dataclass
class Turn:
    first_token_s: float  # from the student's own start
    end_s: float
    tokens: int


# A student: (i, a ready barrier) -> its two turns, timed from the barrier's release.
Student = Callable[[int, threading.Barrier], list[Turn]]


def app_student(url: str, answer_tokens: int = ANSWER_TOKENS) -> Student:
    """A student of the app: ANSWER_TOKENS is the modes' budget, which answers always fill."""
    def run(i: int, go: threading.Barrier) -> list[Turn]:
        client = Client(url, verbose=False)
        go.wait()
        start = time.perf_counter()
        turns, history = [], []
        for text in (question(i), FOLLOW_UP):
            job = client.submit(text, MODE, history, api_name="/ask")
            first, answer = None, ""
            for update in job:
                if update and first is None:
                    first = time.perf_counter() - start
                answer = update
            job.result()  # raises the app's error, if any
            turns.append(Turn(first, time.perf_counter() - start, answer_tokens))
            history = history + [{"role": "user", "content": text},
                                 {"role": "assistant", "content": answer}]
        return turns
    return run


def server_student(url: str, system_prompt: str) -> Student:
    def run(i: int, go: threading.Barrier) -> list[Turn]:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0,
                               timeout=STUDENT_TIMEOUT_S)
        go.wait()
        start = time.perf_counter()
        turns = []
        messages = [{"role": "system", "content": system_prompt}]
        for text in (question(i), FOLLOW_UP):
            messages.append({"role": "user", "content": text})
            stream = client.chat.completions.create(
                model="tutor", messages=messages, max_tokens=ANSWER_TOKENS, temperature=0.0,
                stream=True, stream_options={"include_usage": True},
                extra_body={"ignore_eos": True})
            first, answer, tokens = None, "", 0
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    if first is None:
                        first = time.perf_counter() - start
                    answer += chunk.choices[0].delta.content
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
            turns.append(Turn(first, time.perf_counter() - start, tokens))
            messages.append({"role": "assistant", "content": answer})
        return turns
    return run


def at_once(student: Student, n: int) -> dict:
    """N students start together; medians, percentiles and the slowest, over their turns."""
    go = threading.Barrier(n)
    results: dict[int, list[Turn]] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = student(i, go)
        except BaseException as e:  # noqa: BLE001 - reported below, with the rest
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(STUDENT_TIMEOUT_S)
    if errors or len(results) < n:
        raise RuntimeError(f"{n - len(results)} of {n} students failed: {errors[:1]}")
    first_tokens, speeds, tokens = [], [], 0
    for turns in results.values():
        sent = 0.0  # the first question goes out at the start, the follow-up after its answer
        for turn in turns:
            first_tokens.append(turn.first_token_s - sent)
            speeds.append((turn.tokens - 1) / (turn.end_s - turn.first_token_s))
            tokens += turn.tokens
            sent = turn.end_s
    slowest = max(turns[-1].end_s for turns in results.values())
    return {
        "students": n,
        "aggregate_tokens_per_s": tokens / slowest,
        "per_student_tokens_per_s": statistics.median(speeds),
        "p50_first_token_s": statistics.median(first_tokens),
        "p95_first_token_s": _percentile(sorted(first_tokens), 95),
        "slowest_student_s": slowest,
        "tokens_per_answer": statistics.median(turn.tokens for turns in results.values()
                                               for turn in turns),
    }


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value at or above which Q % of the values lie."""
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def transcription_stall(url: str, clip: Path) -> dict:
    """While an answer streams, one /transcribe: the longest pause in the stream vs its length."""
    client, other = Client(url, verbose=False), Client(url, verbose=False)
    updates: list[float] = []
    job = client.submit(question(0) + " (during a transcription)", MODE, [], api_name="/ask")
    reader = threading.Thread(target=lambda: updates.extend(time.perf_counter() for _ in job))
    reader.start()
    while len(updates) < 5:  # streaming for sure
        if not reader.is_alive():
            raise RuntimeError("the answer ended before the transcription started")
        time.sleep(0.01)
    start = time.perf_counter()
    other.predict(handle_file(str(clip)), "en", api_name="/transcribe")
    end = time.perf_counter()
    reader.join(STUDENT_TIMEOUT_S)
    gaps = [b - a for a, b in zip(updates, updates[1:]) if b > start and a < end]
    return {"transcription_s": end - start, "longest_stall_s": max(gaps)}


def run(model: Path, whisper: Path, threads: int, parallel: int, clip: Path,
        counts: tuple[int, ...] = STUDENT_COUNTS, one_at_a_time_max: int = max(STUDENT_COUNTS),
        half_parallel: bool = True) -> dict:
    """The concurrency table: a row per server and number of students; the app's memory.

    ONE_AT_A_TIME_MAX caps the students sent to `--parallel 1` (the slowest sweep);
    HALF_PARALLEL adds `--parallel P/2` rows where students outnumber it.
    """
    system_prompt = load_modes()[MODE].system_prompt
    rows: list[dict] = []
    out: dict = {"answer_tokens": ANSWER_TOKENS, "mode": MODE, "parallel": parallel}
    # The default N, a smaller one where students outnumber it, and one at a time.
    configs = [(parallel, counts), (1, tuple(n for n in counts if n <= one_at_a_time_max))]
    if half_parallel:
        configs.insert(1, (max(1, parallel // 2), tuple(n for n in counts if n > parallel // 2)))
    with tempfile.TemporaryDirectory() as tmp:
        prompts = greedy_prompts(Path(tmp) / "prompts", ANSWER_TOKENS)
        for n_parallel, n_students in configs:
            name = f"app --parallel {n_parallel}"
            with running_app("--model", str(model), "--whisper", str(whisper),
                             "--threads", str(threads), "--prompts", str(prompts),
                             "--parallel", str(n_parallel), "--queue-size", "64",
                             log=Path(tmp) / f"app-{n_parallel}.log") as app:
                app_student(app.url)(-1, threading.Barrier(1))  # warm-up, not counted
                for n in n_students:
                    print(f"  {name}: {n} student(s) at once …", flush=True)
                    rows.append(_measured(name, app_student(app.url), n))
                if n_parallel == parallel:
                    out["transcription_stall"] = transcription_stall(app.url, clip)
                    out["app_peak_rss_gb"] = peak_rss_bytes(app.pid) / 1e9
        for n in counts:  # a llama-server per N with --parallel N and room for all: its best case
            print(f"  llama-server --parallel {n}: {n} student(s) at once …", flush=True)
            with llama_server.running(model, n, max(DEFAULT_KV_TOKENS, n * SERVER_CELLS_PER_SLOT),
                                      threads, Path(tmp) / "server.log") as url:
                _warm_server(url, system_prompt, n)
                rows.append(_measured("llama-server --parallel N",
                                      server_student(url, system_prompt), n))
    out["rows"] = rows
    return out


def _measured(server: str, student: Student, n: int) -> dict:
    """A row of the table; a failure is a row too (reported), not the end of the run."""
    try:
        return {"server": server, **at_once(student, n)}
    except RuntimeError as e:
        print(f"    failed: {e}", flush=True)
        return {"server": server, "students": n, "error": str(e)}


def row(results: dict, server: str, students: int) -> dict:
    """The row of SERVER (a name, e.g. "app --parallel 1") for STUDENTS students; a failed or
    missing row reads as NaN in every column, so that its goals show as not measured."""
    found = next((r for r in results["rows"]
                  if r["server"] == server and r["students"] == students), None)
    if found is None or "error" in found:
        return collections.defaultdict(lambda: math.nan)
    return found


def _warm_server(url: str, system_prompt: str, n: int) -> None:
    """Warm slots: every slot has seen the mode prompt once (as llama-server users run it)."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)

    def one(i: int) -> None:
        client.chat.completions.create(
            model="tutor", max_tokens=1, temperature=0.0,
            messages=[{"role": "system", "content": system_prompt},
                      {"role": "user", "content": f"Warm-up {i}."}])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(STUDENT_TIMEOUT_S)






STALL_MARGIN_S = 0.25  # a decode step, an update interval (0.08 s) and the network

# (key, label, target text, check): the goals, each a ratio (or bound) from one run.
GOALS = [
    ("aggregate_8_vs_server", "8 students: aggregate tokens/s ÷ llama-server's", "≥ 0.9",
     lambda v: v >= 0.9),
    ("p95_first_token_8_vs_server", "8 students: p95 first token ÷ llama-server's", "≤ 1",
     lambda v: v <= 1.0),
    ("p95_first_token_8_vs_one_student", "8 students: p95 first token ÷ one student's", "≤ 5",
     lambda v: v <= 5.0),
    ("first_token_1_vs_server", "one student: first token ÷ llama-server's", "≤ 2",
     lambda v: v <= 2.0),
    ("tokens_per_s_1_vs_parallel_1", "one student: tokens/s ÷ the --parallel 1 engine's",
     "≥ 0.97", lambda v: v >= 0.97),
    ("parallel_1_first_token_vs_1", "one student: --parallel 1 first token ÷ batched's",
     "≥ 0.97", lambda v: v >= 0.97),
    ("app_peak_rss_gb", "app peak RSS, default N, Whisper base (GB)", "≤ 2.0",
     lambda v: v <= 2.0),
    ("stall_beyond_transcription_s",
     "longest stream pause during a transcription − its duration (s)",
     f"≤ {STALL_MARGIN_S}", lambda v: v <= STALL_MARGIN_S),
]


def goals(results: dict) -> dict:
    """The goal ratios of one concurrency run."""
    batched = f"app --parallel {results['parallel']}"
    server = "llama-server --parallel N"
    b1, b8 = row(results, batched, 1), row(results, batched, 8)
    s1, s8 = row(results, server, 1), row(results, server, 8)
    p1 = row(results, "app --parallel 1", 1)
    stall = results["transcription_stall"]
    return {
        "aggregate_8_vs_server": b8["aggregate_tokens_per_s"] / s8["aggregate_tokens_per_s"],
        "p95_first_token_8_vs_server": b8["p95_first_token_s"] / s8["p95_first_token_s"],
        "p95_first_token_8_vs_one_student": b8["p95_first_token_s"] / b1["p50_first_token_s"],
        "first_token_1_vs_server": b1["p50_first_token_s"] / s1["p50_first_token_s"],
        "tokens_per_s_1_vs_parallel_1": (b1["per_student_tokens_per_s"]
                                         / p1["per_student_tokens_per_s"]),
        "parallel_1_first_token_vs_1": p1["p50_first_token_s"] / b1["p50_first_token_s"],
        "app_peak_rss_gb": results["app_peak_rss_gb"],
        "stall_beyond_transcription_s": stall["longest_stall_s"] - stall["transcription_s"],
    }
