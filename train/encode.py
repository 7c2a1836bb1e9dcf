"""Conversations → token ids and labels, with the loss on assistant tokens only.

The chat template renders the whole conversation; each assistant message's span is found by
rendering the conversation up to that message with and without it (the template must be
prefix-stable, as Llama 3's is). Tokens whose text lies inside an assistant span — its content
and its end-of-turn token — keep their label; every system, user and header token gets -100.
"""

from __future__ import annotations

from collections.abc import Callable

from transformers import PreTrainedTokenizerBase

Message = dict[str, str]
IGNORE = -100


class TemplateError(ValueError):
    """The chat template does not render conversations prefix by prefix."""


Render = Callable[[list[Message], bool], str]  # (messages, add_generation_prompt) → text


def hf_render(tokenizer: PreTrainedTokenizerBase) -> Render:
    """A Hugging Face tokenizer's chat template as a Render function."""

    def render(messages: list[Message], generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    return render


def assistant_spans(render: Render, messages: list[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant replies."""
    text = render(messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = render(messages[:i], True)
        end = render(messages[: i + 1], False)
        if not (text.startswith(start) and text.startswith(end) and len(start) <= len(end)):
            raise TemplateError(
                "the chat template is not prefix-stable: cannot locate the "
                "assistant replies to train on"
            )
        spans.append((len(start), len(end)))
    return text, spans


def mask_labels(
    ids: list[int], ranges: list[tuple[int, int]], spans: list[tuple[int, int]]
) -> list[int]:
    """Each token's id where its text range lies inside a span, else IGNORE."""
    return [
        token if any(s <= start and end <= e for s, e in spans) else IGNORE
        for token, (start, end) in zip(ids, ranges)
    ]


def encode(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message]
) -> tuple[list[int], list[int]]:
    """input_ids and labels (IGNORE outside the assistant replies)."""
    text, spans = assistant_spans(hf_render(tokenizer), messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return encoded["input_ids"], mask_labels(encoded["input_ids"], encoded["offset_mapping"], spans)
