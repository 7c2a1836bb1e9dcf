"""What the page and the API both do with a request: who sent it, the one line a user reads
when it fails, and streamed updates paced for two shared cores."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import gradio as gr

from tutor.errors import TutorError

log = logging.getLogger("voice-tutor")

SOMETHING_WENT_WRONG = "Something went wrong on our side. Please try again."


def coalesce(updates: Iterator[str], interval_s: float) -> Iterator[str]:
    """Pass on the first update at once, then at most one per INTERVAL_S, and always the last.

    Each streamed update costs Python time on the 2 shared cores (diffing, JSON, the event loop)
    that llama.cpp would otherwise use; a few updates a second read just as smoothly.
    """
    last, pending = float("-inf"), None
    for update in updates:
        pending = update
        now = time.monotonic()
        if now - last >= interval_s:
            last, pending = now, None
            yield update
    if pending is not None:
        yield pending


def waiting_message(place: int) -> str:
    """What a student reads while their question waits for a free answer slot."""
    if place == 1:
        return "⏳ The tutor is answering other students. You are next in line."
    return f"⏳ The tutor is answering other students. You are number {place} in line."


def user_message(e: Exception) -> str:
    """The one line a user reads about E; details of unexpected failures go to the server log."""
    if isinstance(e, TutorError):
        return str(e)
    log.exception("request failed")
    return SOMETHING_WENT_WRONG


def user_error(e: Exception) -> gr.Error:
    """E as the error an API caller receives."""
    return gr.Error(user_message(e), print_exception=False)


def client_of(request: gr.Request | None) -> tuple[str, str]:
    """(session, network address) of a request; behind a proxy (a Space), the address the
    proxy reports. A forged X-Forwarded-For only moves a client into another address's share."""
    if request is None:
        return "", ""
    forwarded = request.headers.get("x-forwarded-for", "")
    address = forwarded.split(",")[0].strip() or (request.client.host if request.client else "")
    return request.session_hash or "", address
