"""llama.cpp's log lines into Python's logging (logger "llama.cpp"), at llama.cpp's own levels.

llama-cpp-python 0.3.36 prints them to stderr itself, with a table of levels one off from
llama.cpp's (ggml.h: 1 debug, 2 info, 3 warn, 4 error): its filter shows warnings as errors
and hides errors as debug. This module's callback replaces it (`llama_log_set`, public API).

A decode step cut short on purpose (tutor.llama_runtime.DecodeInterrupt) makes llama.cpp
complain in an error and a warning per sequence; `held_back` keeps the lines of a decode that
may be, so that its caller logs them as errors, or as the debug lines they are.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import llama_cpp

LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
CONTINUED = 5  # ggml's level for the rest of the previous line
log = logging.getLogger("llama.cpp")
log.setLevel(logging.WARNING)  # model loading alone logs hundreds of info lines

_state = threading.local()  # per thread: the last line's level, lines held back


@llama_cpp.llama_log_callback
def _log_line(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    level = getattr(_state, "level", logging.INFO) if level == CONTINUED else LEVELS.get(level)
    _state.level = level or logging.INFO
    message = text.decode(errors="replace").rstrip("\n")
    held = getattr(_state, "held", None)
    if held is not None:
        held.append((_state.level, message))
    else:
        emit([(_state.level, message)])


def install() -> None:
    """Route llama.cpp's log to the "llama.cpp" logger (once per process is enough)."""
    llama_cpp.llama_log_set(_log_line, ctypes.c_void_p(0))


@contextmanager
def held_back() -> Iterator[list[tuple[int, str]]]:
    """Keep llama.cpp's lines on this thread in a list (level, text) instead of logging them."""
    _state.held = held = []
    try:
        yield held
    finally:
        _state.held = None


def emit(lines: list[tuple[int, str]], as_level: int | None = None) -> None:
    """Log LINES held back, at their own levels or all at AS_LEVEL."""
    for level, message in lines:
        if message:
            log.log(as_level or level, "%s", message)
