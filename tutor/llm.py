"""The language model: a GGUF run by llama.cpp on CPU, streaming several tutors' answers at once.

One `TutorLLM` serves every session. Up to `parallel` answers are generated together, one
token each per llama.cpp decode step (continuous batching, see `batching`), on one dedicated
thread (see `threads`); each mode's system prompt is evaluated once and shared, and the KV cache
of each conversation is kept (see `context_cache`) so that a follow-up question evaluates only
its new tokens, also after other students were served.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from tutor.batching import DONE, GenerationStats, InLine, Request, Scheduler
from tutor.chat_format import LLAMA3_CHAT_TEMPLATE
from tutor.context_cache import ContextStore
from tutor.cpu_kernels import KernelChoice, choose
from tutor.defaults import DEFAULT_KV_TOKENS, DEFAULT_KV_TYPE, DEFAULT_MAX_WAITING, DEFAULT_PARALLEL
from tutor.conversation import Message
from tutor.llama_runtime import ContextOptions, LlamaContext, LlamaError, LlamaModel
from tutor.errors import first_line
from tutor.modes import Generation
from tutor.threads import DedicatedThread

log = logging.getLogger(__name__)
__all__ = [
    "DEFAULT_KV_TOKENS",
    "DEFAULT_KV_TYPE",
    "DEFAULT_MAX_WAITING",
    "DEFAULT_PARALLEL",
    "GenerationStats",
    "ModelLoadError",
    "TutorLLM",
    "resolve_model",
]

MAX_PINNED_PREFIXES = 8  # mode prompts kept evaluated in the KV cache
DEFAULT_PREFILL_CHUNK = 64  # prompt tokens per step while other answers stream
# A transcription's words reach the engine a few milliseconds after it (a hands-free question's
# prefill, early answer or question): the step after one waits this long for them, rather than
# leave them for the step after (~0.15 s later with 4 others answering on 2 cores).
FOLLOW_UP_WAIT_S = 0.02


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
                raise ModelLoadError(
                    f"{spec} is not in the Hugging Face cache and the Hub "
                    "cannot be reached (offline)"
                ) from None
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except ModelLoadError:
        raise
    except Exception as e:  # missing repo or file, interrupted download
        raise ModelLoadError(
            f"cannot get {spec} from the Hugging Face Hub: {first_line(e)}"
        ) from None


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether URL's host accepts a connection: huggingface_hub retries for ~30 s when offline."""
    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class Activity:
    """A snapshot of the engine's load."""

    answering: int  # answers being generated (slots in use)
    waiting: int  # answers waiting for a slot
    saved_conversations: int  # conversation KV caches kept outside the context
    saved_bytes: int
    ended: dict[str, int]  # answers so far, by how they ended: eot, max_tokens, cancelled, ...
    # guesses so far (tutor.batching: prefills, early answers), by how they ended: done,
    # superseded, skipped, asked, cancelled, expired; and "claimed": early answers taken over
    prefills_ended: dict[str, int] = field(default_factory=dict)
    early_answers_ready: int = 0  # early answers with their first tokens, waiting for a question


