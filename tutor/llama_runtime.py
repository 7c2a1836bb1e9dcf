"""llama.cpp through llama-cpp-python's public low-level API: model, context, batch, samplers.

Everything the batched engine needs from llama.cpp, and nothing of llama-cpp-python's
high-level `Llama` class (whose insides are private): a model loaded without mmap, one context
whose KV cache is shared by all sequences (`kv_unified`), a reusable batch, per-sequence memory
and state functions, sampler chains and llama.cpp's own performance counters.

Not thread-safe: every call except tokenization and token text goes through one thread
(see `tutor.threads`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

from tutor import llama_log
from tutor.modes import Generation

PIECE_BUFFER_BYTES = 256  # enough for any single token's text; longer ones are retried
KV_TYPES = {
    "f16": llama_cpp.GGML_TYPE_F16,
    "q8_0": llama_cpp.GGML_TYPE_Q8_0,
    "f32": llama_cpp.GGML_TYPE_F32,
}
PENALTY_LAST_N = 64  # tokens the repetition penalty looks back over (llama.cpp's default)
DECODE_ABORTED = 2  # llama_decode's status for a step cut short (its batch left out of the cache)

llama_log.install()


class LlamaError(RuntimeError):
    """llama.cpp refused to load a model, create a context or decode a batch."""


def _set(params: ctypes.Structure, **fields) -> None:
    """Set FIELDS of a llama.cpp parameter struct, refusing names it does not have.

    A ctypes struct takes any attribute silently: `use_mmap = False` on a version that replaced
    it with `load_mode` once left the model memory-mapped (+0.45 GB) without a word.
    """
    known = {name for name, *_ in type(params)._fields_}
    unknown = set(fields) - known
    if unknown:
        raise LlamaError(
            f"llama-cpp-python {llama_cpp.__version__} has no {type(params).__name__}"
            f" field {', '.join(sorted(unknown))}; this tutor needs 0.3.36"
        )
    for name, value in fields.items():
        setattr(params, name, value)


def _strlen() -> Callable[..., int] | None:
    """libc's strlen, or None where there is no libc to load."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None).strlen
    except (OSError, AttributeError):
        return None


class DecodeInterrupt:
    """A flag that cuts the decode step in progress short: llama.cpp's abort callback, for a job
    on the same thread that should not wait for the step to end (the step is redone after it).

    Set from any thread. llama.cpp's first compute thread asks the callback after each of a
    step's graph operations (hundreds of them). A Python callback would take the GIL
    every time, and wait for it whenever a web thread holds it; this one is C code reading a
    byte: libc's strlen over the 2-byte buffer b"\\0\\0" (0: go on) or b"\\1\\0" (1: stop),
    returned in the register where a C caller reads the callback's bool (x86-64, arm64).
    Where libc cannot be loaded, nothing is ever cut short.
    """

    def __init__(self) -> None:
        self._flag = (ctypes.c_uint8 * 2)()  # [stop?, the string's end]
        strlen = _strlen()
        self.callback = (
            llama_cpp.ggml_abort_callback(ctypes.cast(strlen, ctypes.c_void_p).value)
            if strlen is not None
            else None
        )
        self.data = ctypes.cast(self._flag, ctypes.c_void_p)

    def set(self) -> None:
        """Cut the step in progress (or the next one, if none is) short."""
        self._flag[0] = 1

    def clear(self) -> None:
        self._flag[0] = 0

    def is_set(self) -> bool:
        return bool(self._flag[0])


@dataclass(frozen=True)
class ContextOptions:
    """How the one llama.cpp context is made."""

    kv_tokens: int  # KV cache cells shared by every sequence
    n_seq_max: int  # sequences that may live in the cache at once
    n_batch: int  # most tokens one llama_decode may take
    n_threads: int
    kv_type: str = "f16"  # KV cache cells: f16, q8_0 (half the memory) or f32 (exact tests)


