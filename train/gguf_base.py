"""A GGUF as the base of a fine-tuning run: dequantized once into a plain, trainable checkpoint.

transformers reads a GGUF with `gguf_file=` and dequantizes its tensors to float32, but the model
it returns carries a GGUF quantizer that Trainer ("purely quantized"), peft and `save_pretrained`
refuse. Its weights are copied into a plain `LlamaForCausalLM` of the same config, so its logits
are the loaded model's exactly. The tokenizer is read from the GGUF as well, with the
pre-tokenizer llama.cpp will serve with (transformers does not know `smollm`, SmolLM2's, and
would otherwise split digits after a newline differently).

The folder written (atomically) is an ordinary Hugging Face checkpoint, plus `gguf_base.json`:
what it was dequantized from (path, sha256, the GGUF's tensor types).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

RECORD = "gguf_base.json"
HASH_CHUNK_BYTES = 1 << 20


class GGUFBaseError(ValueError):
    """The GGUF cannot be used as a training base (one line for the user)."""


def is_gguf(base: str) -> bool:
    return base.lower().endswith(".gguf")


def gguf_metadata(path: Path) -> dict:
    """The facts the run records: pre-tokenizer, architecture and tensor types of PATH."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as e:
        raise GGUFBaseError(f"cannot read {path} as a GGUF: {e}") from None

    def field(key: str):
        return reader.fields[key].contents() if key in reader.fields else None

    return {
        "architecture": field("general.architecture"),
        "pre_tokenizer": field("tokenizer.ggml.pre"),
        "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors)),
    }


def load_tokenizer(path: Path, pre_tokenizer: str | None = None) -> PreTrainedTokenizerBase:
    """The GGUF's tokenizer as transformers builds it, splitting text as llama.cpp does
    (PRE_TOKENIZER: the GGUF's `tokenizer.ggml.pre`, read from it if not given)."""
    from transformers import AutoTokenizer

    from export.vocab import match_llama_cpp_pre_tokenizer

    if pre_tokenizer is None:
        pre_tokenizer = gguf_metadata(path)["pre_tokenizer"] or ""
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    match_llama_cpp_pre_tokenizer(tokenizer, pre_tokenizer)
    return tokenizer


def load_plain_model(path: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the model transformers loads from PATH, the same weights in a plain LlamaForCausalLM)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)  # what makes Trainer and save_pretrained refuse it
    plain = LlamaForCausalLM(LlamaConfig.from_dict(config))
    plain.load_state_dict(loaded.state_dict())
    return loaded.eval(), plain.eval()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def dequantize(path: Path, out: Path) -> Path:
    """OUT: PATH as a plain float32 checkpoint with its tokenizer and chat template (built once;
    a finished folder is reused when it records the same file)."""
    path = Path(path)
    if not path.is_file():
        raise GGUFBaseError(f"{path} does not exist (model.base names a GGUF file)")
    digest = sha256(path)
    done = out / RECORD
    if done.is_file() and json.loads(done.read_text()).get("sha256") == digest:
        return out
    metadata = gguf_metadata(path)
    if metadata["architecture"] != "llama":
        raise GGUFBaseError(
            f"{path} holds a {metadata['architecture']!r} model: only Llama-architecture GGUFs "
            "can be trained here"
        )
    tokenizer = load_tokenizer(path, metadata["pre_tokenizer"] or "")
    _, plain = load_plain_model(path)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    record = {"gguf": str(path.resolve()), "sha256": digest, "dequantized_to": "F32", **metadata}
    (tmp / RECORD).write_text(json.dumps(record, indent=2))  # written last: the folder is whole
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def dequantized_from(folder: Path) -> dict | None:
    """The record of the GGUF a base folder was dequantized from, if it was."""
    record = Path(folder) / RECORD
    return json.loads(record.read_text()) if record.is_file() else None