class TutorLLM:
    """A GGUF chat model serving up to PARALLEL streamed answers at once, with cached prefixes."""

    def __init__(
        self,
        model_path: Path,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        cache_bytes: int = 128 * 2**20,
        parallel: int = 1,
        kv_tokens: int | None = None,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        kv_type: str = DEFAULT_KV_TYPE,
        max_waiting: int = DEFAULT_MAX_WAITING,
        thread: DedicatedThread | None = None,
        kernels: KernelChoice | None = None,
    ) -> None:
        """N_CTX is one conversation's window; KV_TOKENS the cache shared by all of them.
        PARALLEL answers are generated at once; MAX_WAITING more may wait for a slot, and
        answers beyond those are refused with a BusyError.

        THREAD runs every llama.cpp call (give the transcriber's, so that both share one
        OpenMP team; see `tutor.threads`). KERNELS: llama.cpp's CPU kernels (default:
        `tutor.cpu_kernels.choose()`, which probes AMX once per build).
        """
        if parallel < 1:
            raise ValueError("parallel must be at least 1")
        threads = n_threads or os.cpu_count() or 1
        kv_tokens = kv_tokens or max(DEFAULT_KV_TOKENS, n_ctx)
        self.thread = thread or DedicatedThread("llama.cpp")  # every llama.cpp call runs here
        self.model_path = Path(model_path)

        def context(cells: str) -> LlamaContext:
            return self.thread.run(
                LlamaContext,
                self.model,
                ContextOptions(
                    kv_tokens=kv_tokens,
                    n_seq_max=parallel + MAX_PINNED_PREFIXES,
                    n_batch=max(n_batch, parallel + prefill_chunk),
                    n_threads=threads,
                    kv_type=cells,
                ),
            )

        self.kernels = kernels or choose()
        try:
            self.model = self.thread.run(
                LlamaModel, self.model_path, self.kernels.kernels.extra_buffers
            )
            try:
                self.context = context(kv_type)
            except LlamaError:
                if kv_type != "q8_0":
                    raise
                # A quantized V cache needs flash attention, which llama.cpp's CPU backend does
                # not have for every head size (e.g. small test models): fall back to f16.
                log.warning("this model cannot use a q8_0 KV cache; using f16 (twice the memory)")
                kv_type = "f16"
                self.context = context(kv_type)
        except LlamaError as e:
            raise ModelLoadError(str(e)) from None
        # A transcription a student waits for cuts the answer step in progress short (it is
        # redone after): its wait drops from up to a step to one operation of it.
        self.thread.interrupt = self.context.interrupt
        self.kv_type = kv_type
        self.parallel, self.n_threads = parallel, threads
        self.n_ctx = min(n_ctx, self.context.kv_tokens)
        self.kv_tokens = self.context.kv_tokens
        own_template = self.model.chat_template()
        self.template = own_template or LLAMA3_CHAT_TEMPLATE
        self.has_own_template = own_template is not None
        eos, bos = self.model.eos, self.model.bos
        self._formatters = {  # with and without the assistant header at the end
            flag: Jinja2ChatFormatter(
                template=self.template,
                add_generation_prompt=flag,
                eos_token=self.piece(eos).decode(errors="replace") if eos >= 0 else "",
                bos_token=self.piece(bos).decode(errors="replace") if bos >= 0 else "",
            )
            for flag in (False, True)
        }
        self._scheduler = Scheduler(
            self.model,
            self.context,
            parallel,
            self.n_ctx,
            prefill_chunk,
            ContextStore(cache_bytes),
            MAX_PINNED_PREFIXES,
            max_waiting,
        )
        self._serving = False
        self._lock = threading.Lock()
        self._followed_calls = 0  # the thread's `followed_calls` at the last step
        self.stats = GenerationStats()  # the last finished answer's

    def forget(self) -> None:
        """Drop every cached prefix and conversation: the next prompt is evaluated from scratch."""
        self.thread.run(self._scheduler.reset)

    def pin(self, messages: list[Message]) -> int:
        """Evaluate the prompt prefix of MESSAGES (e.g. a mode's system prompt) once, and keep it.

        Every later prompt that starts with it copies its KV cache instead of evaluating it.
        Returns the number of pinned tokens (0 if no room is left).
        """
        return self.thread.run(self._scheduler.pin, self.render(messages, False).encode())

    # -- prompt ---------------------------------------------------------------------------
    def render(self, messages: list[Message], generation_prompt: bool = True) -> str:
        """MESSAGES in the chat template, ending with the assistant's header unless told not to."""
        return self._formatters[generation_prompt](messages=messages).prompt

    def tokenize(self, text: str | bytes) -> list[int]:
        return self.model.tokenize(text.encode() if isinstance(text, str) else text)

    def count_tokens(self, messages: list[Message]) -> int:
        return len(self.tokenize(self.render(messages)))

    def piece(self, token: int) -> bytes:
        """Exact bytes of one token (special tokens as their text)."""
        return self.model.piece(token)

    # -- counters ---------------------------------------------------------------------------
    def evaluated_tokens(self) -> int:
        """Every token llama.cpp has evaluated so far, by its own counters."""
        return self.thread.run(self.context.evaluated_tokens)

    def steps_cut_short(self) -> int:
        """Decode steps interrupted for a transcription since start-up (each redone after it)."""
        return self._scheduler.steps_cut_short

    def most_sequences_in_a_step(self) -> int:
        """The most conversations one decode step has served since start-up."""
        return self._scheduler.most_sequences_in_a_step

    def activity(self) -> Activity:
        """What the engine holds right now, and how every answer so far ended."""

        def snapshot() -> Activity:
            scheduler = self._scheduler
            return Activity(
                answering=sum(1 for s in scheduler.slots if s.request and not s.request.guess),
                waiting=scheduler.inbox.qsize() + len(scheduler.waiting),
                saved_conversations=len(scheduler.store),
                saved_bytes=scheduler.store.nbytes,
                ended=dict(scheduler.ended),
                prefills_ended=dict(scheduler.prefills_ended),
                early_answers_ready=scheduler.early_answers_ready(),
            )

        return self.thread.run(snapshot)

    def saved_conversations(self) -> tuple[int, int]:
        """(count, bytes) of conversation KV caches saved outside the llama.cpp context."""
        store = self._scheduler.store
        return self.thread.run(lambda: (len(store), store.nbytes))

    # -- generation -------------------------------------------------------------------------
    def stream(
        self,
        messages: list[Message],
        generation: Generation,
        max_tokens: int | None = None,
        cancel: threading.Event | None = None,
        seed: int | None = None,
        stats: GenerationStats | None = None,
        places: bool = False,
    ) -> Iterator[str | InLine]:
        """Yield the answer to MESSAGES piece by piece until end-of-turn, MAX_TOKENS or CANCEL.

        The answer is generated together with the others in flight. Closing the iterator (the
        user pressed Stop, or left) frees its slot at the next decode step. STATS, if given, is
        filled in as the answer goes; SEED overrides the mode's. With PLACES, an `InLine` is
        yielded whenever the answer's place in line for a slot changes.
        Raises BusyError at the first step when the line is full.
        """
        return self._pieces(
            self.render(messages),
            generation,
            max_tokens,
            cancel,
            seed,
            stats if stats is not None else GenerationStats(),
            places,
        )

    def _pieces(
        self,
        prompt: str,
        generation: Generation,
        max_tokens: int | None,
        cancel: threading.Event | None,
        seed: int | None,
        stats: GenerationStats,
        places: bool,
    ) -> Iterator[str | InLine]:
        consumer_gone = threading.Event()
        request = Request(
            prompt.encode(),
            generation,
            max_tokens or generation.max_tokens,
            seed,
            [e for e in (cancel, consumer_gone) if e is not None],
            stats,
        )
        request.stats.prompt = prompt
        # On the first next(): an iterator never read submits nothing. An answer begun early
        # for this very prompt (a hands-free question, during its trailing silence) is taken
        # over instead, its first tokens there already.
        early = self._scheduler.claim(request)
        if early is not None:
            request = early
            self._kick()
        else:
            self._submit(request)
        try:
            while (piece := request.pieces.get()) is not DONE:
                if isinstance(piece, Exception):
                    raise piece
                if places or not isinstance(piece, InLine):
                    yield piece
        finally:
            consumer_gone.set()
            if request.stats is not stats:
                vars(stats).update(vars(request.stats))
            self.stats = stats

    def prefill(
        self,
        messages: list[Message],
        cancel: threading.Event | None = None,
        answer: Generation | None = None,
        max_tokens: int | None = None,
    ) -> None:
        """Evaluate MESSAGES' prompt (all but its last token) into a free slot, ahead of a
        request likely to follow; returns at once. Skipped when no slot is free or someone waits;
        a real request takes the slot back at once (tutor.batching).

        With ANSWER (the settings the request will have, and its MAX_TOKENS), the answer itself
        is begun: its first tokens wait for a `stream` of the same messages and settings, which
        takes them over (an early answer, tutor.batching). CANCEL ends it while unclaimed."""
        request = Request(
            self.render(messages).encode(),
            answer or Generation(),  # a prefill is never sampled
            (max_tokens or answer.max_tokens) if answer else 0,
            None,
            [cancel] if cancel is not None else [],
            GenerationStats(),
            prefill_only=answer is None,
            early=answer is not None,
        )
        if answer is not None:
            request.stats.prompt = request.prompt.decode()
            self._scheduler.offer(request)
        self._submit(request)

    def answer(self, messages: list[Message], generation: Generation, **kwargs) -> str:
        """The whole answer at once."""
        return "".join(self.stream(messages, generation, **kwargs))

    def _submit(self, request: Request) -> None:
        self._scheduler.inbox.put(request)
        self._kick()

    def _kick(self) -> None:
        """Make sure the step loop runs (it stops while there is nothing to do)."""
        with self._lock:
            if not self._serving:
                self._serving = True
                self.thread.submit(self._serve_step)

    def _serve_step(self) -> None:
        """One decode step, on the native thread; the next step queues behind other jobs there
        (a transcription), so they take turns a step at a time."""
        try:
            if self.thread.followed_calls != self._followed_calls:  # a transcription just ran
                self._followed_calls = self.thread.followed_calls
                self._scheduler.await_request(FOLLOW_UP_WAIT_S)
            self._scheduler.step()
        except Exception as e:  # every waiting caller must hear of it
            log.exception("the decode loop failed; ending the answers in flight")
            self._scheduler.fail_all(e)
        with self._lock:
            if not self._scheduler.has_work():
                self._serving = False
                return
        self.thread.submit(self._serve_step)