class LlamaModel:
    """A GGUF loaded by llama.cpp: vocabulary, tokenization, metadata."""

    def __init__(self, path: Path, extra_buffers: bool = True) -> None:
        """EXTRA_BUFFERS: let llama.cpp move weights into AMX tiles or repacked layouts (see
        `tutor.cpu_kernels`, which says when that crashes); False keeps them as stored."""
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        # No mmap: llama.cpp repacks most weights into a faster layout in its own memory, and
        # with mmap the file's pages of those tensors would stay resident too (+0.45 GB for a
        # 1B Q4_K_M model).
        _set(params, load_mode=llama_cpp.LLAMA_LOAD_MODE_NONE, use_extra_bufts=extra_buffers)
        self.pointer = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.pointer:
            raise LlamaError(f"llama.cpp cannot load {path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.pointer)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.bos = llama_cpp.llama_vocab_bos(self.vocab)
        self.eos = llama_cpp.llama_vocab_eos(self.vocab)

    def close(self) -> None:
        if self.pointer:
            llama_cpp.llama_model_free(self.pointer)
            self.pointer = None

    def chat_template(self) -> str | None:
        """The GGUF's own chat template (`tokenizer.chat_template`), if it has one."""
        template = llama_cpp.llama_model_chat_template(self.pointer, None)
        return template.decode() if template else None

    def tokenize(self, data: bytes) -> list[int]:
        """Tokens of DATA, special tokens parsed, no BOS added (templates write their own)."""
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, False, True)
        if n < 0:  # more tokens than bytes cannot happen for BPE, but llama.cpp says how many
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, False, True)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """Exact bytes of one token (special tokens as their text)."""
        buf = ctypes.create_string_buffer(PIECE_BUFFER_BYTES)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        if n < 0:  # longer than the buffer: llama.cpp says how long
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        return buf.raw[:n]

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))


