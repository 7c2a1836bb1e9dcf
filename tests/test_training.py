"""Fine-tuning: data cleaning, assistant-only labels, end-to-end run, resume after kill -9."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from train.backends import unsloth_usable
from train.config import ConfigError, DataConfig, Source, load_config
from train.data import clean, data_report, from_sharegpt, mix, split
from train.encode import IGNORE, encode
from tutor.llm import TutorLLM
from tutor.modes import Generation

ROOT = Path(__file__).parents[1]
TINY_CONFIG = ROOT / "train" / "configs" / "tiny-cpu.yaml"
# The tests run tiny-cpu.yaml shorter: its plumbing (fitting the base, LoRA, evaluation,
# checkpoints every 10 steps, resume, export) in half the steps.
SHORTER = {"train": {"max_steps": 20}, "model": {"synthetic": {"fit_steps": 50}}}


@pytest.fixture(scope="module")
def finetome_rows(assets) -> list[dict]:
    return [json.loads(line) for line in (assets / "finetome" / "finetome50.jsonl").open()]


def test_only_assistant_tokens_are_trained(finetome_rows, llama3_tokenizer):
    """A real system turn and three real user/assistant exchanges, chained into one conversation."""
    with_system = [r for r in finetome_rows if r["conversations"][0]["from"] == "system"]
    messages = from_sharegpt(with_system[0])
    for row in with_system[1:3]:
        messages += from_sharegpt(row)[1:]
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3
    ids, labels = encode(llama3_tokenizer, messages)
    assert len(ids) == len(labels)

    trained = llama3_tokenizer.decode([i for i, lab in zip(ids, labels) if lab != IGNORE])
    expected = "".join(
        m["content"].strip() + "<|eot_id|>" for m in messages if m["role"] == "assistant"
    )
    assert trained == expected  # every assistant token, its end-of-turn included, and nothing else
    ignored = llama3_tokenizer.decode([i for i, lab in zip(ids, labels) if lab == IGNORE])
    for m in messages:
        if m["role"] != "assistant":
            assert m["content"].strip() in ignored
    assert all(lab in (IGNORE, i) for i, lab in zip(ids, labels))


def test_malformed_rows_are_counted_per_reason(tmp_path):
    good = {
        "conversations": [
            {"from": "human", "value": "What is 2 + 2?"},
            {"from": "gpt", "value": "It is 4, because two pairs make four."},
        ],
        "score": 4.5,
    }

    def conv(*turns, score=4.5):
        return {"conversations": [{"from": f, "value": v} for f, v in turns], "score": score}

    rows = [
        good,
        {"source": "x"},  # missing_fields
        {"conversations": [{"from": "human"}]},  # missing_fields
        conv(("narrator", "Once"), ("gpt", "upon")),  # unknown_role
        conv(("human", "Hi"), ("gpt", "   ")),  # empty_turn
        conv(("gpt", "Hello"), ("human", "Hi")),  # bad_role_order
        conv(("human", "Hi"), ("human", "Again?"), ("gpt", "Yes")),  # bad_role_order
        conv(("human", "Hi"), ("gpt", "Hello"), ("human", "Bye")),  # not_ending_on_assistant
        conv(("human", "Is this low quality?"), ("gpt", "Probably."), score=2.0),  # below_score
        good,  # duplicate
        conv(("human", "What is 2 + 2 ?"), ("gpt", "It is 4 because two pairs make four")),
        conv(("human", "Tell me everything. " * 200), ("gpt", "Too long to train on.")),
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    cfg = DataConfig(
        sources=[Source(name="messy", format="sharegpt", path=str(path), min_score=3.0)]
    )
    kept, reports = clean(
        cfg, lambda messages: sum(len(m["content"]) for m in messages) // 4, max_tokens=200
    )
    report = reports["messy"]
    assert report.read == len(rows) + 1 and report.kept == len(kept["messy"]) == 1
    assert dict(report.dropped) == {
        "unparseable": 1,
        "missing_fields": 2,
        "unknown_role": 1,
        "empty_turn": 1,
        "bad_role_order": 2,
        "not_ending_on_assistant": 1,
        "below_score": 1,
        "duplicate": 1,
        "near_duplicate": 1,
        "over_token_budget": 1,
    }


def test_a_source_that_contributes_nothing_is_a_warning_in_the_report(tmp_path, caplog):
    def rows(n: int, words: int) -> Path:
        path = tmp_path / f"rows-{n}-{words}.jsonl"
        path.write_text(
            "\n".join(
                json.dumps(
                    {
                        "conversations": [
                            {"from": "human", "value": f"Question {i}: " + "why " * words},
                            {"from": "gpt", "value": f"Answer {i}."},
                        ]
                    }
                )
                for i in range(n)
            )
        )
        return path

    cfg = DataConfig(
        sources=[
            Source(name="short", format="sharegpt", path=str(rows(40, 3))),
            Source(name="too-long", format="sharegpt", path=str(rows(3, 500))),
            Source(name="capped", format="sharegpt", path=str(rows(30, 4)), max_rows=5),
        ],
        dedup=False,
    )
    kept, reports = clean(
        cfg, lambda messages: sum(len(m["content"]) for m in messages) // 4, max_tokens=200
    )
    train, val = split(mix(cfg, kept), 0.1)
    report = data_report(reports, train, val)
    sources = report["sources"]
    assert sources["capped"]["used"] == 5 and sources["capped"]["kept"] == 30  # used, not read
    assert sources["too-long"]["used"] == 0
    assert report["warnings"] == [
        "source 'too-long' contributes nothing: 3 rows read, none used (3 over_token_budget)"
    ]
    assert report["warnings"][0] in caplog.text


def test_chatdoctor_rows_become_system_user_assistant(assets):
    source = Source(
        name="doc",
        format="chatdoctor",
        path="assets:chatdoctor/genmedgpt5k.json",
        system_prompt="You are a clinical tutor.",
    )
    kept, reports = clean(DataConfig(sources=[source], dedup=False), lambda m: 10, 100)
    first = kept["doc"][0].messages
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert first[0]["content"] == "You are a clinical tutor." and reports["doc"].read == 5452


def test_bad_config_gives_a_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "output_dir: x\nmodel: {base: m}\ndata: {sources: []}\n"
        "train: {learning_rate: -1, bacth_size: 2}\n"
    )
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "data.sources" in message and "train.learning_rate" in message
    assert "train.bacth_size: Extra inputs are not permitted" in message


def test_unsloth_is_chosen_only_with_a_gpu_and_the_package(monkeypatch):
    """Selection logic (this machine has neither, so the end-to-end run covers the other path)."""
    from train import backends

    for cuda, installed, expected in [
        (True, True, True),
        (True, False, False),
        (False, True, False),
    ]:
        monkeypatch.setattr(backends.torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(
            backends.importlib.util,
            "find_spec",
            lambda name, installed=installed: object() if installed else None,
        )
        assert unsloth_usable() is expected


# Only a hang reaches it: the shorter tiny run takes ~1 min on a quiet machine, and many times that
# beside other jobs on 2 cores (pytest's own 600 s per test would cut a slow run short).
HANG_GUARD_S = 3000


def _shorter_config(folder: Path) -> Path:
    """tiny-cpu.yaml with SHORTER's settings, written into FOLDER."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    for section, values in SHORTER.items():
        for key, value in values.items():
            if isinstance(value, dict):
                config[section][key].update(value)
            else:
                config[section][key] = value
    path = folder / "tiny-cpu-shorter.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _finetune(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "train.finetune",
            "--config",
            str(_shorter_config(out.parent)),
            "--output-dir",
            str(out),
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def tiny_run(assets, tmp_path_factory) -> Path:
    """The tiny CPU config, run end to end once, uninterrupted."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    proc = _finetune(out)
    _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.timeout(2 * HANG_GUARD_S)
def test_tiny_config_runs_end_to_end_and_the_app_serves_it(tiny_run):
    record = json.loads((tiny_run / "run.json").read_text())
    final = record["final_metrics"]
    assert final["eval_loss_final"] < final["eval_loss_start"]
    assert record["backend"].startswith("transformers+peft") and record["git_commit"]
    assert {"torch", "transformers", "peft", "trl"} <= set(record["versions"])
    report = json.loads((tiny_run / "data_report.json").read_text())
    assert set(report["train_by_source"]) >= {"finetome", "chatdoctor"}
    for name in ("loss_curve.png", "token_lengths.png", "metrics.jsonl"):
        assert (tiny_run / name).stat().st_size > 0
    # The GGUF carries the training chat template; the app's engine loads it and answers.
    llm = TutorLLM(Path(record["gguf"]["path"]), n_ctx=512, n_threads=2)
    assert llm.has_own_template
    answer = llm.answer(
        [
            {"role": "system", "content": "You are a tutor."},
            {"role": "user", "content": "What causes a fever?"},
        ],
        Generation(temperature=0.0, max_tokens=16),
    )
    assert llm.stats.generated_tokens > 0 and isinstance(answer, str)
    assert llm.stats.prompt.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>"
    )


@pytest.mark.slow
@pytest.mark.timeout(3 * HANG_GUARD_S)
def test_resume_after_kill_reaches_the_same_state(tiny_run, tmp_path):
    out = tmp_path / "killed"
    # The same config builds the same synthetic base: take the finished run's, not fit it again.
    shutil.copytree(tiny_run / "base", out / "base")
    proc = _finetune(out)
    first_checkpoint = out / "checkpoints" / "checkpoint-10" / "trainer_state.json"
    deadline = time.monotonic() + HANG_GUARD_S
    while not first_checkpoint.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "adapter").exists()  # it really died before the end

    resumed = _finetune(out, "--resume")
    _, err = resumed.communicate(timeout=HANG_GUARD_S)
    assert resumed.returncode == 0, err[-3000:]

    expected = load_file(tiny_run / "adapter" / "adapter_model.safetensors")
    got = load_file(out / "adapter" / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)

    def losses(run: Path) -> list[tuple]:
        return [
            (m["step"], round(m.get("loss", m.get("eval_loss")), 4))
            for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "loss" in m or "eval_loss" in m
        ]

    assert losses(out) == losses(tiny_run)


def test_local_parquet_and_json_sources_read_alike(finetome_rows, tmp_path):
    import pandas as pd

    parquet = tmp_path / "rows.parquet"
    pd.DataFrame(finetome_rows).to_parquet(parquet)
    counts = {}
    for name, path in [("parquet", parquet), ("jsonl", "assets:finetome/finetome50.jsonl")]:
        source = Source(name=name, format="sharegpt", path=str(path))
        kept, _ = clean(DataConfig(sources=[source], dedup=False), lambda m: 1, 10)
        counts[name] = [e.messages for e in kept[name]]
    assert counts["parquet"] == counts["jsonl"] and len(counts["jsonl"]) == 50
