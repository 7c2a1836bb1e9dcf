"""The experiment grid's pieces: overrides by dotted path and aggregation over seeds."""

from __future__ import annotations

import pytest

from train.experiment import Condition, aggregate, apply_overrides, markdown


def test_overrides_by_dotted_path_leave_the_base_untouched():
    base = {
        "data": {"sources": [{"name": "a"}, {"name": "b", "max_rows": 10}], "dedup": True},
        "train": {"learning_rate": 0.01},
    }
    changed = apply_overrides(
        base, {"data.sources.1.max_rows": 50, "data.dedup": False, "lora.r": 32}
    )
    assert changed["data"]["sources"][1]["max_rows"] == 50 and changed["data"]["dedup"] is False
    assert changed["lora"] == {"r": 32} and changed["train"] == base["train"]
    assert base["data"]["sources"][1]["max_rows"] == 10 and base["data"]["dedup"] is True


def test_aggregate_gives_mean_and_std_per_condition():
    rows = [
        {"train_rows": 100, "heldout_loss": loss, "rouge1": r, "rouge2": r / 2, "rougeL": r}
        for loss, r in [(2.0, 0.2), (4.0, 0.4)]
    ]
    summary = aggregate({"baseline": rows})
    assert summary["baseline"]["heldout_loss"]["mean"] == 3.0
    assert summary["baseline"]["rouge1"]["std"] == pytest.approx(0.1414, abs=1e-4)
    table = markdown(summary, [Condition(name="baseline")])
    assert "| baseline | — | 100 | 0.3000 ± 0.1414 |" in table
