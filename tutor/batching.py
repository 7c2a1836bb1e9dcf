"""Continuous batching: up to N conversations decode together in one llama.cpp context.

On a CPU one decode step reads every weight once, however many sequences it serves, so N
students sharing each step get far more tokens per second than N students taking turns. Each
step (`Scheduler.step`, always on the llama.cpp thread):

1. takes new requests, ends cancelled ones (Stop, a closed page) before spending work on them;
2. admits waiting requests into free slots while the KV cache has room for their worst case;
   a new prompt starts from the longest cached prefix of its text: the slot's own previous
   conversation, another sequence in the cache (a live answer or a pinned mode prompt, copied
   by sharing cells), or a saved conversation state;
3. decodes one token for every generating conversation plus at most `prefill_chunk` prompt
   tokens of newcomers (chunked prefill: a long prompt never freezes the others' streams for
   more than one chunk; alone, a prompt goes in batches of n_batch); a step in which a
   newcomer samples its first token leaves the others' tokens out (prompts first: its wait is
   the step's cost, which grows with its tokens), never two steps in a row; a step may be cut
   short for a transcription someone waits for (tutor.threads), and is then redone whole, to
   the end this time;
4. samples each sequence's next token with its own llama.cpp sampler chain and streams it.

A prefill request (`Request.prefill_only`) evaluates a prompt that is likely to come, and stops
there: the question a hands-free student has just spoken, while the trailing silence that will
send it runs. It takes only a slot that is free while no one waits, and gives the slot up to any
real request; a real request for the same prompt then finds all but its last token cached. A
prefill whose prompt a real request already holds (its question came first) is dropped.

An early answer (`Request.early`) goes one step further, as voice assistants do at a pause that
may end the turn: it is the answer itself, begun before its question is asked; it samples its
first EARLY_TOKENS and waits. The question, when it comes with the same prompt and settings,
claims it (`Scheduler.claim`, on the asking thread, at once: no step to wait for) and reads the
tokens already there; from then on it is that question's answer. Until claimed it is a guess
like a prefill: it yields its slot to any real request, ends when its words are outdated, and is
dropped EARLY_KEPT_S after its tokens were ready if no question came.

Sequence ids: 0..N-1 are the slots, N.. the pinned prefixes (mode prompts).
"""

from __future__ import annotations

import codecs
import collections
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from tutor.context_cache import Context, ContextStore
from tutor.errors import BusyError, TutorError
from tutor.llama_runtime import (
    DECODE_ABORTED,
    PENALTY_LAST_N,
    LlamaContext,
    LlamaError,
    LlamaModel,
    Sampler,
)
from tutor.modes import Generation

log = logging.getLogger(__name__)
DONE = object()  # the end of a stream of pieces
# An early answer samples this many tokens (a few words), then waits for its question: enough to
# show the answer's first words at once, few enough that a wrong guess costs the others little.
EARLY_TOKENS = 8
EARLY_KEPT_S = 5.0  # an early answer no question claimed this long after its tokens is dropped


@dataclass(frozen=True)
class InLine:
    """A marker in a stream of pieces: the request waits for a slot, at this place in line."""

    place: int  # 1: next to be served


@dataclass
class GenerationStats:
    """What one answer cost."""

    prompt: str = ""  # the rendered prompt
    prompt_tokens: int = 0  # tokens in the prompt
    reused_tokens: int = 0  # prompt tokens whose KV cache was reused
    reused_from: str = ""  # "own" (the slot's last conversation), "sequence", "pinned", "saved"
    evaluated_tokens: int = 0  # prompt tokens evaluated for this answer
    generated_tokens: int = 0
    queued_s: float = 0.0  # waiting for a slot
    time_to_first_token_s: float = 0.0
    total_s: float = 0.0
    stopped: str = ""  # "eot", "max_tokens", "cancelled" or "error"
    begun_early: bool = False  # begun before it was asked (an early answer its question claimed)

    @property
    def tokens_per_s(self) -> float:
        gen_time = self.total_s - self.time_to_first_token_s
        return (self.generated_tokens - 1) / gen_time if gen_time > 0 else 0.0


