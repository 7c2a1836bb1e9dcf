"""Plots of runs and comparisons (PNG, written atomically)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from tutor.files import atomic_output  # noqa: E402


def save(fig, path: Path) -> None:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_loss_curve(metrics: list[dict], path: Path) -> None:
    """Training and validation loss against the step."""
    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    val = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    if train:
        ax.plot(*zip(*train), label="train", alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set(xlabel="step", ylabel="loss (assistant tokens)", title="Loss")
    ax.legend()
    fig.tight_layout()
    save(fig, path)


def plot_bars(groups: dict[str, dict[str, dict]], path: Path, title: str,
              ylabel: str = "score") -> None:
    """Grouped bars: one group per metric, one bar per name, error bars = std.

    GROUPS maps a name (model or condition) to {metric: {"mean": m, "std": s}}.
    """
    names = list(groups)
    metrics = list(next(iter(groups.values())))
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(metrics)), 4))
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(metrics))]
        ax.bar(xs, [groups[name][m]["mean"] for m in metrics], width,
               yerr=[groups[name][m]["std"] for m in metrics], capsize=3, label=name)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    save(fig, path)
