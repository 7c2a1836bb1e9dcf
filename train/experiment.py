"""Controlled experiments: change one thing at a time, train with several seeds, compare.

    python -m train.experiment --grid train/configs/grid-demo.yaml

The grid file names a base run config, the seeds, and the conditions: each condition sets a few
config values (dotted paths, e.g. `data.dedup: false`, `train.learning_rate: 0.003`,
`data.sources.2.max_rows: 50`) on top of the base. Every condition × seed is a cell: trained
(`train.finetune`, in its own process) and evaluated on one held-out set shared by all cells (the
base config's validation split, excluded from every cell's training data), then aggregated as mean
± std over seeds. Finished cells are not redone: the grid resumes where it stopped.

Writes `results.md`, `results.json` and `results.png` into the grid's output folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from train.config import RunConfig, load_config, resolve_path
from train.evaluate import mean_std
from train.heldout import (
    ROUGE_KEYS,
    assistant_loss,
    heldout_conversations,
    mean_per_key,
    rouge_of,
    rouge_scorer,
)
from train.plots import plot_bars
from tutor.files import atomic_output


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    set: dict[str, object] = {}


class Grid(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_config: str
    output_dir: str
    seeds: list[int] = Field(min_length=1)
    common: dict[str, object] = {}  # changes applied to every cell (e.g. fewer evaluations)
    conditions: list[Condition] = Field(min_length=1)
    eval_examples: int = 20
    eval_max_new_tokens: int = 48


def apply_overrides(data: dict, overrides: dict[str, object]) -> dict:
    """A copy of DATA with each dotted path set (list items by index)."""
    data = copy.deepcopy(data)
    for path, value in overrides.items():
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


def write_heldout(base: RunConfig, tokenizer_dir: str, path: Path, limit: int) -> list[list[dict]]:
    """The base config's validation split (at most LIMIT rows): the grid's shared held-out set."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    val = heldout_conversations(
        base, lambda m: len(tokenizer.apply_chat_template(m, tokenize=True)["input_ids"]), limit
    )
    with atomic_output(path) as tmp:
        tmp.write_text("".join(json.dumps({"messages": messages}) + "\n" for messages in val))
    return val


def evaluate_cell(adapter: Path, heldout: list[list[dict]], max_new_tokens: int) -> dict:
    """Loss on the held-out assistant tokens and greedy-decoding ROUGE against the references."""
    from train.eval_models import HFModel
    from tutor.modes import Generation

    model = HFModel(adapter.parent.name, adapter)
    nll, tokens = assistant_loss(model, heldout)
    scorer = rouge_scorer()
    greedy = Generation(temperature=0.0, max_tokens=max_new_tokens)
    scores = [
        rouge_of(scorer, messages[-1]["content"], model.reply(messages[:-1], greedy, 0).text)
        for messages in heldout
    ]
    return {"heldout_loss": nll / tokens, **mean_per_key(scores)}


def cell_config(
    grid: Grid,
    base_data: dict,
    condition: Condition,
    seed: int,
    cell: Path,
    heldout_file: Path,
    base_model: str,
) -> dict:
    """The run config of one cell: the base, the condition's changes, the seed, no export."""
    overrides = {
        "model.base": base_model,
        "model.synthetic": None,
        "export.enabled": False,
        "train.seed": seed,
        "data.exclude": str(heldout_file),
        **grid.common,
        **condition.set,
    }
    config = apply_overrides(base_data, overrides)
    config["output_dir"] = str(cell)
    RunConfig.model_validate(config)  # fail early, with the field's name
    return config