@dataclass
class Request:
    """One answer to generate; its pieces of text go to `pieces`, then DONE (or an exception)."""

    prompt: bytes
    generation: Generation
    max_tokens: int
    seed: int | None
    stops: list[threading.Event]
    stats: GenerationStats
    pieces: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    submitted: float = field(default_factory=time.perf_counter)
    place: int = 0  # the place in line last reported (0: none yet, or being served)
    prefill_only: bool = False  # evaluate the prompt (all but its last token) and stop
    early: bool = False  # an answer begun before its question is asked (EARLY_TOKENS, then wait)
    claimed: bool = False  # an early answer its question has taken over
    withdrawn: bool = False  # an early answer no question may claim any more
    ready_since: float | None = None  # when an early answer's tokens were all there

    def cancelled(self) -> bool:
        return any(stop.is_set() for stop in self.stops)

    @property
    def guess(self) -> bool:
        """Made for a question not asked (yet): it yields to any real request."""
        return self.prefill_only or (self.early and not self.claimed)

    @property
    def waits_for_its_question(self) -> bool:
        """An early answer with its first tokens sampled, not claimed: it takes no steps."""
        return self.early and not self.claimed and self.stats.generated_tokens >= EARLY_TOKENS


@dataclass
class Slot:
    """A sequence of the KV cache and the request it serves (None: idle, content kept warm)."""

    seq: int
    context: Context = field(default_factory=Context)  # what the KV cache holds for this seq
    shared: int = 0  # leading tokens whose cells belong to a pinned prefix (not this slot's)
    request: Request | None = None
    reserved: int = 0  # KV cells this request may own at most (prompt + answer)
    pending: list[int] = field(default_factory=list)  # tokens to decode next
    pending_text: list[bytes] = field(default_factory=list)
    budget: int = 0  # answer tokens allowed
    generating: bool = False  # past the prompt
    sampler: Sampler | None = None
    decoder: codecs.IncrementalDecoder | None = None
    last_used: float = 0.0

    @property
    def own_cells(self) -> int:
        return self.reserved if self.request else len(self.context.tokens) - self.shared


@dataclass
class _Plan:
    """Where a new prompt's cached prefix comes from, and the tokens that follow it."""

    source: str  # "", "own", "sequence", "pinned", "saved"
    reuse: int  # tokens of the prefix reused
    tokens: list[int]  # the whole prompt
    seq: int = -1  # the source sequence ("sequence", "pinned")
    saved_key: int | None = None  # the source in the store ("saved")
    shared: int = 0  # of the reused tokens, those whose cells belong to a pinned prefix
    cells: int = 0  # KV cells this request may own at most


