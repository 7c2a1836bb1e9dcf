"""Hugging Face Llama checkpoint (+ optional LoRA adapter) → one GGUF file for llama.cpp.

    python -m export.to_gguf SRC_DIR OUT.gguf --type Q4_K_M [--adapter ADAPTER_DIR]

Works offline with no llama.cpp checkout: tensors and metadata are written with the `gguf`
package's writer and tensor-name maps, quantized types go through llama-cpp-python's own
`llama_model_quantize`. The output appears only when complete (temporary file, then rename).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import gguf
import numpy as np
from tqdm import tqdm

from export.quiet import quiet_logger
from tutor.errors import first_line
from tutor.files import atomic_output

if TYPE_CHECKING:  # torch and transformers are imported where used: `--help` need not wait
    import torch

SUPPORTED_MODEL_TYPES = ("llama",)
# Types the gguf writer produces directly; everything else is a llama.cpp quantization.
WRITER_TYPES = {
    "F32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "F16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "BF16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
}


# Rough sizes of llama.cpp types, for the progress bar's total.
APPROX_BITS_PER_WEIGHT = {
    "Q8_0": 8.5,
    "Q6_K": 6.6,
    "Q5_K_M": 5.7,
    "Q5_K_S": 5.5,
    "Q4_K_M": 4.9,
    "Q4_K_S": 4.6,
    "Q4_0": 4.5,
    "Q3_K_M": 3.9,
    "Q2_K": 3.0,
}


class ExportError(Exception):
    """A problem with the user's input, reported as one line."""


# Weights per K-quant super-block (llama.cpp's QK_K): a matrix whose rows are not a multiple of
# it cannot take a K-quant, and llama.cpp quantizes it to a fallback type instead.
K_QUANT_BLOCK = 256


@dataclass(frozen=True)
class ExportResult:
    path: Path
    qtype: str
    size_bytes: int
    seconds: float
    fallback: str | None = None  # which matrices llama.cpp could not give QTYPE, and why


def k_quant_fallback(path: Path, qtype: str) -> str | None:
    """A sentence on the weight matrices of the GGUF at PATH that llama.cpp, asked for the
    K-quant QTYPE, stored in another type since their rows do not fit its block; None if all fit.
    Read from the file written, not predicted."""
    if "_K" not in qtype:
        return None
    reader = gguf.GGUFReader(path)
    matrices = [t for t in reader.tensors if len(t.shape) == 2]
    odd = [t for t in matrices if int(t.shape[0]) % K_QUANT_BLOCK]  # shape[0]: row length
    if not odd:
        return None
    types = Counter(t.tensor_type.name for t in odd)
    widths = sorted({int(t.shape[0]) for t in odd})
    return (
        f"{len(odd)} of {len(matrices)} weight matrices are stored as "
        + " and ".join(f"{n} {name}" for name, n in types.most_common())
        + f" rather than {qtype}'s K-quants: their rows ({', '.join(map(str, widths))} wide) "
        f"are not a multiple of {K_QUANT_BLOCK}, which K-quants need, so llama.cpp fell back"
    )


def quantization_types() -> dict[str, int]:
    """All output types: the writer's own plus every llama.cpp `LLAMA_FTYPE_MOSTLY_*`."""
    import llama_cpp

    types = {name: int(ftype) for name, (ftype, _) in WRITER_TYPES.items()}
    for attr in dir(llama_cpp):
        if attr.startswith("LLAMA_FTYPE_MOSTLY_"):
            name = attr.removeprefix("LLAMA_FTYPE_MOSTLY_")
            types.setdefault(name, int(getattr(llama_cpp, attr)))
    return types


def _read_config(src: Path) -> dict:
    if not src.is_dir():
        raise ExportError(f"{src} is not a directory (expected a Hugging Face checkpoint)")
    try:
        config = json.loads((src / "config.json").read_text())
    except FileNotFoundError:
        raise ExportError(f"{src} has no config.json: not a Hugging Face checkpoint") from None
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read {src / 'config.json'}: {e}") from None
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ExportError(
            f"unsupported architecture {model_type!r} "
            f"({', '.join(config.get('architectures') or [])}): "
            f"only Llama-family checkpoints (model_type 'llama') can be exported"
        )
    return config


