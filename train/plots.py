"""Plots of runs and comparisons (PNG, written atomically)."""

from __future__ import annotations

from pathlib import Path

from tutor.files import atomic_output


def _pyplot():
    """matplotlib's pyplot on the file-only backend (imported here: it takes a second)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    return plt


def save(fig, path: Path) -> None:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    _pyplot().close(fig)


def plot_loss_curve(metrics: list[dict], path: Path) -> None:
    """Training and validation loss against the step."""
    fig, ax = _pyplot().subplots(figsize=(7, 4))
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


def plot_bars(
    groups: dict[str, dict[str, dict]], path: Path, title: str, ylabel: str = "score"
) -> None:
    """Grouped bars: one group per metric, one bar per name, error bars = std.

    GROUPS maps a name (model or condition) to {metric: {"mean": m, "std": s}}.
    """
    names = list(groups)
    metrics = list(next(iter(groups.values())))
    width = 0.8 / max(1, len(names))
    fig, ax = _pyplot().subplots(figsize=(max(6, 1.6 * len(metrics)), 4))
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(metrics))]
        ax.bar(
            xs,
            [groups[name][m]["mean"] for m in metrics],
            width,
            yerr=[groups[name][m]["std"] for m in metrics],
            capsize=3,
            label=name,
        )
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    save(fig, path)


def plot_lines(
    panels: dict[str, dict[str, list[tuple[float, float]]]],
    path: Path,
    title: str,
    xlabel: str,
    log_x: bool = True,
) -> None:
    """Side-by-side line charts: PANELS maps a y-axis label to {series name: [(x, y), ...]}.

    LOG_X: a base-2 x axis ticked at the points (sizes); else linear (time series, no markers).
    """
    fig, axes = _pyplot().subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels.items()):
        for name, points in series.items():
            if points:
                ax.plot(*zip(*points), "o-" if log_x else "-", label=name)
        ax.set(xlabel=xlabel, ylabel=ylabel)
        if log_x:
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({x for points in series.values() for x, _ in points}))
            from matplotlib.ticker import ScalarFormatter

            ax.get_xaxis().set_major_formatter(ScalarFormatter())
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)


def plot_token_lengths(lengths: dict[str, list[int]], path: Path) -> None:
    """Histograms of tokens per conversation, one per labelled source (empty ones left out)."""
    fig, ax = _pyplot().subplots(figsize=(7, 4))
    for label, values in lengths.items():
        if values:
            ax.hist(values, bins=30, alpha=0.6, label=label)
    ax.set(
        xlabel="tokens per conversation (chat template applied)",
        ylabel="rows",
        title="Token lengths of the cleaned data",
    )
    ax.legend()
    fig.tight_layout()
    save(fig, path)
