"""Compare models on a held-out split: loss, ROUGE over seeds, speed, and tutor-mode checks.

    python -m train.evaluate --config train/configs/tiny-cpu.yaml \\
        --model base=runs/tiny-cpu/base --model tuned=runs/tiny-cpu/model-Q8_0.gguf --out runs/eval

A model is `NAME=PATH`: a `.gguf` file (through llama.cpp, as the app runs it), a Hugging Face
checkpoint, or a LoRA adapter folder. The held-out split is the config's validation split (same
sources, cleaning and seed as training). Writes `evaluation.md` (table), `evaluation.json`, and
`evaluation.png` (bars with error bars: standard deviation over seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from tqdm import tqdm

from train.config import ConfigError, load_config
from train.heldout import (
    ROUGE_KEYS,
    assistant_loss,
    heldout_conversations,
    mean_per_key,
    rouge_of,
    rouge_scorer,
)
from train.mode_checks import has_ordered_steps, leaks_answer, load_problems
from train.plots import plot_bars
from tutor.files import atomic_output
from tutor.modes import Generation, load_modes


def held_out(config_path: Path, count_tokens, limit: int) -> list[list[dict]]:
    """The validation conversations of a training config (at most LIMIT)."""
    return heldout_conversations(load_config(config_path), count_tokens, limit)


def mean_std(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values) if values else math.nan,
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def evaluate_model(
    model,
    conversations: list[list[dict]],
    seeds: list[int],
    generation: Generation,
    problems: list[dict],
    modes,
) -> dict:
    """All metrics of one model."""
    nll, tokens = assistant_loss(
        model, tqdm(conversations, desc=f"{model.name}: loss", leave=False)
    )
    scorer = rouge_scorer()
    per_seed = {key: [] for key in ROUGE_KEYS}
    lengths, ttfts, speeds = [], [], []
    for seed in seeds:
        scores = []
        for messages in tqdm(conversations, desc=f"{model.name}: seed {seed}", leave=False):
            reply = model.reply(messages[:-1], generation, seed)
            scores.append(rouge_of(scorer, messages[-1]["content"], reply.text))
            lengths.append(len(reply.text.split()))
            ttfts.append(reply.time_to_first_token_s)
            if reply.tokens_per_s:
                speeds.append(reply.tokens_per_s)
        for key, mean in mean_per_key(scores).items():
            per_seed[key].append(mean)
    checks = {
        "hint": lambda reply, p: leaks_answer(reply, str(p["answer"])),
        "step_by_step": lambda reply, p: has_ordered_steps(reply),
    }
    rates = {name: [] for name in checks}
    for seed in seeds:
        outcomes = {name: [] for name in checks}
        for problem in tqdm(problems, desc=f"{model.name}: modes, seed {seed}", leave=False):
            for name, check in checks.items():
                mode = modes[name]
                settings = mode.generation.model_copy(
                    update={"max_tokens": min(mode.generation.max_tokens, generation.max_tokens)}
                )
                messages = [
                    {"role": "system", "content": mode.system_prompt},
                    {"role": "user", "content": problem["question"]},
                ]
                outcomes[name].append(check(model.reply(messages, settings, seed).text, problem))
        for name in checks:
            if outcomes[name]:
                rates[name].append(statistics.fmean(outcomes[name]))
    loss = nll / tokens if tokens else math.nan
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if tokens else math.nan,
        "assistant_tokens": int(tokens),
        **{key: mean_std(per_seed[key]) for key in ROUGE_KEYS},
        "answer_words": statistics.fmean(lengths) if lengths else 0.0,
        "time_to_first_token_s": statistics.median(ttfts) if ttfts else math.nan,
        "tokens_per_s": statistics.median(speeds) if speeds else math.nan,
        "hint_leak_rate": mean_std(rates["hint"]),
        "ordered_steps_rate": mean_std(rates["step_by_step"]),
    }


def _pm(stat: dict) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def markdown_table(results: dict[str, dict]) -> str:
    header = (
        "| model | loss | perplexity | ROUGE-1 | ROUGE-2 | ROUGE-L | answer words | "
        "first token (s) | tokens/s | hint leak | ordered steps |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['loss']:.3f} | {r['perplexity']:.1f} | {_pm(r['rouge1'])} | "
            f"{_pm(r['rouge2'])} | {_pm(r['rougeL'])} | {r['answer_words']:.1f} | "
            f"{r['time_to_first_token_s']:.3f} | {r['tokens_per_s']:.1f} | "
            f"{_pm(r['hint_leak_rate'])} | {_pm(r['ordered_steps_rate'])} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(results: dict[str, dict], meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / "evaluation.json") as tmp:
        tmp.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    with atomic_output(out / "evaluation.md") as tmp:
        tmp.write_text(markdown_table(results))
    plot_bars(
        {
            name: {
                "ROUGE-1": r["rouge1"],
                "ROUGE-2": r["rouge2"],
                "ROUGE-L": r["rougeL"],
                "hint leak": r["hint_leak_rate"],
                "ordered steps": r["ordered_steps_rate"],
            }
            for name, r in results.items()
        },
        out / "evaluation.png",
        title="Held-out ROUGE F1 and tutor-mode checks "
        f"(mean ± std over {len(meta['seeds'])} seeds)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.evaluate", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--config",
        type=Path,
        required=True,
        help="training config whose validation split is the held-out set",
    )
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a .gguf file, an HF checkpoint or an adapter folder (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/evaluation"))
    parser.add_argument("--seeds", type=int, default=3, help="generation seeds to average over")
    parser.add_argument("--max-examples", type=int, default=20)
    parser.add_argument("--max-problems", type=int, default=20, help="tutor-mode problems used")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    specs = []
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or not Path(path).exists():
            print(
                f"error: --model {spec!r}: expected NAME=PATH to an existing file or folder",
                file=sys.stderr,
            )
            return 1
        specs.append((name, Path(path)))
    from train.eval_models import load_model  # torch, transformers, llama.cpp: not for --help

    try:
        models = [load_model(name, path, threads=args.threads) for name, path in specs]
        conversations = held_out(args.config, models[0].count_tokens, args.max_examples)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    seeds = list(range(args.seeds))
    generation = Generation(temperature=args.temperature, max_tokens=args.max_new_tokens)
    problems = load_problems()[: args.max_problems]
    modes = load_modes()
    results = {
        m.name: evaluate_model(m, conversations, seeds, generation, problems, modes) for m in models
    }
    meta = {
        "config": str(args.config),
        "models": {n: str(p) for n, p in specs},
        "seeds": seeds,
        "examples": len(conversations),
        "problems": len(problems),
        "temperature": args.temperature,
        "max_new_tokens": args.max_new_tokens,
    }
    write_outputs(results, meta, args.out)
    print(markdown_table(results))
    print(f"wrote {args.out}/evaluation.md, evaluation.json, evaluation.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