def _load_model(src: Path, adapter: Path | None) -> torch.nn.Module:
    """Load the checkpoint in its own dtype and merge the LoRA adapter into it."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(src, dtype="auto", low_cpu_mem_usage=True)
    except Exception as e:  # transformers/safetensors raise many types for unreadable weights
        raise ExportError(f"cannot load the weights in {src}: {first_line(e)}") from None
    if adapter is not None:
        from peft import PeftModel

        if not (adapter / "adapter_config.json").is_file():
            raise ExportError(f"{adapter} has no adapter_config.json: not a PEFT adapter")
        try:
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        except Exception as e:
            raise ExportError(f"cannot merge the adapter in {adapter}: {first_line(e)}") from None
    return model.eval()


def _rope_parameters(config: dict) -> dict:
    """RoPE settings across transformers versions (`rope_parameters` in 5.x, `rope_scaling`
    before)."""
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    rope["rope_type"] = rope.get("rope_type", rope.get("type", "default"))
    return rope


def llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """Per-frequency divisors of Llama 3 RoPE scaling, as llama.cpp's `rope_freqs` tensor wants.

    Computed in float32 tensor arithmetic, as transformers and llama.cpp's own converter do,
    so that the factors agree with both to the bit.
    """
    import torch

    base = rope["rope_theta"]
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(float(1 / ((1 - smooth) / factor + smooth)))
    return np.asarray(factors, dtype=np.float32)


def _add_hparams(writer: gguf.GGUFWriter, config: dict, name: str, file_type: int) -> None:
    n_head = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    writer.add_type("model")
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads") or n_head)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-5))
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    rope = _rope_parameters(config)
    writer.add_rope_freq_base(rope["rope_theta"])
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    elif rope["rope_type"] not in ("default", "llama3"):
        raise ExportError(
            f"unsupported RoPE scaling {rope['rope_type']!r} (supported: default, linear, llama3)"
        )


def _permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF stores Q/K rows as two halves per head (rotate_half); llama.cpp wants pairs
    interleaved."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _gguf_tensors(model: torch.nn.Module, config: dict):
    """Yield (gguf name, tensor) for every weight llama.cpp needs, in llama.cpp's layout."""
    import torch

    n_layers = config["num_hidden_layers"]
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    tied = config.get("tie_word_embeddings", False)
    rope = _rope_parameters(config)
    if rope["rope_type"] == "llama3":
        head_dim = config.get("head_dim") or config["hidden_size"] // n_head
        factors = torch.from_numpy(llama3_rope_factors(rope, head_dim))
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            tensor = _permute_qk(tensor, n_head)
        elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            tensor = _permute_qk(tensor, n_kv)
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"no GGUF name for tensor {hf_name!r}")
        yield name, tensor


def _to_numpy(tensor: torch.Tensor, qtype: gguf.GGMLQuantizationType):
    """Convert one tensor to the writer's type; 1-D tensors (norms, rope) stay F32 as llama.cpp
    expects."""
    import torch

    tensor = tensor.detach()
    if tensor.ndim <= 1 or qtype == gguf.GGMLQuantizationType.F32:
        return tensor.float().numpy(), None
    if qtype == gguf.GGMLQuantizationType.F16:
        return tensor.half().numpy(), None
    # BF16 has no numpy dtype: write the raw 16-bit patterns.
    return tensor.bfloat16().view(torch.int16).numpy().view(np.uint16), qtype


def _lossless_type(model: torch.nn.Module) -> str:
    """The writer type that holds the checkpoint's weights without loss."""
    import torch

    dtype = next(model.parameters()).dtype
    return {torch.bfloat16: "BF16", torch.float16: "F16"}.get(dtype, "F32")