class Scheduler:
    """Slots, pinned prefixes, saved states and the step loop over one llama.cpp context."""

    def __init__(
        self,
        model: LlamaModel,
        context: LlamaContext,
        n_slots: int,
        n_ctx: int,
        prefill_chunk: int,
        store: ContextStore,
        max_pinned: int,
        max_waiting: int,
    ) -> None:
        """MAX_WAITING bounds the line: requests beyond it that find no slot are refused."""
        self.model, self.context, self.store = model, context, store
        self.max_waiting = max_waiting
        self.n_ctx = n_ctx  # one conversation's window
        self.prefill_chunk = prefill_chunk
        self.max_pinned = max_pinned
        self.slots = [Slot(seq) for seq in range(n_slots)]
        self.pinned: dict[int, Context] = {}  # seq id → prefix
        self.inbox: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self.waiting: deque[Request] = deque()
        self.prefills: list[Request] = []  # taken from the inbox, admitted in this step or never
        # Early answers a question may claim, by prompt; shared with the asking threads.
        self._early: dict[bytes, Request] = {}
        self._early_lock = threading.Lock()
        self.most_sequences_in_a_step = 0  # since start-up: how far batching went
        self._last_step_prompts_only = False  # the last step left the others' tokens out
        self.steps_cut_short = 0  # decode steps interrupted for a transcription (redone after)
        self._last_step_cut_short = False
        self.ended: collections.Counter[str] = collections.Counter()  # requests, by how
        self.prefills_ended: collections.Counter[str] = collections.Counter()

    # -- state ------------------------------------------------------------------------------
    def has_work(self) -> bool:
        return (
            not self.inbox.empty()
            or bool(self.waiting)
            or any(slot.request and not slot.request.waits_for_its_question for slot in self.slots)
        )

    def early_answers_ready(self) -> int:
        """Early answers with their first tokens (or whole), waiting for their questions."""
        with self._early_lock:
            return sum(
                1 for r in self._early.values() if r.ready_since is not None and not r.withdrawn
            )

    def offer(self, request: Request) -> None:
        """Let a question claim the early answer REQUEST (to be submitted next)."""
        with self._early_lock:
            for prompt in [p for p, r in self._early.items() if r.withdrawn or _expired(r)]:
                del self._early[prompt]
            replaced = self._early.get(request.prompt)
            if replaced is not None:
                replaced.withdrawn = True
            self._early[request.prompt] = request

    def claim(self, request: Request) -> Request | None:
        """The early answer begun for REQUEST's prompt and settings, now REQUEST's (its stops,
        its clock, its place), or None. On the asking thread; the tokens it has sampled are in
        its `pieces` already."""
        with self._early_lock:
            early = self._early.get(request.prompt)
            if (
                early is None
                or early.withdrawn
                or early.cancelled()  # its words are outdated
                or _expired(early)
                or (early.generation, early.max_tokens, early.seed)
                != (request.generation, request.max_tokens, request.seed)
            ):
                return None
            del self._early[request.prompt]
            early.claimed = True
            early.stops = request.stops
            early.submitted = request.submitted
            stats = early.stats
            stats.begun_early, stats.queued_s = True, 0.0
            if stats.generated_tokens:
                stats.time_to_first_token_s = 0.0
            self.prefills_ended["claimed"] += 1
            return early

    def _let_go(self, request: Request) -> bool:
        """Whether REQUEST may be ended as a guess is (superseded, outdated, expired): any
        request but an early answer its question has claimed. An early answer let go can no
        longer be claimed."""
        if not request.early:
            return True
        with self._early_lock:
            if request.claimed:
                return False
            request.withdrawn = True
            if self._early.get(request.prompt) is request:
                del self._early[request.prompt]
            return True

    def _cancelled(self, request: Request) -> bool:
        """Whether REQUEST is cancelled, and may end for it: an early answer claimed meanwhile is
        judged by its question's stops (set under the lock before the claim is seen)."""
        return request.cancelled() and (self._let_go(request) or request.cancelled())

    def reset(self) -> None:
        """Forget every cached prefix and saved state (only while no question is answered;
        guesses in slots end: their cache goes too)."""
        for slot in self.slots:
            if slot.request and slot.request.guess and self._let_go(slot.request):
                self._finish(slot, "cancelled")
        self.context.clear()
        for slot in self.slots:
            slot.context, slot.shared = Context(), 0
        self.pinned.clear()
        self.store.clear()

    def pin(self, text: bytes) -> int:
        """Evaluate TEXT once into a sequence of its own, kept for every prompt that starts so.

        Returns how many tokens are pinned (0 when all pinned sequences are taken).
        """
        for prefix in self.pinned.values():
            if prefix.text == text:
                return len(prefix.tokens)
        if len(self.pinned) >= self.max_pinned:
            log.warning("not pinning another prefix: %d are pinned already", self.max_pinned)
            return 0
        seq = next(
            s
            for s in range(len(self.slots), len(self.slots) + self.max_pinned)
            if s not in self.pinned
        )
        tokens = self.model.tokenize(text)
        pinned_tokens = sum(len(p.tokens) for p in self.pinned.values())
        if pinned_tokens + len(tokens) > self.context.kv_tokens // 2:
            log.warning("not pinning a %d-token prefix: the KV cache is too small", len(tokens))
            return 0
        for start in range(0, len(tokens), self.context.n_batch):
            self.context.clear_batch()
            for pos, token in enumerate(tokens[start : start + self.context.n_batch], start):
                self.context.add(token, pos, seq, False)
            if self.context.decode() != 0:
                self.context.remove(seq)
                return 0
        prefix = Context()
        prefix.extend(tokens, [self.model.piece(t) for t in tokens])
        self.pinned[seq] = prefix
        return len(tokens)

    # -- the step -----------------------------------------------------------------------------
    def await_request(self, timeout_s: float) -> None:
        """Wait up to TIMEOUT_S for a request if none has come (it joins the next step)."""
        if not self.inbox.empty():
            return
        try:
            request = self.inbox.get(timeout=timeout_s)
        except queue.Empty:
            return
        self._take(request)

    def _take(self, request: Request) -> None:
        """A request from the inbox: guesses are admitted in this step or never; questions wait."""
        (self.prefills if request.guess else self.waiting).append(request)

    def step(self) -> None:
        """One round: admit, decode one batch, sample. Returns at once when there is nothing to
        do."""
        while not self.inbox.empty():
            self._take(self.inbox.get())
        self._end_cancelled()
        self._admit()
        self._admit_prefills()
        self._refuse_beyond_the_line()
        active = [slot for slot in self.slots if slot.request]
        if not active:
            return
        ctx = self.context
        ctx.clear_batch()
        generating = [s for s in active if s.generating and not s.request.waits_for_its_question]
        room = ctx.n_batch - len(generating)
        if generating:
            room = min(room, self.prefill_chunk)
        chunks = self._prompt_chunks([s for s in active if not s.generating], room)
        prompts_first = self._prompts_first(generating, chunks)
        if prompts_first:
            generating = []  # their next tokens come in the next step
        outputs: list[tuple[Slot, int]] = []
        taken: list[tuple[Slot, int, bool]] = []  # (slot, tokens in the batch, sampled ones)
        for slot in generating:
            outputs.append(
                (slot, ctx.add(slot.pending[0], len(slot.context.tokens), slot.seq, True))
            )
            taken.append((slot, 1, True))
        for slot, n in chunks:
            start = len(slot.context.tokens)
            for k, token in enumerate(slot.pending[:n]):
                last = k == n - 1 and _samples_after(slot, n)
                index = ctx.add(token, start + k, slot.seq, last)
                if last:
                    outputs.append((slot, index))
            taken.append((slot, n, False))
        if not taken:
            return  # only early answers waiting for their questions
        self.most_sequences_in_a_step = max(self.most_sequences_in_a_step, len(taken))
        # Cut short for a transcription a student waits for (tutor.threads), a step keeps
        # nothing, and the next plans afresh (with the words it brings); never two in a row, so
        # the answers go on at least a step per transcription, however many students speak.
        status = ctx.decode(interruptible=not self._last_step_cut_short)
        self._last_step_cut_short = status == DECODE_ABORTED
        if status == DECODE_ABORTED:
            self.steps_cut_short += 1
            return
        if status != 0:
            raise LlamaError(
                f"llama_decode failed with status {status} "
                f"({ctx.n_batched} tokens, {len(active)} sequences)"
            )
        self._last_step_prompts_only = prompts_first
        for slot, n, generated in taken:
            if not generated:
                slot.request.stats.evaluated_tokens += n
            slot.context.extend(slot.pending[:n], slot.pending_text[:n], generated)
            del slot.pending[:n], slot.pending_text[:n]
            if slot.request.prefill_only and not slot.pending:
                self._finish(slot, "done")
        for slot, index in outputs:
            slot.generating = True
            self._emit(slot, slot.sampler.sample(ctx, index))

    @staticmethod
    def _prompt_chunks(newcomers: list[Slot], room: int) -> list[tuple[Slot, int]]:
        """(slot, prompt tokens) of NEWCOMERS in this step: the earliest asked first, ROOM in
        all."""
        chunks = []
        for slot in sorted(newcomers, key=lambda s: s.request.submitted):
            if room <= 0:
                break
            n = min(room, len(slot.pending))
            chunks.append((slot, n))
            room -= n
        return chunks

    def _prompts_first(self, generating: list[Slot], chunks: list[tuple[Slot, int]]) -> bool:
        """Whether this step evaluates the newcomers' prompt CHUNKS without the GENERATING
        answers' tokens: when an answer samples its first token in it. On a CPU a step's cost
        grows with its tokens, so the others' tokens would delay that first token by their share
        (a hands-free answer's last words and 4 others' tokens: ~30 %; the others' next tokens
        come one step later instead). Never two such steps in a row: the others' streams wait at
        most one step for each."""
        return (
            bool(generating)
            and not self._last_step_prompts_only
            and any(_samples_after(slot, n) for slot, n in chunks)
        )

    def fail_all(self, error: Exception) -> None:
        """After an unexpected error: end every request with it, and start from a clean cache."""
        for slot in self.slots:
            if slot.request:
                self._let_go(slot.request)  # an early answer's question would only hear the error
                self._finish(slot, "error", error)
        while self.waiting:
            self._end(self.waiting.popleft(), "error", error)
        self.reset()

    # -- admission ------------------------------------------------------------------------------
    def _end_cancelled(self) -> None:
        for slot in self.slots:
            request = slot.request
            if request is None:
                continue
            if (request.withdrawn and self._let_go(request)) or self._cancelled(request):
                self._finish(slot, "cancelled")
            elif request.waits_for_its_question and _expired(request) and self._let_go(request):
                self._finish(slot, "expired")
        for request in [r for r in self.waiting if r.cancelled()]:
            self.waiting.remove(request)
            self._end(request, "cancelled", DONE)

    def _admit(self) -> None:
        if self.waiting:  # a real request outranks a guess: guesses give their slots up
            for slot in self.slots:
                if slot.request and slot.request.guess and self._let_go(slot.request):
                    self._finish(slot, "superseded")
        while self.waiting:
            free = [slot for slot in self.slots if not slot.request]
            if not free:
                return
            request = self.waiting[0]
            slot = self._slot_for(request, free)
            plan = self._plan(request, slot)
            while self._cells_in_use(slot) + plan.cells > self.context.kv_tokens:
                # Room: idle conversations go to the store first, pinned prefixes last.
                if not (self._evict_one_idle(keep=slot) or self._unpin_one()):
                    break
                plan = self._plan(request, slot)
            if self._cells_in_use(slot) + plan.cells > self.context.kv_tokens:
                if any(s.request for s in self.slots):
                    return  # room comes back when answers finish
                self._end(
                    self.waiting.popleft(),
                    "error",
                    TutorError(
                        "This conversation is too long for the tutor's memory. Please start a new "
                        "conversation."
                    ),
                )
                continue
            self.waiting.popleft()
            self._start(slot, request, plan)

    def _admit_prefills(self) -> None:
        """Each new guess (prefill, early answer) into a free slot with room, while no one
        waits; else it is dropped. So is one whose prompt a real request already holds (its
        question was asked first: a guess then would only evaluate the same tokens twice)."""
        asked = [slot.request.prompt for slot in self.slots if slot.request]
        for request in self.prefills:
            free = [slot for slot in self.slots if not slot.request]
            if any(prompt.startswith(request.prompt) for prompt in asked):
                reason = "asked"
            elif self.waiting or not free or request.cancelled() or request.withdrawn:
                reason = "skipped"
            else:
                slot = self._slot_for(request, free)
                plan = self._plan(request, slot)
                if self._cells_in_use(slot) + plan.cells <= self.context.kv_tokens:
                    self._start(slot, request, plan)
                    continue
                reason = "skipped"  # it would push others' out
            if self._let_go(request):
                self._end(request, reason, DONE)
            else:  # claimed since this step began: a question now, served from the next step
                self.waiting.append(request)
        self.prefills.clear()

    @staticmethod
    def _slot_for(request: Request, free: list[Slot]) -> Slot:
        """The free slot already holding most of REQUEST's prompt; else an empty one; else the
        least recently used."""
        return max(
            free,
            key=lambda s: (
                s.context.reusable_tokens(request.prompt),
                not s.context.tokens,
                -s.last_used,
            ),
        )

    def _refuse_beyond_the_line(self) -> None:
        """The newest requests beyond MAX_WAITING hear "busy" at once; the rest hear their place."""
        while len(self.waiting) > self.max_waiting:
            self._end(self.waiting.pop(), "busy", BusyError())
        for place, request in enumerate(self.waiting, start=1):
            if request.place != place:
                request.place = place
                request.pieces.put(InLine(place))

    def _cells_in_use(self, excluding: Slot) -> int:
        return sum(len(p.tokens) for p in self.pinned.values()) + sum(
            slot.own_cells for slot in self.slots if slot is not excluding
        )

    def _evict_one_idle(self, keep: Slot) -> bool:
        """Save the least recently used idle slot's content to the store and free its cells."""
        idle = [s for s in self.slots if not s.request and s is not keep and s.context.tokens]
        if not idle:
            return False
        slot = min(idle, key=lambda s: s.last_used)
        self._save(slot)
        self.context.remove(slot.seq)
        slot.context, slot.shared = Context(), 0
        return True

    def _unpin_one(self) -> bool:
        """Drop the newest pinned prefix; sequences that shared its cells now own them."""
        if not self.pinned:
            return False
        self.context.remove(max(self.pinned))
        del self.pinned[max(self.pinned)]
        for slot in self.slots:
            slot.reserved += slot.shared if slot.request else 0
            slot.shared = 0
        return True

    def _plan(self, request: Request, slot: Slot) -> _Plan:
        """The longest cached prefix of REQUEST's prompt for SLOT, and what it costs in KV cells.

        Candidates, ties going to the cheapest: the slot's own content (kept in place), other
        sequences (cells shared by a copy), pinned prefixes, saved states (restored).
        """
        prompt = request.prompt
        canonical = self.model.tokenize(prompt)
        best, source = _Plan("", 0, canonical), Context()
        candidates = (
            [("own", slot.context, slot.seq, None, slot.shared)]
            + [
                ("sequence", other.context, other.seq, None, other.shared)
                for other in self.slots
                if other is not slot
            ]
            + [
                ("pinned", prefix, seq, None, len(prefix.tokens))
                for seq, prefix in self.pinned.items()
            ]
            + [("saved", saved, -1, key, 0) for key, saved in self.store.items()]
        )
        for kind, context, seq, key, shared in candidates:
            n, tokens = context.reuse_for(prompt, canonical, self.model.tokenize)
            if n > best.reuse:
                best = _Plan(kind, n, tokens, seq=seq, saved_key=key, shared=min(n, shared))
                source = context
        if best.tokens and best.reuse >= len(best.tokens):  # the last prompt token must be
            best.reuse = len(best.tokens) - 1  # evaluated, for its logits
            best.shared = min(best.shared, best.reuse)
        budget = max(0, min(request.max_tokens, self.n_ctx - len(best.tokens)))
        best.cells = len(best.tokens) + budget - best.shared
        if best.source == "saved":  # restoring brings back the whole saved sequence first
            best.cells = max(best.cells, len(source.tokens))
        return best

    def _start(self, slot: Slot, request: Request, plan: _Plan) -> None:
        """Put REQUEST in SLOT, its cache starting from PLAN's prefix."""
        ctx = self.context
        # Taken out first: saving the slot's content below may push it out of the store.
        saved = self.store.pop(plan.saved_key) if plan.source == "saved" else None
        if plan.source != "own" or plan.reuse < len(slot.context.tokens):
            self._save(slot)  # the slot's last conversation may come back
        if plan.source == "own":
            ctx.remove(slot.seq, plan.reuse, -1)
            slot.context = slot.context.prefix(plan.reuse)
        elif plan.source in ("sequence", "pinned"):
            source = (
                self.slots[plan.seq].context if plan.source == "sequence" else self.pinned[plan.seq]
            )
            ctx.remove(slot.seq)
            ctx.copy(plan.seq, slot.seq, plan.reuse)
            slot.context = source.prefix(plan.reuse)
        elif saved is not None:
            if ctx.restore(saved.blob, slot.seq):
                ctx.remove(slot.seq, plan.reuse, -1)
                slot.context = saved.prefix(plan.reuse)
            else:  # did not fit after all: evaluate from scratch
                ctx.remove(slot.seq)
                plan = _Plan("", 0, plan.tokens, cells=plan.cells)
                slot.context = Context()
        else:
            ctx.remove(slot.seq)
            slot.context = Context()
        stats = request.stats
        stats.prompt_tokens = len(plan.tokens)
        stats.reused_tokens, stats.reused_from = plan.reuse, plan.source
        stats.queued_s = time.perf_counter() - request.submitted
        slot.shared = plan.shared
        slot.request, slot.reserved = request, plan.cells
        slot.budget = min(request.max_tokens, self.n_ctx - len(plan.tokens))
        # A prefill leaves the last token to the request that samples after it (its logits).
        slot.pending = plan.tokens[plan.reuse : len(plan.tokens) - request.prefill_only]
        slot.pending_text = [self.model.piece(t) for t in slot.pending]
        slot.generating = False
        if request.prefill_only:
            if not slot.pending:
                self._finish(slot, "done")  # cached already
            return
        slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        slot.sampler = Sampler(self.model.n_vocab, request.generation, request.seed)
        # The prompt's turns end with the end-of-turn token: counted by the repetition penalty,
        # it would be penalised, and the model would not stop (SmolLM2 ran hint answers to the
        # token limit). The penalty sees the prompt without its end-of-generation tokens.
        tail = plan.tokens[-PENALTY_LAST_N:]
        slot.sampler.accept([t for t in tail if not self.model.is_end_of_generation(t)])
        if slot.budget <= 0:
            self._finish(slot, "max_tokens")

    def _save(self, slot: Slot) -> None:
        """Keep SLOT's content in the store, unless it is empty or kept elsewhere already."""
        tokens = slot.context.tokens
        if (
            not tokens
            or self.store.covers(tokens)
            or any(
                other is not slot and other.context.tokens[: len(tokens)] == tokens
                for other in self.slots
            )
        ):
            return
        saved = slot.context.prefix(len(tokens))
        saved.blob = self.context.save(slot.seq)
        self.store.put(saved)

    # -- output -----------------------------------------------------------------------------------
    def _emit(self, slot: Slot, token: int) -> None:
        request = slot.request
        stats = request.stats
        if stats.generated_tokens == 0:
            stats.time_to_first_token_s = time.perf_counter() - request.submitted
        if self.model.is_end_of_generation(token):
            self._finish(slot, "eot")
            return
        stats.generated_tokens += 1
        text = slot.decoder.decode(self.model.piece(token))
        if text:
            request.pieces.put(text)
        # Spelled as the user saw it (a stray byte of a broken character shows as U+FFFD), so
        # that the next prompt, rendered from that text, still matches the cache.
        slot.pending, slot.pending_text = [token], [text.encode()]
        if self._cancelled(request):
            self._finish(slot, "cancelled")
        elif stats.generated_tokens >= slot.budget:
            self._finish(slot, "max_tokens")
        elif request.waits_for_its_question:
            request.ready_since = time.perf_counter()

    def _finish(self, slot: Slot, reason: str, error: Exception | None = None) -> None:
        request = slot.request
        if slot.decoder is not None and error is None:
            tail = slot.decoder.decode(b"", final=True)
            if tail:
                request.pieces.put(tail)
        if slot.sampler:
            slot.sampler.close()
        slot.request, slot.sampler, slot.decoder = None, None, None
        slot.pending, slot.pending_text, slot.reserved = [], [], 0
        slot.generating = False
        slot.last_used = time.perf_counter()
        self._end(request, reason, error if error is not None else DONE)

    def _end(self, request: Request, reason: str, last: object) -> None:
        """The end of REQUEST, for REASON: LAST (DONE or an exception) closes its stream."""
        request.stats.stopped = reason
        request.stats.total_s = time.perf_counter() - request.submitted
        if request.early and request.ready_since is None:  # a whole answer, still claimable
            request.ready_since = time.perf_counter()
        (self.prefills_ended if request.guess else self.ended)[reason] += 1
        request.pieces.put(last)


def _samples_after(slot: Slot, n: int) -> bool:
    """Whether SLOT's request samples its first token once N more prompt tokens are in (a
    prefill samples nothing)."""
    return n == len(slot.pending) and not slot.request.prefill_only


def _expired(early: Request) -> bool:
    """Whether EARLY's tokens have waited for its question longer than EARLY_KEPT_S."""
    ready = early.ready_since
    return ready is not None and time.perf_counter() - ready > EARLY_KEPT_S
