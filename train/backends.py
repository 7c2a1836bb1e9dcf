"""Model + LoRA for training: unsloth on a CUDA GPU when installed, else transformers + peft.

Both backends take the same config and give a PEFT model that the same trainer trains and that
saves the same adapter files; unsloth is imported only when a GPU is present, since its import
raises without one.
"""

from __future__ import annotations

import importlib.util

import torch

from train.config import RunConfig


def unsloth_usable() -> bool:
    """A CUDA GPU is present and unsloth is installed (requirements-gpu.txt)."""
    return torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None


def load_peft_model(base: str, cfg: RunConfig) -> tuple[torch.nn.Module, str]:
    """The base model with fresh LoRA adapters, and the backend's name."""
    lora = cfg.lora
    # The adapter, in peft's names (unsloth takes the same ones).
    adapter = dict(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias="none",
    )
    if unsloth_usable():
        from unsloth import FastLanguageModel

        model, _ = FastLanguageModel.from_pretrained(
            model_name=base,
            max_seq_length=cfg.train.seq_len,
            dtype=None,
            load_in_4bit=cfg.model.load_in_4bit,
        )
        model = FastLanguageModel.get_peft_model(
            model, **adapter, use_gradient_checkpointing="unsloth", random_state=cfg.train.seed
        )
        return model, "unsloth"

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    cuda = torch.cuda.is_available()
    quantization = None
    if cfg.model.load_in_4bit and cuda:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=torch.bfloat16 if cuda else torch.float32, quantization_config=quantization
    )
    peft_config = LoraConfig(**adapter, task_type="CAUSAL_LM")
    return get_peft_model(model, peft_config), "transformers+peft" + ("" if cuda else " (CPU)")