def write_gguf(
    model: torch.nn.Module, config: dict, tokenizer_dir: Path, path: Path, qtype: str, name: str
) -> None:
    """Write model + tokenizer + chat template as a GGUF of a writer type (F32/F16/BF16)."""
    from export.vocab import UnsupportedTokenizerError, add_vocab

    file_type, tensor_type = WRITER_TYPES[qtype]
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _add_hparams(writer, config, name, int(file_type))
    try:
        add_vocab(writer, tokenizer_dir, config["vocab_size"])
    except UnsupportedTokenizerError as e:
        raise ExportError(str(e)) from None
    for gguf_name, tensor in _gguf_tensors(model, config):
        array, raw_dtype = _to_numpy(tensor, tensor_type)
        writer.add_tensor(gguf_name, array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()


def quantize(
    src: Path, dst: Path, qtype: str, expected_bytes: int, threads: int | None = None
) -> None:
    """Quantize a GGUF with llama.cpp, showing progress as the output file grows."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = quantization_types()[qtype]
    params.nthread = threads or os.cpu_count() or 1
    done = threading.Event()
    result: list[int] = []

    def run() -> None:
        result.append(llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params))
        done.set()

    worker = threading.Thread(target=run, daemon=True)
    # llama.cpp logs every tensor through this logger; keep only errors so the bar stays readable.
    with (
        quiet_logger("llama-cpp-python"),
        tqdm(desc=f"Quantizing to {qtype}", total=expected_bytes, unit="B", unit_scale=True) as bar,
    ):
        worker.start()
        while not done.wait(0.2):  # llama.cpp has no progress callback: watch the file grow
            bar.n = min(dst.stat().st_size if dst.exists() else 0, expected_bytes)
            bar.refresh()
        bar.n = bar.total
    if result[0] != 0:
        raise ExportError(f"llama.cpp could not quantize to {qtype} (error {result[0]})")


def export(
    src: Path,
    out: Path,
    qtype: str = "Q4_K_M",
    adapter: Path | None = None,
    name: str | None = None,
) -> ExportResult:
    """Export SRC (merged with ADAPTER) to OUT; OUT exists only if everything succeeded."""
    start = time.perf_counter()
    src, out = Path(src), Path(out)
    qtype = qtype.upper()
    types = quantization_types()
    if qtype not in types:
        raise ExportError(
            f"unknown quantization type {qtype!r}; choose one of: " + ", ".join(sorted(types))
        )
    config = _read_config(src)
    tokenizer_dir = src
    if adapter is not None:
        adapter = Path(adapter)
        if not adapter.is_dir():
            raise ExportError(f"{adapter} is not a directory (expected a PEFT adapter)")
        if (adapter / "tokenizer.json").is_file():
            tokenizer_dir = adapter  # training saves the tokenizer (and chat template) it used
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise ExportError(f"{tokenizer_dir} has no tokenizer.json (a fast tokenizer is required)")
    try:
        with atomic_output(out) as tmp_out:
            model = _load_model(src, adapter)
            name = name or src.resolve().name
            if qtype in WRITER_TYPES:
                write_gguf(model, config, tokenizer_dir, tmp_out, qtype, name)
            else:
                n_params = sum(p.numel() for p in model.parameters())
                expected = int(n_params * APPROX_BITS_PER_WEIGHT.get(qtype, 5.0) / 8)
                with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as scratch:
                    full = Path(scratch) / "unquantized.gguf"
                    write_gguf(model, config, tokenizer_dir, full, _lossless_type(model), name)
                    del model
                    quantize(full, tmp_out, qtype, expected)
    except OSError as e:
        raise ExportError(f"cannot write {e.filename or out}: {e.strerror or e}") from None
    return ExportResult(
        out, qtype, out.stat().st_size, time.perf_counter() - start, k_quant_fallback(out, qtype)
    )


def push_to_hub(path: Path, repo: str) -> str:
    """Upload the GGUF to a Hugging Face model repo (created if needed); returns its URL."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo, exist_ok=True)
        api.upload_file(path_or_fileobj=str(path), path_in_repo=path.name, repo_id=repo)
    except Exception as e:
        raise ExportError(f"cannot push to {repo}: {first_line(e)}") from None
    return f"https://huggingface.co/{repo}/blob/main/{path.name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.to_gguf", description=__doc__.split("\n")[0]
    )
    parser.add_argument("src", type=Path, help="Hugging Face Llama checkpoint directory")
    parser.add_argument("out", type=Path, help="output .gguf file")
    parser.add_argument(
        "--type",
        default="Q4_K_M",
        help="F32, F16, BF16, Q8_0, Q4_K_M, Q5_K_M or any llama.cpp type",
    )
    parser.add_argument("--adapter", type=Path, help="PEFT LoRA adapter directory to merge first")
    parser.add_argument("--name", help="model name stored in the file (default: SRC's name)")
    parser.add_argument("--push-to-hub", metavar="REPO", help="upload the file to this Hub repo")
    args = parser.parse_args(argv)
    try:
        result = export(args.src, args.out, args.type, args.adapter, args.name)
        print(
            f"wrote {result.path} ({result.qtype}, {result.size_bytes / 1e6:.1f} MB) "
            f"in {result.seconds:.1f} s"
        )
        if result.fallback:
            print(f"note: {result.fallback}")
        if args.push_to_hub:
            print(f"pushed to {push_to_hub(result.path, args.push_to_hub)}")
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
