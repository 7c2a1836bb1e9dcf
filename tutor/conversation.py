"""Conversation → chat messages that fit the model's context window.

The system prompt (the tutor mode) and the new question are always kept; the oldest turns go
first. Turns are dropped in blocks, so that the start of the prompt stays the same for several
turns after the window fills and the KV cache keeps being reused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tutor.errors import TutorError

Message = dict[str, str]
TRIM_BLOCK_TURNS = 4  # user+assistant pairs dropped at a time once the window is full
MIN_ANSWER_TOKENS = 64


class ContextOverflowError(TutorError):
    """Even the system prompt and the question alone do not fit the context window."""


def normalize_history(history: Sequence[dict] | None) -> list[Message]:
    """Plain {role, content} messages from a chat history (Gradio's format included).

    Gradio may hand over content as a list of parts or with extra keys (metadata, options);
    only user/assistant text turns are kept.
    """
    messages = []
    for item in history or []:
        role, content = item.get("role"), item.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if role in ("user", "assistant") and isinstance(content, str) and content.strip():
            messages.append({"role": role, "content": content})
    return messages


def _turns(history: list[Message]) -> list[list[Message]]:
    """Group messages into turns, each starting at a user message."""
    turns: list[list[Message]] = []
    for message in history:
        if message["role"] == "user" or not turns:
            turns.append([])
        turns[-1].append(message)
    return turns


def fit_messages(system_prompt: str, history: list[Message], question: str,
                 count_tokens: Callable[[list[Message]], int], n_ctx: int,
                 max_answer_tokens: int) -> tuple[list[Message], int, int]:
    """Messages for the model, the answer's token budget, and how many turns were dropped.

    COUNT_TOKENS gives the prompt length of a message list (template applied).
    """
    system = [{"role": "system", "content": system_prompt}]
    ask = [{"role": "user", "content": question}]
    turns = _turns(history)
    answer_budget = min(max_answer_tokens, n_ctx // 2)

    def build(dropped: int) -> list[Message]:
        return system + [m for turn in turns[dropped:] for m in turn] + ask

    dropped = 0
    while dropped < len(turns) and count_tokens(build(dropped)) + answer_budget > n_ctx:
        dropped = min(len(turns), dropped + TRIM_BLOCK_TURNS)
    messages = build(dropped)
    room = n_ctx - count_tokens(messages)
    if room < MIN_ANSWER_TOKENS:
        raise ContextOverflowError(
            f"The question is too long for this model: it leaves room for {max(room, 0)} "
            f"answer tokens in a {n_ctx}-token window. Please shorten it.")
    return messages, min(max_answer_tokens, room), dropped
