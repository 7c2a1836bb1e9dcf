"""Repetition loops of a real model in each tutor mode: how many answers run to the token limit,
and how many repeat themselves, on real questions, with the modes' settings as shipped and with
a repetition penalty, side by side, over seeds.

    python -m bench.loops --out docs/results/loops [--model PATH.gguf] [--prompts 50]

Questions: the first N of GSM8K's test split (the shared assets). Default model:
SmolLM2-135M-Instruct from its PyPI wheel (tutor.wheel_models).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import Counter
from pathlib import Path

from bench.results import save
from train.assets import assets_dir

LOOP_NGRAM_WORDS = 6  # a run of this many words ...
LOOP_REPEATS = 3  # ... said this many times is a loop
PARALLEL = 8


def is_loop(text: str) -> bool:
    """Whether TEXT says some LOOP_NGRAM_WORDS-word run LOOP_REPEATS times or more."""
    words = re.findall(r"\w+", text.lower())
    grams = Counter(
        tuple(words[i : i + LOOP_NGRAM_WORDS]) for i in range(len(words) - LOOP_NGRAM_WORDS + 1)
    )
    return any(n >= LOOP_REPEATS for n in grams.values())


def questions(n: int) -> list[str]:
    path = assets_dir() / "gsm8k" / "test.jsonl"
    return [json.loads(line)["question"] for line in path.open()][:n]


def run(model: Path, prompts: list[str], seeds: list[int], penalties: list[float]) -> dict:
    """Per penalty (None: as shipped), per mode: shares of answers at the token limit and of
    loops, mean ± std over SEEDS."""
    from concurrent.futures import ThreadPoolExecutor

    from tutor.batching import GenerationStats
    from tutor.llm import TutorLLM
    from tutor.modes import load_modes

    modes = load_modes()
    llm = TutorLLM(model, n_ctx=2048, parallel=PARALLEL, kv_tokens=PARALLEL * 1024)
    results: dict = {}
    for penalty in [None, *penalties]:
        label = "as shipped" if penalty is None else f"repeat_penalty {penalty}"
        results[label] = {}
        for name, mode in modes.items():
            limit_shares, loop_shares = [], []
            for seed in seeds:
                update = {"seed": seed} | ({} if penalty is None else {"repeat_penalty": penalty})
                generation = mode.generation.model_copy(update=update)

                def answer(question: str) -> tuple[str, str]:
                    messages = [
                        {"role": "system", "content": mode.system_prompt},
                        {"role": "user", "content": question},
                    ]
                    stats = GenerationStats()
                    pieces = llm.stream(messages, generation, stats=stats)
                    return "".join(p for p in pieces if isinstance(p, str)), stats.stopped

                with ThreadPoolExecutor(PARALLEL) as pool:
                    answers = list(pool.map(answer, prompts))
                limit_shares.append(sum(s == "max_tokens" for _, s in answers) / len(answers))
                loop_shares.append(sum(is_loop(t) for t, _ in answers) / len(answers))
            results[label][name] = {
                "token_limit": _mean_std(limit_shares),
                "loops": _mean_std(loop_shares),
            }
            print(label, name, results[label][name], flush=True)
    return results


def _mean_std(values: list[float]) -> dict:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "runs": values,
    }


def markdown(report: dict) -> str:
    lines = [
        f"{report['model']}; {report['prompts']} GSM8K test questions; seeds {report['seeds']}; "
        f"a loop: a {LOOP_NGRAM_WORDS}-word run said {LOOP_REPEATS}+ times.",
        "",
        "| settings | mode | answers at the token limit | answers that loop |",
        "|---|---|---|---|",
    ]
    for label, by_mode in report["results"].items():
        for mode, r in by_mode.items():
            limit, loops = r["token_limit"], r["loops"]
            lines.append(
                f"| {label} | {mode} | {limit['mean']:.0%} ± {limit['std']:.0%} "
                f"| {loops['mean']:.0%} ± {loops['std']:.0%} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results/loops"))
    parser.add_argument("--model", type=Path)
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeat-penalty", type=float, nargs="*", default=[1.1])
    args = parser.parse_args(argv)
    if args.model is None:
        from tutor.wheel_models import SMOLLM2_135M, fetch

        args.model = fetch(SMOLLM2_135M)
    report = {
        "model": args.model.name,
        "prompts": args.prompts,
        "seeds": args.seeds,
        "results": run(args.model, questions(args.prompts), args.seeds, args.repeat_penalty),
    }
    save(args.out, "loops", report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
