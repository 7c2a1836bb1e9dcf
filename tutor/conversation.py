"""Conversation → chat messages that fit the model's context window.

The system prompt (the tutor mode) and the new question are always kept; the oldest turns go
first. Turns are dropped in blocks, so that the start of the prompt stays the same for several
turns after the window fills and the KV cache keeps being reused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from tutor.errors import TutorError

Message = dict[str, str]
TRIM_BLOCK_TURNS = 4  # user+assistant pairs dropped at a time once the window is full
MIN_ANSWER_TOKENS = 64
# Bounds on what a request may carry (each costs tokenizer time before anything is answered);
# a class's real conversations stay far below: 1000 messages is 500 questions.
MAX_HISTORY_MESSAGES = 1000
MAX_HISTORY_CHARS = 1_000_000


class HistoryError(TutorError):
    """A history that is not a list of user/assistant text messages, or far too long."""


class ContextOverflowError(TutorError):
    """Even the system prompt and the question alone do not fit the context window."""


class _Part(BaseModel):
    """One part of a message's content, as Gradio's chatbot keeps it; only text parts count."""

    model_config = ConfigDict(extra="ignore")
    type: str = "text"
    text: str = ""


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # Gradio adds metadata, options, ...
    role: Literal["user", "assistant"]
    content: str | list[_Part]


_HISTORY = TypeAdapter(list[_Message])


def _what_is_wrong(loc: tuple) -> str:
    """A user-facing sentence for the first validation error, at LOC (index, field, ...)."""
    if not loc:
        return "The conversation history must be a list of {role, content} messages."
    field_name = loc[1] if len(loc) > 1 else None
    problem = {
        "role": "its role must be 'user' or 'assistant'",
        "content": "its content must be text",
    }.get(field_name, "it must be a {role, content} message")
    return f"Message {loc[0] + 1} of the conversation history is not valid: {problem}."


def normalize_history(history: object) -> list[Message]:
    """Plain {role, content} messages from a chat history (Gradio's format included), or a
    HistoryError saying what is wrong with it.

    Content may be a string or a list of parts ({"type": "text", "text": ...}; other parts, such
    as files, are skipped). Only user and assistant turns are accepted: a system message would
    replace the tutor mode's instructions.
    """
    if history is None:
        return []
    if isinstance(history, (list, tuple)) and len(history) > MAX_HISTORY_MESSAGES:
        raise HistoryError(
            f"The conversation is too long ({len(history)} messages; the limit "
            f"is {MAX_HISTORY_MESSAGES}). Please start a new conversation."
        )
    try:
        items = _HISTORY.validate_python(history)
    except ValidationError as e:
        raise HistoryError(_what_is_wrong(e.errors()[0]["loc"])) from None
    messages = []
    for item in items:
        content = (
            item.content
            if isinstance(item.content, str)
            else "".join(part.text for part in item.content if part.type == "text")
        )
        if content.strip():
            messages.append({"role": item.role, "content": content})
    if sum(len(m["content"]) for m in messages) > MAX_HISTORY_CHARS:
        raise HistoryError(
            f"The conversation is too long (over {MAX_HISTORY_CHARS} "
            "characters). Please start a new conversation."
        )
    return messages


def _turns(history: list[Message]) -> list[list[Message]]:
    """Group messages into turns, each starting at a user message."""
    turns: list[list[Message]] = []
    for message in history:
        if message["role"] == "user" or not turns:
            turns.append([])
        turns[-1].append(message)
    return turns


def fit_messages(
    system_prompt: str,
    history: list[Message],
    question: str,
    count_tokens: Callable[[list[Message]], int],
    n_ctx: int,
    max_answer_tokens: int,
) -> tuple[list[Message], int, int]:
    """Messages for the model, the answer's token budget, and how many turns were dropped.

    COUNT_TOKENS gives the prompt length of a message list (template applied).
    """
    system = [{"role": "system", "content": system_prompt}]
    ask = [{"role": "user", "content": question}]
    turns = _turns(history)
    answer_budget = min(max_answer_tokens, n_ctx // 2)

    def build(dropped: int) -> list[Message]:
        return system + [m for turn in turns[dropped:] for m in turn] + ask

    def fits(blocks: int) -> bool:
        prompt = count_tokens(build(min(len(turns), blocks * TRIM_BLOCK_TURNS)))
        return prompt + answer_budget <= n_ctx

    # The fewest blocks to drop, by bisection: the prompt only shrinks as blocks go, and a long
    # history then costs a few token counts, not one per block.
    low, high = 0, -(-len(turns) // TRIM_BLOCK_TURNS)
    while low < high:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    dropped = min(len(turns), low * TRIM_BLOCK_TURNS)
    messages = build(dropped)
    room = n_ctx - count_tokens(messages)
    if room < MIN_ANSWER_TOKENS:
        raise ContextOverflowError(
            f"The question is too long for this model: it leaves room for {max(room, 0)} "
            f"answer tokens in a {n_ctx}-token window. Please shorten it."
        )
    return messages, min(max_answer_tokens, room), dropped