def train_cell(cell: Path, config: dict) -> None:
    """Train one cell in its own process; an interrupted cell resumes from its checkpoint."""
    cell.mkdir(parents=True, exist_ok=True)
    with atomic_output(cell / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run(
        [sys.executable, "-m", "train.finetune", "--config", str(cell / "config.yaml"), "--resume"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"cell {cell.name} failed:\n{result.stderr[-3000:]}")


def aggregate(cells: dict[str, list[dict]]) -> dict[str, dict]:
    """Mean ± std over seeds for each condition."""
    return {
        name: {
            "seeds": len(rows),
            "train_rows": mean_std([r["train_rows"] for r in rows]),
            "heldout_loss": mean_std([r["heldout_loss"] for r in rows]),
            **{k: mean_std([r[k] for r in rows]) for k in ROUGE_KEYS},
        }
        for name, rows in cells.items()
    }


def markdown(summary: dict[str, dict], conditions: list[Condition]) -> str:
    lines = [
        "| condition | changed | data size (train rows) | ROUGE-1 | ROUGE-2 | ROUGE-L | "
        "held-out loss | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    changed = {c.name: ", ".join(f"`{k}={v}`" for k, v in c.set.items()) or "—" for c in conditions}
    for name, s in summary.items():
        lines.append(
            f"| {name} | {changed[name]} | {s['train_rows']['mean']:.0f} | "
            + " | ".join(f"{s[k]['mean']:.4f} ± {s[k]['std']:.4f}" for k in ROUGE_KEYS)
            + f" | {s['heldout_loss']['mean']:.4f} ± {s['heldout_loss']['std']:.4f} | "
            f"{s['seeds']} |"
        )
    return "\n".join(lines) + "\n"


def run_grid(grid: Grid) -> dict[str, dict]:
    """Run (or resume) every cell of GRID and write the comparison."""
    root = resolve_path(grid.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    base_cfg = load_config(resolve_path(grid.base_config))
    base_data = yaml.safe_load(resolve_path(grid.base_config).read_text())
    from train.finetune import base_model_dir

    base_model = base_model_dir(base_cfg, root)  # one base model for every cell
    heldout_file = root / "heldout.jsonl"
    heldout = write_heldout(base_cfg, base_model, heldout_file, grid.eval_examples)
    cells: dict[str, list[dict]] = {}
    jobs = [(c, s) for c in grid.conditions for s in grid.seeds]
    for condition, seed in tqdm(jobs, desc="grid cells"):
        cell = root / "cells" / f"{condition.name}-seed{seed}"
        config = cell_config(grid, base_data, condition, seed, cell, heldout_file, base_model)
        result_file = cell / "result.json"
        saved = cell / "config.yaml"
        if saved.is_file() and yaml.safe_load(saved.read_text()) != config:
            shutil.rmtree(cell)  # the grid file changed this cell: its results no longer apply
        if not result_file.is_file():
            train_cell(cell, config)
            record = json.loads((cell / "run.json").read_text())
            result = {
                "condition": condition.name,
                "seed": seed,
                "train_rows": record["train_rows"],
                "train_seconds": record["final_metrics"]["seconds"],
                **evaluate_cell(cell / "adapter", heldout, grid.eval_max_new_tokens),
            }
            with atomic_output(result_file) as tmp:
                tmp.write_text(json.dumps(result, indent=2))
        cells.setdefault(condition.name, []).append(json.loads(result_file.read_text()))
    summary = aggregate(cells)
    with atomic_output(root / "results.json") as tmp:
        tmp.write_text(
            json.dumps(
                {
                    "grid": grid.model_dump(),
                    "heldout_examples": len(heldout),
                    "summary": summary,
                    "cells": cells,
                },
                indent=2,
            )
        )
    with atomic_output(root / "results.md") as tmp:
        tmp.write_text(markdown(summary, grid.conditions))
    plot_bars(
        {
            name: {"ROUGE-1": s["rouge1"], "ROUGE-2": s["rouge2"], "ROUGE-L": s["rougeL"]}
            for name, s in summary.items()
        },
        root / "results.png",
        title=f"Held-out ROUGE F1 by condition (mean ± std over {len(grid.seeds)} seeds)",
        ylabel="ROUGE F1",
    )
    plot_bars(
        {name: {"held-out loss": s["heldout_loss"]} for name, s in summary.items()},
        root / "results_loss.png",
        title="Held-out loss on assistant tokens",
        ylabel="loss",
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.experiment", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--grid", type=Path, required=True, help="grid file (YAML)")
    args = parser.parse_args(argv)
    try:
        grid = Grid.model_validate(yaml.safe_load(args.grid.read_text()))
    except (OSError, yaml.YAMLError, ValidationError) as e:
        print(f"error: {args.grid}: {e}", file=sys.stderr)
        return 1
    summary = run_grid(grid)
    print(markdown(summary, grid.conditions))
    print(f"wrote {resolve_path(grid.output_dir)}/results.md, results.json, results.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
