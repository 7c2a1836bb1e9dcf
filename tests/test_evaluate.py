"""`python -m train.evaluate` on two tiny fixture models (a GGUF and an HF checkpoint)."""

from __future__ import annotations

import json

import pytest

from train import evaluate


@pytest.fixture
def eval_config(tmp_path):
    rows = [
        {
            "conversations": [
                {"from": "human", "value": f"Explain idea number {i} about {topic}."},
                {
                    "from": "gpt",
                    "value": f"Idea {i}: {topic} works because parts interact in order.",
                },
            ]
        }
        for i, topic in enumerate(
            [
                "fractions",
                "gravity",
                "cells",
                "loops",
                "rivers",
                "atoms",
                "verbs",
                "prisms",
                "tides",
                "votes",
            ]
        )
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"output_dir: {tmp_path}/unused\nmodel: {{base: unused}}\n"
        f"data:\n  sources:\n    - {{name: rows, format: sharegpt, path: {data}}}\n"
        f"  val_fraction: 0.4\n  dedup: false\ntrain: {{seq_len: 256, seed: 0}}\n"
    )
    return config


def test_evaluate_writes_table_json_and_plot(eval_config, tiny_gguf, tiny_llama_dir, tmp_path):
    out = tmp_path / "eval"
    code = evaluate.main(
        [
            "--config",
            str(eval_config),
            "--model",
            f"gguf={tiny_gguf}",
            "--model",
            f"hf={tiny_llama_dir}",
            "--out",
            str(out),
            "--seeds",
            "2",
            "--max-examples",
            "3",
            "--max-problems",
            "3",
            "--max-new-tokens",
            "16",
            "--threads",
            "2",
        ]
    )
    assert code == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert set(report["results"]) == {"gguf", "hf"} and report["meta"]["examples"] == 3
    for name, r in report["results"].items():
        assert r["assistant_tokens"] > 0 and r["loss"] > 0 and r["perplexity"] > 1
        assert 0 <= r["rouge1"]["mean"] <= 1 and r["rouge1"]["std"] >= 0
        assert 0 <= r["hint_leak_rate"]["mean"] <= 1
        assert r["time_to_first_token_s"] > 0
    # The same weights (Q8_0 in llama.cpp vs fp32 in transformers) give about the same loss.
    gguf, hf = report["results"]["gguf"]["loss"], report["results"]["hf"]["loss"]
    assert abs(gguf - hf) < 0.02 * hf
    table = (out / "evaluation.md").read_text()
    assert table.count("\n") == 4 and "| gguf |" in table and "ROUGE-L" in table
    assert (out / "evaluation.png").stat().st_size > 1000


def test_evaluate_rejects_a_missing_model(eval_config, tmp_path, capsys):
    assert evaluate.main(["--config", str(eval_config), "--model", f"x={tmp_path}/nope.gguf"]) == 1
    assert "expected NAME=PATH" in capsys.readouterr().err
