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
import contextlib
import math
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.harness import running_app
from bench import llama_server
from bench.app import greedy_prompts, peak_rss_bytes
from bench.goals import at_least, at_most
from tutor.defaults import DEFAULT_KV_TOKENS
from tutor.modes import load_modes

STUDENT_COUNTS = (1, 2, 4, 8, 16)
ANSWER_TOKENS = 200
MODE = "hint"
FOLLOW_UP = "I am not sure I follow. Can you give me a smaller first step?"
STUDENT_TIMEOUT_S = 900.0  # only a hang reaches it
SERVER = "llama-server --parallel N"  # the anchor's row name
SERVER_CELLS_PER_SLOT = 1024  # llama-server's context per student: two turns fit with room


def question(i: int) -> str:
    """Student I's question: different for everyone, a realistic length."""
    return (
        f"I am student {i}. A train leaves at {8 + i % 5}:15 and travels {60 + 7 * i} km "
        f"at {40 + 3 * i} km/h. When does it arrive, and how do I set this up?"
    )


@dataclass
class Turn:
    first_token_s: float  # from the student's own start
    end_s: float
    tokens: int


# A student: (i, a ready barrier) -> its two turns, timed from the barrier's release.
Student = Callable[[int, threading.Barrier], list[Turn]]


def app_student(
    url: str,
    answer_tokens: int = ANSWER_TOKENS,
    count_tokens: Callable[[str], int] | None = None,
) -> Student:
    """A student of the app: ANSWER_TOKENS is the modes' budget, which the benchmark model's
    answers always fill; a real model's answers may end sooner, and COUNT_TOKENS counts them."""

    def run(i: int, go: threading.Barrier) -> list[Turn]:
        from gradio_client import Client  # here: `--help` need not wait for it

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
            tokens = count_tokens(answer) if count_tokens else answer_tokens
            turns.append(Turn(first, time.perf_counter() - start, tokens))
            history = history + [
                {"role": "user", "content": text},
                {"role": "assistant", "content": answer},
            ]
        return turns

    return run


