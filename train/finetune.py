"""Fine-tune a Llama with LoRA, then export the merged model to GGUF.

    python -m train.finetune --config train/configs/tiny-cpu.yaml [--resume]
    accelerate launch -m train.finetune --config FILE.yaml      # several GPUs

The recipe, in `run`'s five steps: prepare the run folder (with `--resume`, find the newest
complete checkpoint, also after `kill -9`) → set up data (clean, mix, split, report) and model +
LoRA (unsloth on GPU, else transformers + peft) → train with trl's SFTTrainer on pre-tokenized
rows whose labels cover assistant tokens only, checkpoints every `save_steps`, then the adapter
and loss curve → export the GGUF through `export.to_gguf` → write the run record.

Output folder:
    data_report.json, token_lengths.png   what went in, and what was dropped why
    metrics.jsonl                         one line per logged step (train and validation loss)
    checkpoints/checkpoint-N/             resumable state
    adapter/                              the LoRA adapter with its tokenizer and chat template
    loss_curve.png, run.json              the run at a glance; config, versions, data fingerprint
    model-<TYPE>.gguf                     what the app serves
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from train.config import ConfigError, RunConfig, load_config, resolve_path
from train.data import clean, data_report, mix, split, write_report
from train.gguf_base import GGUFBaseError, dequantized_from, dequantize, is_gguf
from train.plots import plot_loss_curve
from tutor.chat_format import LLAMA3_CHAT_TEMPLATE, PAD
from tutor.files import atomic_output

PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "datasets",
    "accelerate",
    "unsloth",
    "llama-cpp-python",
    "gguf",
)


def base_model_dir(cfg: RunConfig, out: Path) -> str:
    """The base model: a Hub id or local path; a GGUF file or a synthetic checkpoint, made once
    into a plain checkpoint in OUT."""
    if cfg.model.base is not None:
        local = resolve_path(cfg.model.base)
        if is_gguf(cfg.model.base):
            return str(dequantize(local, out / "base"))
        return str(local) if local.exists() else cfg.model.base
    from synth import llama as synth_llama

    spec = cfg.model.synthetic
    path = out / "base"
    if not (path / "config.json").is_file():
        shape = synth_llama.llama_3_2_1b_scaled(
            hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.num_hidden_layers,
            num_attention_heads=spec.num_attention_heads,
            num_key_value_heads=spec.num_key_value_heads,
        )
        tokenizer = synth_llama.load_tokenizer(resolve_path(spec.tokenizer))
        tmp = out / "base.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        synth_llama.build_checkpoint(
            tmp, tokenizer, shape, seed=cfg.train.seed, fit_steps=spec.fit_steps
        )
        tmp.rename(path)
    return str(path)


def load_tokenizer(base: str, cfg: RunConfig):
    """The base tokenizer with the chat template training uses (and the GGUF will carry)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = (
        cfg.model.chat_template or tokenizer.chat_template or LLAMA3_CHAT_TEMPLATE
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = PAD if PAD in tokenizer.get_vocab() else tokenizer.eos_token
    return tokenizer


def prepare_data(cfg: RunConfig, tokenizer, out: Path):
    """Clean, mix, split and encode; writes the data report. Returns (train, val, fingerprint)."""
    import datasets

    from train.encode import encode

    def count_tokens(messages):
        return len(tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"])

    kept, reports = clean(cfg.data, count_tokens, cfg.train.seq_len)
    train_rows, val_rows = split(mix(cfg.data, kept), cfg.data.val_fraction)
    report = data_report(reports, train_rows, val_rows)
    write_report(report, reports, out)
    print(
        f"data: {report['train']} train / {report['validation']} validation rows; dropped "
        + ", ".join(
            f"{name}: {dict(r['dropped']) or 'none'}" for name, r in report["sources"].items()
        )
    )
    digest = hashlib.sha256()

    def encoded(rows):
        columns = {"input_ids": [], "labels": []}
        for row in rows:
            ids, labels = encode(tokenizer, row.messages)
            digest.update(json.dumps([ids, labels]).encode())
            columns["input_ids"].append(ids)
            columns["labels"].append(labels)
        return datasets.Dataset.from_dict(columns)

    train_ds, val_ds = encoded(train_rows), encoded(val_rows)
    return train_ds, val_ds, digest.hexdigest()


def newest_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint whose trainer state was fully written (it is written last)."""

    def step(path: Path) -> int:
        return int(path.name.rsplit("-", 1)[-1])

    for path in sorted(folder.glob("checkpoint-*"), key=step, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return path
        except (OSError, ValueError):
            continue  # interrupted while saving
    return None


class MetricsLog:
    """metrics.jsonl: one JSON line per log event; on resume, lines past the checkpoint go."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        lines = []
        if resume_step is not None and path.exists():
            lines = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= resume_step
            ]
        with atomic_output(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in lines))

    def write(self, step: int, values: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
            f.flush()

    def read(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def _callback(log: MetricsLog):
    from transformers import TrainerCallback

    class Metrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                values = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
                log.write(state.global_step, values)

    return Metrics()


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


@dataclass
class RunFolder:
    """Where a run writes, and the checkpoint it resumes from (None: from the beginning)."""

    out: Path
    checkpoints: Path
    resume_from: Path | None
    started: float  # perf_counter at the start


@dataclass
class Setup:
    """The base model with its LoRA adapter, its tokenizer and the encoded data."""

    base: str  # Hub id or local folder
    backend: str  # "unsloth" or "transformers+peft"
    model: Any
    tokenizer: Any
    train_rows: Any  # datasets.Dataset of input_ids and labels
    val_rows: Any
    data_fingerprint: str


@dataclass
class Trained:
    """What training produced."""

    adapter: Path
    metrics: list[dict]  # metrics.jsonl's lines
    eval_loss_final: float
    steps: int


def run(cfg: RunConfig, resume: bool = False, config_text: str = "") -> dict:
    """The whole recipe; returns the run record."""
    folder = prepare_run_folder(cfg, resume)
    setup = set_up_model_and_data(cfg, folder)
    trained = train(cfg, folder, setup)
    gguf = export_gguf(cfg, folder, setup, trained) if cfg.export.enabled else None
    return write_record(cfg, folder, setup, trained, gguf, config_text)


def prepare_run_folder(cfg: RunConfig, resume: bool) -> RunFolder:
    """The output folder, and with RESUME its newest complete checkpoint."""
    started = time.perf_counter()
    out = resolve_path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = out / "checkpoints"
    checkpoint = newest_checkpoint(checkpoints) if resume else None
    if resume and checkpoint is None:
        print(f"no complete checkpoint in {checkpoints}: starting from the beginning")
    return RunFolder(out, checkpoints, checkpoint, started)


def set_up_model_and_data(cfg: RunConfig, folder: RunFolder) -> Setup:
    """Base model, seed, tokenizer, data (with its report) and the LoRA-wrapped model."""
    from transformers import set_seed

    from train.backends import load_peft_model

    base = base_model_dir(cfg, folder.out)
    # Seeded after the base is ready: building a synthetic base draws random numbers, and the
    # adapters' initial weights must not depend on whether it was built now or found built.
    set_seed(cfg.train.seed)
    tokenizer = load_tokenizer(base, cfg)
    train_rows, val_rows, fingerprint = prepare_data(cfg, tokenizer, folder.out)
    model, backend = load_peft_model(base, cfg)
    print(f"backend: {backend}")
    return Setup(base, backend, model, tokenizer, train_rows, val_rows, fingerprint)


def _sft_config(cfg: RunConfig, folder: RunFolder):
    """trl's settings from the config's train section (bf16 on CUDA, else the CPU)."""
    import torch
    from trl import SFTConfig

    t = cfg.train
    cuda = torch.cuda.is_available()
    return SFTConfig(
        output_dir=str(folder.checkpoints),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        logging_steps=t.logging_steps,
        eval_strategy="steps",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.keep_checkpoints,
        seed=t.seed,
        data_seed=t.seed,
        max_length=t.seq_len,
        bf16=cuda,
        use_cpu=not cuda,
        report_to=[],
        dataloader_num_workers=0,
        packing=False,
    )


def train(cfg: RunConfig, folder: RunFolder, setup: Setup) -> Trained:
    """trl's SFTTrainer from the start (after a baseline evaluation) or from the checkpoint;
    then the adapter (with the tokenizer and its chat template) and the loss curve."""
    from trl import SFTTrainer

    checkpoint = folder.resume_from
    log = MetricsLog(
        folder.out / "metrics.jsonl",
        json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
        if checkpoint
        else None,
    )
    trainer = SFTTrainer(
        model=setup.model,
        args=_sft_config(cfg, folder),
        train_dataset=setup.train_rows,
        eval_dataset=setup.val_rows,
        processing_class=setup.tokenizer,
        callbacks=[_callback(log)],
    )
    if checkpoint is None:  # the baseline the run must beat
        log.write(0, {"eval_loss": trainer.evaluate()["eval_loss"]})
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    final_eval = trainer.evaluate()["eval_loss"]

    adapter = folder.out / "adapter"
    shutil.rmtree(adapter, ignore_errors=True)
    trainer.save_model(str(adapter))
    setup.tokenizer.save_pretrained(str(adapter))  # carries the chat template into the export
    metrics = log.read()
    plot_loss_curve(metrics, folder.out / "loss_curve.png")
    return Trained(adapter, metrics, final_eval, trainer.state.global_step)


def export_gguf(cfg: RunConfig, folder: RunFolder, setup: Setup, trained: Trained) -> dict:
    """The base model with the adapter merged, as the GGUF the app serves."""
    from export.to_gguf import export

    base = setup.base if Path(setup.base).exists() else _download(setup.base)
    result = export(
        Path(base),
        folder.out / f"model-{cfg.export.type}.gguf",
        cfg.export.type,
        adapter=trained.adapter,
    )
    if result.fallback:
        print(f"export note: {result.fallback}")
    return {
        "path": str(result.path),
        "type": result.qtype,
        "bytes": result.size_bytes,
        "fallback": result.fallback,
    }


def write_record(
    cfg: RunConfig,
    folder: RunFolder,
    setup: Setup,
    trained: Trained,
    gguf: dict | None,
    config_text: str,
) -> dict:
    """run.json: the config, versions, data fingerprint, losses and the GGUF; returned too."""
    evals = [m["eval_loss"] for m in trained.metrics if "eval_loss" in m]
    record = {
        "config": cfg.model_dump(),
        "config_text": config_text,
        "backend": setup.backend,
        "base_model": setup.base,
        "base_dequantized_from": dequantized_from(Path(setup.base)),  # None: not a GGUF
        "data_fingerprint": setup.data_fingerprint,
        "train_rows": len(setup.train_rows),
        "validation_rows": len(setup.val_rows),
        "versions": _versions(),
        "git_commit": _git_commit(),
        "final_metrics": {
            "eval_loss_start": evals[0],
            "eval_loss_final": trained.eval_loss_final,
            "train_steps": trained.steps,
            "seconds": round(time.perf_counter() - folder.started, 1),
        },
    }
    if gguf is not None:
        record["gguf"] = gguf
    with atomic_output(folder.out / "run.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return record


def _download(repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(
        repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.finetune", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", type=Path, required=True, help="run configuration (YAML)")
    parser.add_argument("--output-dir", help="override the config's output_dir")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint in the output folder",
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.output_dir:
            cfg = cfg.model_copy(update={"output_dir": args.output_dir})
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        record = run(cfg, resume=args.resume, config_text=args.config.read_text())
    except GGUFBaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    final = record["final_metrics"]
    print(
        f"validation loss {final['eval_loss_start']:.4f} → {final['eval_loss_final']:.4f} "
        f"in {final['train_steps']} steps ({final['seconds']} s); "
        f"outputs in {resolve_path(cfg.output_dir)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
