"""The fine-tuning run's configuration: one YAML file, validated, with clear errors.

Paths may start with `assets:`, meaning the shared real-data folder (`TUTOR_ASSETS`, default
`../shared/assets`); other relative paths are relative to the working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from train.assets import assets_dir


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Source(Strict):
    """One dataset: from the Hub (`hub`) or a local JSON/JSONL/Parquet file (`path`)."""

    name: str
    format: Literal["sharegpt", "chatdoctor"]
    path: str | None = None
    hub: str | None = None
    split: str = "train"
    max_rows: int | None = Field(None, ge=1)  # cap after cleaning
    ratio: float | None = Field(None, gt=0)  # relative share of the mix
    min_score: float | None = None  # FineTome quality score threshold
    system_prompt: str | None = None  # ChatDoctor rows: the domain system prompt

    @model_validator(mode="after")
    def _one_location(self) -> Source:
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of `path` (local file) or `hub` (dataset id)")
        return self


class DataConfig(Strict):
    sources: list[Source] = Field(min_length=1)
    val_fraction: float = Field(0.05, gt=0, lt=1)
    dedup: bool = True
    near_duplicate_threshold: float = Field(0.85, gt=0, le=1)  # Jaccard similarity, MinHash
    seed: int = 0  # mixing and the train/validation split (kept apart from the training seed)
    exclude: str | None = None  # JSONL of {"messages": [...]} never to train on (a held-out set)


class SyntheticModel(Strict):
    """A seeded random Llama built on the spot (offline demos and tests)."""

    tokenizer: str
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    # Steps of full-parameter fitting to English text first, so that the base model writes
    # common words (ROUGE then has something to compare) rather than random tokens.
    fit_steps: int = Field(0, ge=0)


class ModelConfig(Strict):
    base: str | None = None  # Hub id, local checkpoint, or a .gguf file (dequantized to train)
    synthetic: SyntheticModel | None = None
    load_in_4bit: bool = False  # GPU only (bitsandbytes / unsloth)
    chat_template: str | None = None  # override; default: the base tokenizer's, else Llama 3's

    @model_validator(mode="after")
    def _one_model(self) -> ModelConfig:
        if (self.base is None) == (self.synthetic is None):
            raise ValueError("give exactly one of `base` (model id or path) or `synthetic`")
        return self


class LoraConfig(Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]


class TrainConfig(Strict):
    learning_rate: float = Field(2e-4, gt=0)
    warmup_steps: int = Field(0, ge=0)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(2, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1  # > 0 overrides epochs
    seq_len: int = Field(2048, ge=16)
    eval_steps: int = Field(50, ge=1)
    save_steps: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    logging_steps: int = Field(1, ge=1)
    seed: int = 0


class ExportConfig(Strict):
    enabled: bool = True
    type: str = "Q4_K_M"


class RunConfig(Strict):
    output_dir: str
    model: ModelConfig
    data: DataConfig
    lora: LoraConfig = LoraConfig()
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()


class ConfigError(ValueError):
    """The config file is missing, unreadable or invalid."""


def resolve_path(value: str) -> Path:
    """`assets:REL` → inside the shared assets folder; anything else as given."""
    if value.startswith("assets:"):
        return assets_dir() / value.removeprefix("assets:")
    return Path(value).expanduser()


def load_config(path: Path) -> RunConfig:
    """The validated config in PATH."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or '(top)'}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
