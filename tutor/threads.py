"""One dedicated OS thread for the native engines (llama.cpp and PyTorch share it in the app).

Both parallelize with OpenMP (one libgomp in the process), whose thread team belongs to the
thread that calls in. Web servers call from whichever pool thread is free, and every new caller
gets a team of its own while the old teams' threads still spin: on 2 cores that cost llama.cpp
~20 % of its speed. Worse, once the process holds more OpenMP threads than cores, libgomp cuts
its spin-wait short, and ggml synchronizes every operation with an OpenMP barrier: a Whisper
team beside llama.cpp's cost generation ~30 % even while Whisper was idle (`python -m bench`).
Sending every native call through one thread keeps one team of as many threads as cores; the
engines take turns, a decode step at a time. An urgent call (the transcription a student waits
for) need not wait for the whole step in progress: it interrupts it (`interrupt`, set by the
engine: llama.cpp stops within one operation, and the step is redone after the call).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

T = TypeVar("T")


class Interrupt(Protocol):
    """A flag that cuts the job in progress short (tutor.llama_runtime.DecodeInterrupt)."""

    def set(self) -> None: ...

    def clear(self) -> None: ...


class DedicatedThread:
    """Runs submitted calls one at a time, always on the same thread."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        # Calls run so far whose callers usually queue more work at once (`run_followed`).
        self.followed_calls = 0
        # Cuts the job in progress short for an urgent call; set by the owner of the jobs that
        # can be (the llama.cpp engine). None: urgent calls wait their turn like any other.
        self.interrupt: Interrupt | None = None

    def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """FN(*ARGS, **KWARGS) on the dedicated thread; waits for it and returns its result."""
        return self._executor.submit(fn, *args, **kwargs).result()

    def run_followed(self, fn: Callable[..., T], *args, urgent: bool = False, **kwargs) -> T:
        """`run`, for a call whose result usually brings more work within milliseconds (a
        transcription: its words' prompt); the job after it may wait that long for it.
        URGENT (someone waits for its result): the job in progress is cut short if it can be,
        and runs again after this call."""
        interrupt = self.interrupt if urgent else None

        def counted() -> T:
            if interrupt is not None:
                interrupt.clear()  # this call's turn has come: nothing left to cut short
            try:
                return fn(*args, **kwargs)
            finally:
                self.followed_calls += 1

        future = self._executor.submit(counted)
        if interrupt is not None:
            # After the submit: a job that starts from now on runs after this call. (Should
            # this call have started already, the next step is cut short at once, and redone.)
            interrupt.set()
        return future.result()

    def submit(self, fn: Callable[..., T], *args, **kwargs):
        """Queue FN on the dedicated thread; returns a Future."""
        return self._executor.submit(fn, *args, **kwargs)
