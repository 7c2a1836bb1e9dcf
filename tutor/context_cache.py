"""What a KV cache holds, matched by text; and saved KV caches, bounded in bytes.

One llama.cpp context serves every student, with one sequence per conversation slot. When a
slot is needed for another conversation, what it held is saved here (llama.cpp's per-sequence
state), and when that student comes back their saved context is put back. Contexts are matched
by text: a context is a run of tokens together with the exact bytes they spell, so the longest
text that starts the new prompt wins, and no session ids are needed (API clients get the same
reuse). The store is bounded in bytes and forgets the least recently used contexts first.
"""

from __future__ import annotations

import bisect
import ctypes
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass
class Context:
    """Tokens in a KV cache, the bytes they spell, and (when saved) llama.cpp's copy of the
    cache."""

    tokens: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # byte offset where each token's text ends
    generated: list[bool] = field(default_factory=list)  # sampled by the model, not tokenized
    text: bytes = b""
    blob: ctypes.Array | None = None

    @property
    def nbytes(self) -> int:
        return len(self.blob) if self.blob is not None else 0

    def prefix(self, n: int) -> Context:
        """The first N tokens of this context (without a saved cache)."""
        return Context(
            self.tokens[:n],
            self.ends[:n],
            self.generated[:n],
            self.text[: self.ends[n - 1]] if n else b"",
        )

    def extend(self, tokens: list[int], texts: list[bytes], generated: bool = False) -> None:
        """Append TOKENS, spelled by TEXTS (one per token), sampled by the model or not."""
        for token, text in zip(tokens, texts, strict=True):
            self.tokens.append(token)
            self.text += text
            self.ends.append(len(self.text))
            self.generated.append(generated)

    def reuse_for(
        self, prompt: bytes, canonical: list[int], tokenize: Callable[[bytes], list[int]]
    ) -> tuple[int, list[int]]:
        """(tokens of this context that PROMPT can reuse, PROMPT's tokens when it does).

        CANONICAL is PROMPT tokenized as a whole. A prompt's tokens must not depend on what
        happens to be cached (another student's text matching up to "topic 1" would split
        "topic 10" differently), so a prefix is reused where its tokens are the canonical ones.
        The one exception is the model's own answer: a follow-up reuses the answer's tokens as
        they were sampled (re-tokenizing its text may split it otherwise), up to where the
        text the student saw still matches, and tokenizes only the rest.
        """
        n = self.reusable_tokens(prompt)
        if n and self.generated[n - 1]:
            return n, self.tokens[:n] + tokenize(prompt[self.ends[n - 1] :])
        return len(os.path.commonprefix([self.tokens, canonical])), canonical

    def reusable_tokens(self, text: bytes) -> int:
        """How many leading tokens spell a prefix of TEXT."""
        n = bisect.bisect_right(self.ends, _common_prefix(self.text, text))
        # A token that added no visible text (the first byte of a character split across
        # tokens) matches zero bytes: at the end of a match it proves nothing.
        while n and self.ends[n - 1] == (self.ends[n - 2] if n > 1 else 0):
            n -= 1
        return n


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # invariant: a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class ContextStore:
    """Saved contexts, least recently used first out, within a byte budget."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[int, Context] = OrderedDict()
        self._next_key = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return sum(ctx.nbytes for ctx in self._items.values())

    def items(self) -> Iterator[tuple[int, Context]]:
        """(key, saved context), least recently used first."""
        return iter(list(self._items.items()))

    def covers(self, tokens: list[int]) -> bool:
        """Whether a saved context already starts with TOKENS (saving them again is pointless)."""
        return any(ctx.tokens[: len(tokens)] == tokens for ctx in self._items.values())

    def put(self, ctx: Context) -> None:
        """Save CTX, dropping saved contexts it extends, then the oldest ones over budget."""
        for key in [
            k for k, old in self._items.items() if ctx.tokens[: len(old.tokens)] == old.tokens
        ]:
            del self._items[key]
        if ctx.nbytes > self.max_bytes:
            return
        self._items[self._next_key] = ctx
        self._next_key += 1
        while self.nbytes > self.max_bytes:
            self._items.popitem(last=False)

    def peek(self, key: int) -> Context:
        return self._items[key]

    def pop(self, key: int) -> Context:
        return self._items.pop(key)

    def clear(self) -> None:
        self._items.clear()