class LlamaContext:
    """One llama.cpp context: a KV cache of `kv_tokens` cells shared by up to n_seq_max
    sequences."""

    def __init__(self, model: LlamaModel, options: ContextOptions) -> None:
        params = llama_cpp.llama_context_default_params()
        _set(
            params,
            n_ctx=options.kv_tokens,
            n_batch=options.n_batch,
            n_ubatch=options.n_batch,
            n_seq_max=options.n_seq_max,
            n_threads=options.n_threads,
            n_threads_batch=options.n_threads,
            # Logits rows and the compute graph are sized for this many outputs, not n_batch
            # (512 rows of a 128k vocabulary): one per sequence at most, llama.cpp's floor.
            n_outputs_max=options.n_seq_max,
            kv_unified=True,  # one cache: a prefix copied between sequences shares its cells
            no_perf=False,  # keep llama.cpp's evaluated-token counters
            type_k=KV_TYPES[options.kv_type],
            type_v=KV_TYPES[options.kv_type],
        )
        # Flash attention: needed for a quantized V cache; off for F32, which is then exact
        # whatever the batch holds; llama.cpp's choice for F16.
        if options.kv_type != "f16":
            _set(
                params,
                flash_attn_type=llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
                if options.kv_type == "f32"
                else llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
            )
        self.pointer = llama_cpp.llama_init_from_model(model.pointer, params)
        if not self.pointer:
            raise LlamaError(f"llama.cpp cannot create a context of {options.kv_tokens} tokens")
        self.memory = llama_cpp.llama_get_memory(self.pointer)
        self.kv_tokens = llama_cpp.llama_n_ctx(self.pointer)
        self.n_batch = llama_cpp.llama_n_batch(self.pointer)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.n_batched = 0
        self.interrupt = DecodeInterrupt()
        if self.interrupt.callback is not None:
            llama_cpp.llama_set_abort_callback(
                self.pointer, self.interrupt.callback, self.interrupt.data
            )

    def close(self) -> None:
        if self.pointer:
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.pointer)
            self.pointer = None

    # -- batch ------------------------------------------------------------------------------
    def clear_batch(self) -> None:
        self.n_batched = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Append one token of sequence SEQ at position POS; returns its index in the batch."""
        i = self.n_batched
        batch = self.batch
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits
        self.n_batched += 1
        return i

    def decode(self, interruptible: bool = False) -> int:
        """Evaluate the batch; llama.cpp's status (0: done, 1: no room in the KV cache,
        DECODE_ABORTED: cut short by `interrupt`, only if INTERRUPTIBLE; else it is redone)."""
        self.batch.n_tokens = self.n_batched
        while True:
            with llama_log.held_back() as lines:
                status = llama_cpp.llama_decode(self.pointer, self.batch)
            # A step cut short on purpose is no error, though llama.cpp logs one.
            llama_log.emit(lines, logging.DEBUG if status == DECODE_ABORTED else None)
            if status != DECODE_ABORTED:
                return status
            # llama.cpp has taken the batch's cells back out of the cache; the interruption is
            # spent (the job it made way for runs next).
            self.interrupt.clear()
            if interruptible:
                return status

    # -- sequences --------------------------------------------------------------------------
    def remove(self, seq: int, start: int = -1, end: int = -1) -> None:
        """Drop positions [START, END) of sequence SEQ (-1, -1: all of it; SEQ -1: every one)."""
        llama_cpp.llama_memory_seq_rm(self.memory, seq, start, end)

    def copy(self, src: int, dst: int, n: int) -> None:
        """Give DST the first N positions of SRC (cells are shared, not copied)."""
        llama_cpp.llama_memory_seq_cp(self.memory, src, dst, 0, n)

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(self.memory, False)

    def save(self, seq: int) -> ctypes.Array:
        """A copy of sequence SEQ's KV cache (llama.cpp's per-sequence state)."""
        size = llama_cpp.llama_state_seq_get_size(self.pointer, seq)
        blob = (ctypes.c_uint8 * size)()
        llama_cpp.llama_state_seq_get_data(self.pointer, blob, size, seq)
        return blob

    def restore(self, blob: ctypes.Array, seq: int) -> bool:
        """Load a saved KV cache into sequence SEQ (emptied first); False if it did not fit."""
        self.remove(seq)
        return llama_cpp.llama_state_seq_set_data(self.pointer, blob, len(blob), seq) != 0

    def evaluated_tokens(self) -> int:
        """Tokens llama.cpp has evaluated in this context so far (its own counters)."""
        llama_cpp.llama_synchronize(self.pointer)  # queued batches are tallied on sync
        perf = llama_cpp.llama_perf_context(self.pointer)
        return perf.n_p_eval + perf.n_eval


class Sampler:
    """A llama.cpp sampler chain with a mode's settings: penalties, top-k, top-p, min-p,
    temperature."""

    def __init__(self, n_vocab: int, generation: Generation, seed: int | None = None) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

        def add(sampler) -> None:
            llama_cpp.llama_sampler_chain_add(chain, sampler)

        if generation.repeat_penalty != 1.0:  # a pass over the whole vocabulary: only if asked
            add(
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab, PENALTY_LAST_N, generation.repeat_penalty, 0.0, 0.0
                )
            )
        if generation.temperature == 0.0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:  # llama-cpp-python's order, so that answers sample as they did before
            add(llama_cpp.llama_sampler_init_top_k(generation.top_k))
            add(llama_cpp.llama_sampler_init_top_p(generation.top_p, 1))
            add(llama_cpp.llama_sampler_init_min_p(generation.min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(generation.temperature))
            seed = generation.seed if seed is None else seed
            add(
                llama_cpp.llama_sampler_init_dist(
                    llama_cpp.LLAMA_DEFAULT_SEED if seed is None else seed
                )
            )
        self.pointer = chain

    def accept(self, tokens: list[int]) -> None:
        """Let the penalties see TOKENS (the end of the prompt) as already there."""
        for token in tokens[-PENALTY_LAST_N:]:
            llama_cpp.llama_sampler_accept(self.pointer, token)

    def sample(self, context: LlamaContext, index: int) -> int:
        """The next token from the logits of batch entry INDEX (accepted into the chain)."""
        return llama_cpp.llama_sampler_sample(self.pointer, context.pointer, index)

    def close(self) -> None:
        if self.pointer:
            llama_cpp.llama_sampler_free(self.pointer)
            self.pointer = None
