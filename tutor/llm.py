"""The language model: a GGUF run by llama.cpp on CPU, streaming a tutor's answers.

One `TutorLLM` serves every session. llama.cpp contexts are not thread-safe, so requests take
turns on one dedicated thread (see `threads`); the KV cache of each conversation is kept (see `context_cache`) so that a
follow-up question evaluates only its new tokens, also after other students were served.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from tutor.chat_format import LLAMA3_CHAT_TEMPLATE
from tutor.context_cache import Context, ContextStore
from tutor.conversation import Message
from tutor.modes import Generation
from tutor.threads import DedicatedThread

_DONE = object()  # end of a stream of pieces


class ModelLoadError(RuntimeError):
    """The GGUF could not be found, downloaded or loaded."""


def resolve_model(spec: str) -> Path:
    """A local GGUF path, or `OWNER/REPO/FILE.gguf` on the Hugging Face Hub (downloaded once).

    The Hub download goes through huggingface_hub's cache and honours `HF_HUB_OFFLINE`.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    parts = spec.split("/")
    if len(parts) < 3 or not spec.endswith(".gguf"):
        raise ModelLoadError(f"model {spec!r} not found: give a .gguf path or OWNER/REPO/FILE.gguf")
    from huggingface_hub import constants, hf_hub_download

    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        try:  # the cache first: no network round-trip when the model was downloaded before
            return Path(hf_hub_download(repo_id=repo_id, filename=filename, local_files_only=True))
        except Exception:
            if constants.HF_HUB_OFFLINE or not _reachable(constants.ENDPOINT):
                raise ModelLoadError(f"{spec} is not in the Hugging Face cache and the Hub "
                                     "cannot be reached (offline)") from None
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except ModelLoadError:
        raise
    except Exception as e:  # missing repo or file, interrupted download
        raise ModelLoadError(f"cannot get {spec} from the Hugging Face Hub: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether URL's host accepts a connection: huggingface_hub retries for ~30 s when offline."""
    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@dataclass
class GenerationStats:
    """What the last answer cost."""

    prompt: str = ""  # the rendered prompt
    prompt_tokens: int = 0  # tokens in the prompt
    evaluated_tokens: int = 0  # prompt tokens llama.cpp actually evaluated (the rest reused)
    generated_tokens: int = 0
    time_to_first_token_s: float = 0.0
    total_s: float = 0.0
    stopped: str = ""  # "eot", "max_tokens" or "cancelled"

    @property
    def tokens_per_s(self) -> float:
        gen_time = self.total_s - self.time_to_first_token_s
        return (self.generated_tokens - 1) / gen_time if gen_time > 0 else 0.0


class TutorLLM:
    """A GGUF chat model with streaming, stop, and per-conversation KV cache reuse."""

    def __init__(self, model_path: Path, n_ctx: int = 4096, n_threads: int | None = None,
                 n_batch: int = 512, cache_bytes: int = 128 * 2**20) -> None:
        threads = n_threads or os.cpu_count() or 1
        self.thread = DedicatedThread("llama.cpp")  # every llama.cpp call runs here
        try:
            # No mmap: llama.cpp repacks most weights into a faster layout in its own memory,
            # and with mmap the file's pages of those tensors would stay resident too (+0.45 GB
            # for a 1B Q4_K_M model).
            self.llm = self.thread.run(
                llama_cpp.Llama, model_path=str(model_path), n_ctx=n_ctx, n_batch=n_batch,
                n_threads=threads, n_threads_batch=threads, use_mmap=False, verbose=False)
        except Exception as e:
            raise ModelLoadError(f"llama.cpp cannot load {model_path}: {e}") from None
        self.model_path = Path(model_path)
        self.n_ctx = self.llm.n_ctx()
        self.template = self.llm.metadata.get("tokenizer.chat_template") or LLAMA3_CHAT_TEMPLATE
        self.has_own_template = "tokenizer.chat_template" in self.llm.metadata
        model = self.llm._model
        self._vocab = model.vocab
        eos, bos = self.llm.token_eos(), self.llm.token_bos()
        self._formatters = {  # with and without the assistant header at the end
            flag: Jinja2ChatFormatter(
                template=self.template, add_generation_prompt=flag,
                eos_token=self.piece(eos).decode(errors="replace") if eos >= 0 else "",
                bos_token=self.piece(bos).decode(errors="replace") if bos >= 0 else "")
            for flag in (False, True)}
        self._live = Context()
        self._saved = ContextStore(cache_bytes)
        self.stats = GenerationStats()

    def forget(self) -> None:
        """Drop every cached conversation: the next prompt is evaluated from scratch."""
        def drop() -> None:
            self.llm.reset()
            self.llm._ctx.kv_cache_seq_rm(-1, 0, -1)
            self._live = Context()
            self._saved = ContextStore(self._saved.max_bytes)

        self.thread.run(drop)

    # -- prompt ---------------------------------------------------------------------------
    def render(self, messages: list[Message], generation_prompt: bool = True) -> str:
        """MESSAGES in the chat template, ending with the assistant's header unless told not to."""
        return self._formatters[generation_prompt](messages=messages).prompt

    def tokenize(self, text: str | bytes) -> list[int]:
        data = text.encode() if isinstance(text, str) else text
        return self.llm.tokenize(data, add_bos=False, special=True)

    def count_tokens(self, messages: list[Message]) -> int:
        return len(self.tokenize(self.render(messages)))

    def piece(self, token: int) -> bytes:
        """Exact bytes of one token (special tokens as their text)."""
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        if n < 0:  # longer than the buffer: llama.cpp says how long
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        return buf.raw[:n]

    def _extend(self, ctx: Context, tokens: list[int], texts: list[bytes] | None = None) -> None:
        """Append TOKENS to CTX, spelled by TEXTS (default: the tokens' own bytes)."""
        for token, text in zip(tokens, texts or [self.piece(t) for t in tokens]):
            ctx.tokens.append(token)
            ctx.text += text
            ctx.ends.append(len(ctx.text))

    # -- KV cache bookkeeping ---------------------------------------------------------------
    def _save_live(self) -> None:
        """Keep the live context before it is overwritten (unless already kept)."""
        live = self._live
        if not live.tokens or self._saved.covers(live.tokens):
            return
        ctx = self.llm._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        blob = (ctypes.c_uint8 * size)()
        llama_cpp.llama_state_seq_get_data(ctx, blob, size, 0)
        self._saved.put(Context(list(live.tokens), list(live.ends), live.text, blob))

    def _restore(self, saved: Context) -> None:
        """Make SAVED the live context."""
        self.llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        if llama_cpp.llama_state_seq_set_data(self.llm._ctx.ctx, saved.blob, len(saved.blob), 0) == 0:
            self.llm.n_tokens = 0
            self._live = Context()
            return
        n = len(saved.tokens)
        self.llm.input_ids[:n] = saved.tokens
        self.llm.n_tokens = n
        self.llm._requires_eval = True  # logits are not part of the saved state
        self._live = saved.prefix(n)

    def _prompt_tokens(self, prompt: bytes) -> list[int]:
        """Prompt tokens that reuse the longest cached context spelling a prefix of PROMPT."""
        reuse = self._live.reusable_tokens(prompt)
        key, saved_reuse = self._saved.best_match(prompt)
        if key is not None and saved_reuse > reuse:
            self._save_live()
            self._restore(self._saved.pop(key))
            reuse = self._live.reusable_tokens(prompt)
        elif reuse < len(self._live.tokens):
            self._save_live()
        self._live = self._live.prefix(reuse)
        rest = self.tokenize(prompt[len(self._live.text):])
        return self._live.tokens + rest

    # -- generation -------------------------------------------------------------------------
    def stream(self, messages: list[Message], generation: Generation, max_tokens: int | None = None,
               cancel: threading.Event | None = None) -> Iterator[str]:
        """Yield the answer to MESSAGES piece by piece until end-of-turn, MAX_TOKENS or CANCEL.

        Generation runs on the llama.cpp thread, one request at a time; closing this generator
        (e.g. the user pressed Stop) ends it after the current token.
        """
        prompt = self.render(messages).encode()
        pieces: queue.Queue = queue.Queue()
        consumer_gone = threading.Event()
        job = self.thread.submit(self._generate, prompt, generation, max_tokens,
                                 [e for e in (cancel, consumer_gone) if e is not None], pieces)
        try:
            while (piece := pieces.get()) is not _DONE:
                yield piece
            job.result()  # an error on the llama.cpp thread surfaces here
        finally:
            consumer_gone.set()

    def _generate(self, prompt: bytes, generation: Generation, max_tokens: int | None,
                  stops: list[threading.Event], pieces: queue.Queue) -> None:
        """The generation loop, on the llama.cpp thread: pieces go to PIECES, then _DONE."""
        start = time.perf_counter()
        stats = GenerationStats(prompt=prompt.decode(), stopped="max_tokens")
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        generated: list[int] = []
        shown: list[bytes] = []  # what each generated token added to the text the user sees
        tokens: list[int] = []
        try:
            tokens = self._prompt_tokens(prompt)
            budget = min(max_tokens or generation.max_tokens, self.n_ctx - len(tokens))
            stats.prompt_tokens = len(tokens)
            llama_cpp.llama_perf_context_reset(self.llm._ctx.ctx)
            if budget <= 0:
                return
            for token in self.llm.generate(
                    tokens, temp=generation.temperature, top_p=generation.top_p,
                    top_k=generation.top_k, min_p=generation.min_p,
                    repeat_penalty=generation.repeat_penalty, reset=True):
                if not generated:
                    stats.time_to_first_token_s = time.perf_counter() - start
                    # llama.cpp tallies prompt batches as n_p_eval when it syncs for sampling
                    # (a 1-token prompt counts in n_eval; both read as at least 1).
                    stats.evaluated_tokens = llama_cpp.llama_perf_context(self.llm._ctx.ctx).n_p_eval
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    stats.stopped = "eot"
                    break
                generated.append(token)
                text = decoder.decode(self.piece(token))
                shown.append(text.encode())
                if text:
                    pieces.put(text)
                if any(stop.is_set() for stop in stops):
                    stats.stopped = "cancelled"
                    break
                if len(generated) >= budget:
                    break
            tail = decoder.decode(b"", final=True)
            if tail:
                pieces.put(tail)
        finally:
            self._record(tokens, generated, shown)
            stats.generated_tokens = len(generated)
            stats.total_s = time.perf_counter() - start
            self.stats = stats
            pieces.put(_DONE)

    def _record(self, tokens: list[int], generated: list[int], shown: list[bytes]) -> None:
        """Bring the live context up to what the KV cache now holds.

        That is the prompt and every generated token but the last. Generated tokens are spelled
        as the user saw them (a stray byte of a broken character shows as U+FFFD), so that the
        next prompt, rendered from that text, still matches them.
        """
        evaluated = self.llm.input_ids[: self.llm.n_tokens].tolist()
        keep = len(self._live.tokens)
        if evaluated[:keep] != self._live.tokens:  # llama.cpp re-evaluated from scratch
            keep = 0
        self._live = self._live.prefix(keep)
        n_prompt = len(tokens)
        if keep <= n_prompt and evaluated[:n_prompt] == tokens:
            self._extend(self._live, evaluated[keep:n_prompt])
            answer = evaluated[n_prompt:]
            self._extend(self._live, answer, shown[: len(answer)])
        else:
            self._extend(self._live, evaluated[keep:])

    def answer(self, messages: list[Message], generation: Generation, **kwargs) -> str:
        """The whole answer at once."""
        return "".join(self.stream(messages, generation, **kwargs))
