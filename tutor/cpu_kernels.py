"""Which of llama.cpp's CPU matrix kernels this process uses: AMX, repacked or plain.

When it loads a model, llama.cpp moves the weights of most matrix products into an "extra"
buffer: Intel AMX tiles where the library was built with AMX and the CPU has it, else layouts
repacked for AVX2/AVX-512 where the quantization has one. `use_extra_bufts = False` keeps every
weight as the file stores it ("plain").

Why a probe: llama-cpp-python builds llama.cpp from source on the user's machine, and a native
build by GCC 12 (Debian 12's, a Hugging Face Space's) miscompiles the AMX kernels. GCC 12's
`_tile_loadconfig` tells the optimizer that `ldtilecfg` reads 8 bytes of its 64-byte tile
configuration, so the stores of the tile shapes are removed as dead and the instruction loads
zeros and stack garbage: a general-protection fault (SIGSEGV) on the first AMX product, for
Q4_0, Q4_1, Q8_0 and Q4_K models. No Python code can catch that, so on a CPU with AMX and a
library with AMX kernels a child process loads tiny models of those types and decodes; if it
dies, this process keeps weights plain. The verdict is cached per library build and CPU.
`make app`/`make test` build llama.cpp so that AMX works (docs/amx.md); the probe protects every
other install, the Space's included.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tutor.defaults import CACHE_DIR
from tutor.files import atomic_output

log = logging.getLogger("voice-tutor")

PROBE_TIMEOUT_S = 300.0  # a tiny model per type: ~1 s quiet, far more on a loaded machine
PROBE_TYPES = ("Q4_0", "Q4_1", "Q8_0", "Q4_K_M")  # the quantizations with AMX kernels
PROBE_BATCHES = (1, 32)  # tokens in one decode: AMX tiles serve batches, VNNI single tokens
SIGNAL_DEATH = "died of signal"  # how a verdict worth caching reads
PROBE_ARGV = (sys.executable, "-m", "tutor.cpu_kernels", "--child")  # `_probe_child` below


class Kernels(enum.Enum):
    """The kernels llama.cpp's CPU backend runs for the weights' matrix products."""

    AMX = "amx"  # Intel AMX tiles (and repacked layouts for the types AMX lacks)
    REPACKED = "repacked"  # weights repacked for AVX2/AVX-512 where the type has a layout
    PLAIN = "plain"  # weights as stored in the file (`use_extra_bufts = False`)

    @property
    def extra_buffers(self) -> bool:
        return self is not Kernels.PLAIN


@dataclass(frozen=True)
class KernelChoice:
    kernels: Kernels
    why: str  # one line for the start-up log and /health

    def describe(self) -> str:
        return f"llama.cpp CPU kernels: {self.kernels.value} ({self.why})"


def cpu_has_amx() -> bool:
    """Whether the CPU (as Linux reports it) has AMX with int8 tiles."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_int8" in flags.split() and "amx_tile" in flags.split()


def library_has_amx() -> bool:
    """Whether this llama.cpp was built with its AMX kernels (llama.cpp's own system info)."""
    import llama_cpp

    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


def choose(setting: str = "auto", cache_dir: Path = CACHE_DIR) -> KernelChoice:
    """The kernels to load models with. SETTING: auto (probe where AMX could crash), extra
    (llama.cpp's choice, unprobed) or plain."""
    if setting == "plain":
        return KernelChoice(Kernels.PLAIN, "set by --cpu-kernels plain")
    amx = cpu_has_amx() and library_has_amx()
    extra = Kernels.AMX if amx else Kernels.REPACKED
    if setting == "extra":
        return KernelChoice(extra, "set by --cpu-kernels extra")
    if setting != "auto":
        raise ValueError(f"--cpu-kernels must be auto, extra or plain, not {setting!r}")
    if not amx:
        return KernelChoice(extra, "this CPU or this llama.cpp build has no AMX")
    crash = _cached_probe(cache_dir)
    if crash:
        return KernelChoice(Kernels.PLAIN, f"AMX kernels crash in this llama.cpp build: {crash}")
    return KernelChoice(Kernels.AMX, "AMX kernels checked in a child process")