def server_student(url: str, system_prompt: str) -> Student:
    def run(i: int, go: threading.Barrier) -> list[Turn]:
        import openai

        client = openai.OpenAI(
            base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=STUDENT_TIMEOUT_S
        )
        go.wait()
        start = time.perf_counter()
        turns = []
        messages = [{"role": "system", "content": system_prompt}]
        for text in (question(i), FOLLOW_UP):
            messages.append({"role": "user", "content": text})
            stream = client.chat.completions.create(
                model="tutor",
                messages=messages,
                max_tokens=ANSWER_TOKENS,
                temperature=0.0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
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


def at_once(student: Student, n: int) -> dict[int, list[Turn]]:
    """N students start together; each one's turns."""
    go = threading.Barrier(n)
    results: dict[int, list[Turn]] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = student(i, go)
        except BaseException as e:  # reported below, with the rest
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(STUDENT_TIMEOUT_S)
    if errors or len(results) < n:
        raise RuntimeError(f"{n - len(results)} of {n} students failed: {errors[:1]}")
    return results


def summary(rounds: list[dict[int, list[Turn]]]) -> dict:
    """A row from one or more rounds of the same class: first tokens and per-student speeds
    pooled over all turns; aggregate throughput and the slowest student, medians of the rounds."""
    first_tokens, speeds, aggregates, slowest, answer_tokens = [], [], [], [], []
    for results in rounds:
        tokens = 0
        for turns in results.values():
            sent = 0.0  # the first question goes out at the start, the follow-up after its answer
            for turn in turns:
                first_tokens.append(turn.first_token_s - sent)
                speeds.append((turn.tokens - 1) / (turn.end_s - turn.first_token_s))
                answer_tokens.append(turn.tokens)
                tokens += turn.tokens
                sent = turn.end_s
        slowest.append(max(turns[-1].end_s for turns in results.values()))
        aggregates.append(tokens / slowest[-1])
    return {
        "students": len(rounds[0]),
        "rounds": len(rounds),
        "aggregate_tokens_per_s": statistics.median(aggregates),
        "per_student_tokens_per_s": statistics.median(speeds),
        "p50_first_token_s": statistics.median(first_tokens),
        "p95_first_token_s": _percentile(sorted(first_tokens), 95),
        "slowest_student_s": statistics.median(slowest),
        "tokens_per_answer": statistics.median(answer_tokens),
    }


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value at or above which Q % of the values lie."""
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def transcription_stall(url: str, clip: Path) -> dict:
    """While an answer streams, one /transcribe: the longest pause in the stream vs its length."""
    from gradio_client import Client, handle_file

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


MIN_FIRST_TOKENS = 8  # a class repeats until each server has this many first-token samples


def rounds_for(students: int) -> int:
    """Rounds of a class of STUDENTS (two turns each): small classes repeat, to pool ≥
    MIN_FIRST_TOKENS first tokens; a lone student's single sample is too noisy to compare."""
    return max(1, math.ceil(MIN_FIRST_TOKENS / (2 * students)))


def run(
    model: Path,
    whisper: Path,
    threads: int,
    parallel: int,
    clip: Path,
    counts: tuple[int, ...] = STUDENT_COUNTS,
    one_at_a_time_max: int = max(STUDENT_COUNTS),
    half_parallel: bool = True,
) -> dict:
    """The concurrency table: a row per server and number of students; the app's memory.

    All apps run for the whole benchmark and llama-server for the class size at hand; each
    round of a class visits every server in turn, starting one further along each round, so
    that no server always goes first or after the same neighbour.
    ONE_AT_A_TIME_MAX caps the students sent to `--parallel 1` (the slowest sweep);
    HALF_PARALLEL adds `--parallel P/2` rows where students outnumber it.
    """
    system_prompt = load_modes()[MODE].system_prompt
    out: dict = {"answer_tokens": ANSWER_TOKENS, "mode": MODE, "parallel": parallel}
    # The default N, a smaller one where students outnumber it, and one at a time.
    configs = {parallel: counts, 1: tuple(n for n in counts if n <= one_at_a_time_max)}
    if half_parallel and parallel > 1:
        configs[parallel // 2] = tuple(n for n in counts if n > parallel // 2)
    samples: dict[tuple[str, int], list] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as apps:
        prompts = greedy_prompts(Path(tmp) / "prompts", ANSWER_TOKENS)
        urls = {}
        for n_parallel in configs:
            app = apps.enter_context(
                running_app(
                    model=model,
                    whisper=whisper,
                    threads=threads,
                    prompts=prompts,
                    parallel=n_parallel,
                    queue_size=64,
                    log=Path(tmp) / f"app-{n_parallel}.log",
                )
            )
            app_student(app.url)(-1, threading.Barrier(1))  # warm-up, not counted
            urls[n_parallel] = app
        for n in counts:  # llama-server --parallel N with room for all: its best case
            with llama_server.running(
                model,
                n,
                max(DEFAULT_KV_TOKENS, n * SERVER_CELLS_PER_SLOT),
                threads,
                Path(tmp) / f"server-{n}.log",
            ) as server_url:
                _warm_server(server_url, system_prompt, n)
                servers = [
                    (f"app --parallel {p}", app_student(urls[p].url))
                    for p, classes in configs.items()
                    if n in classes
                ]
                servers.append((SERVER, server_student(server_url, system_prompt)))
                for r in range(rounds_for(n)):
                    for name, student in servers[r % len(servers) :] + servers[: r % len(servers)]:
                        print(f"  {name}: {n} student(s) at once, round {r + 1} …", flush=True)
                        samples[name, n].append(_measured(student, n))
        out["transcription_stall"] = transcription_stall(urls[parallel].url, clip)
        out["app_peak_rss_gb"] = peak_rss_bytes(urls[parallel].pid) / 1e9
    out["rows"] = [_row(name, n, rounds) for (name, n), rounds in samples.items()]
    return out


def _measured(student: Student, n: int) -> dict[int, list[Turn]] | str:
    """One round of a class; a failure is kept as its message, not the end of the run."""
    try:
        return at_once(student, n)
    except RuntimeError as e:
        print(f"    failed: {e}", flush=True)
        return str(e)


def _row(server: str, students: int, rounds: list) -> dict:
    """The table's row for SERVER and STUDENTS; a row with a failed round reports the failure."""
    failures = [r for r in rounds if isinstance(r, str)]
    if failures:
        return {"server": server, "students": students, "error": failures[0]}
    return {"server": server, **summary(rounds)}


def row(results: dict, server: str, students: int) -> dict:
    """The row of SERVER (a name, e.g. "app --parallel 1") for STUDENTS students; a failed or
    missing row reads as NaN in every column, so that its goals show as not measured."""
    found = next(
        (r for r in results["rows"] if r["server"] == server and r["students"] == students), None
    )
    if found is None or "error" in found:
        return collections.defaultdict(lambda: math.nan)
    return found


def _warm_server(url: str, system_prompt: str, n: int) -> None:
    """Warm slots: every slot has seen the mode prompt once (as llama-server users run it)."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)

    def one(i: int) -> None:
        client.chat.completions.create(
            model="tutor",
            max_tokens=1,
            temperature=0.0,
            messages=[
                {"role": "system", "content": system_prompt},
                {"role": "user", "content": f"Warm-up {i}."},
            ],
        )

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(STUDENT_TIMEOUT_S)


STALL_MARGIN_S = 0.25  # a decode step, an update interval (0.08 s) and the network

# (key, label, goal): the goals, each a ratio (or bound) from one run.
GOALS = [
    ("aggregate_8_vs_server", "8 students: aggregate tokens/s ÷ llama-server's", at_least(0.9)),
    ("p95_first_token_8_vs_server", "8 students: p95 first token ÷ llama-server's", at_most(1.0)),
    (
        "p95_first_token_8_vs_one_student",
        "8 students: p95 first token ÷ one student's",
        at_most(5.0),
    ),
    ("first_token_1_vs_server", "one student: first token ÷ llama-server's", at_most(2.0)),
    (
        "tokens_per_s_1_vs_parallel_1",
        "one student: tokens/s ÷ the --parallel 1 engine's",
        at_least(0.97),
    ),
    (
        "parallel_1_first_token_vs_1",
        "one student: --parallel 1 first token ÷ batched's",
        at_least(0.97),
    ),
    ("app_peak_rss_gb", "app peak RSS, default N, Whisper base (GB)", at_most(2.0)),
    (
        "stall_beyond_transcription_s",
        "longest stream pause during a transcription − its duration (s)",
        at_most(STALL_MARGIN_S),
    ),
]


def goals(results: dict) -> dict:
    """The goal ratios of one concurrency run."""
    batched = f"app --parallel {results['parallel']}"
    server = SERVER
    b1, b8 = row(results, batched, 1), row(results, batched, 8)
    s1, s8 = row(results, server, 1), row(results, server, 8)
    p1 = row(results, "app --parallel 1", 1)
    stall = results["transcription_stall"]
    return {
        "aggregate_8_vs_server": b8["aggregate_tokens_per_s"] / s8["aggregate_tokens_per_s"],
        "p95_first_token_8_vs_server": b8["p95_first_token_s"] / s8["p95_first_token_s"],
        "p95_first_token_8_vs_one_student": b8["p95_first_token_s"] / b1["p50_first_token_s"],
        "first_token_1_vs_server": b1["p50_first_token_s"] / s1["p50_first_token_s"],
        "tokens_per_s_1_vs_parallel_1": (
            b1["per_student_tokens_per_s"] / p1["per_student_tokens_per_s"]
        ),
        "parallel_1_first_token_vs_1": p1["p50_first_token_s"] / b1["p50_first_token_s"],
        "app_peak_rss_gb": results["app_peak_rss_gb"],
        "stall_beyond_transcription_s": stall["longest_stall_s"] - stall["transcription_s"],
    }


def transcription_stalls(model: Path, whisper: Path, threads: int, repeats: int) -> dict:
    """`transcription_stall` alone, REPEATS times, against one app (the default --parallel):
    its row of the goals without the rest of the benchmark (a few minutes instead of 33)."""
    from bench import speech  # here: --help stays light

    clip = speech.clip_near(5.0)[0]
    with tempfile.TemporaryDirectory() as tmp:
        prompts = greedy_prompts(Path(tmp) / "prompts", ANSWER_TOKENS)
        with running_app(
            model=model,
            whisper=whisper,
            threads=threads,
            prompts=prompts,
            log=Path(tmp) / "app.log",
        ) as app:
            runs = [transcription_stall(app.url, clip) for _ in range(repeats)]
    beyond = [r["longest_stall_s"] - r["transcription_s"] for r in runs]
    return {"runs": runs, "median_stall_beyond_transcription_s": statistics.median(beyond)}


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m bench.concurrency",
        description="Only the transcription stall (the whole benchmark: python -m bench --parts "
        "concurrency): while an answer streams, one /transcribe of a 5 s clip; the longest pause "
        "in the stream beyond the transcription's length, REPEATS times.",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    from bench import hardware, models

    llama = models.llama_1b_q4()
    result = transcription_stalls(llama, models.whisper_base(), args.threads, args.repeats)
    result["read_bandwidth_gb_s"] = hardware.ceiling(llama, args.threads)["read_bandwidth_gb_s"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
