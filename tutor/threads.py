"""One dedicated OS thread per native engine (llama.cpp, PyTorch).

Both parallelize with OpenMP, whose thread team belongs to the thread that calls in. Web servers
call from whichever pool thread is free, and every new caller gets a team of its own while the
old teams' threads still spin: on 2 cores that cost llama.cpp ~20 % of its speed
(`python -m bench`). Sending every call through one thread keeps one team.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class DedicatedThread:
    """Runs submitted calls one at a time, always on the same thread."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """FN(*ARGS, **KWARGS) on the dedicated thread; waits for it and returns its result."""
        return self._executor.submit(fn, *args, **kwargs).result()

    def submit(self, fn: Callable[..., T], *args, **kwargs):
        """Queue FN on the dedicated thread; returns a Future."""
        return self._executor.submit(fn, *args, **kwargs)