def _build_key() -> str:
    """What the verdict depends on: the library file, llama-cpp-python's version, the CPU."""
    import llama_cpp

    lib = Path(llama_cpp.__file__).parent / "lib"
    files = sorted(lib.glob("libggml-cpu*")) or sorted(lib.glob("*ggml*"))
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    parts = [llama_cpp.__version__, repr(stats), platform.processor(), str(cpu_has_amx())]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _cached_probe(cache_dir: Path) -> str:
    """'' if the AMX kernels ran in a child process, else why not. Cached per build and CPU
    when the child decoded or died; any other failure is asked again at the next start."""
    path = cache_dir / f"amx-probe-{_build_key()}.json"
    try:
        return json.loads(path.read_text())["crash"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    crash = probe(PROBE_ARGV)
    if crash and SIGNAL_DEATH not in crash:
        return crash  # a timeout on a loaded machine, a probe that could not run: ask again
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps({"crash": crash}))
    except OSError as e:  # a read-only home: probe again next start
        log.info("cannot cache the AMX probe's verdict in %s: %s", cache_dir, e)
    return crash


def probe(argv: tuple[str, ...] = PROBE_ARGV, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """Run llama.cpp's AMX kernels in a child process (ARGV): '' if it decoded, else what
    happened."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, "PYTHONFAULTHANDLER": ""},
        )
    except subprocess.TimeoutExpired:
        return f"the probe did not finish in {timeout_s:.0f} s"
    if done.returncode == 0:
        return ""
    if done.returncode < 0:
        return f"a child process decoding with them {SIGNAL_DEATH} {-done.returncode}"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return f"the probe failed: {lines[-1] if lines else f'exit {done.returncode}'}"


# -- the child process ---------------------------------------------------------------------------
TINY_WIDTH = 256  # K-quants need rows of 256
TINY_VOCAB = 64


def _write_tiny_f32(path: Path) -> None:
    """A one-layer Llama of seeded random F32 weights, without a vocabulary (ids only)."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    width, heads = TINY_WIDTH, 4
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(width)
    writer.add_block_count(1)
    writer.add_feed_forward_length(width)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(width // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("no_vocab")
    writer.add_vocab_size(TINY_VOCAB)

    def matrix(rows: int) -> np.ndarray:
        return (rng.standard_normal((rows, width)) * 0.05).astype(np.float32)

    writer.add_tensor("token_embd.weight", matrix(TINY_VOCAB))
    writer.add_tensor("output.weight", matrix(TINY_VOCAB))
    writer.add_tensor("output_norm.weight", np.ones(width, np.float32))
    for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
        writer.add_tensor(f"blk.0.{name}.weight", matrix(width))
    for name in ("attn_norm", "ffn_norm"):
        writer.add_tensor(f"blk.0.{name}.weight", np.ones(width, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _decode_tiny(path: Path) -> None:
    """Load PATH with llama.cpp's extra buffers and decode each of PROBE_BATCHES."""
    from tutor.llama_runtime import ContextOptions, LlamaContext, LlamaError, LlamaModel

    model = LlamaModel(path, extra_buffers=True)
    options = ContextOptions(kv_tokens=128, n_seq_max=1, n_batch=64, n_threads=os.cpu_count() or 1)
    context = LlamaContext(model, options)
    position = 0
    for n in PROBE_BATCHES:
        context.clear_batch()
        for i in range(n):
            context.add(i % TINY_VOCAB, position + i, 0, i == n - 1)
        if context.decode() != 0:
            raise LlamaError(f"llama.cpp could not decode {n} tokens of {path.name}")
        position += n
    context.close()
    model.close()


def _probe_child() -> None:
    import llama_cpp

    with tempfile.TemporaryDirectory(prefix="amx-probe-") as tmp:
        f32 = Path(tmp) / "tiny-f32.gguf"
        _write_tiny_f32(f32)
        for name in PROBE_TYPES:
            quantized = Path(tmp) / f"tiny-{name}.gguf"
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}")
            if llama_cpp.llama_model_quantize(str(f32).encode(), str(quantized).encode(), params):
                raise SystemExit(f"llama.cpp could not quantize the probe model to {name}")
            _decode_tiny(quantized)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        description="Say which of llama.cpp's CPU kernels the app would use here (AMX, "
        "repacked or plain), probing AMX in a child process if need be."
    )
    parser.add_argument("--setting", default="auto", help="auto, extra or plain (--cpu-kernels)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _probe_child()
    else:
        print(choose(args.setting).describe())


if __name__ == "__main__":
    main()
