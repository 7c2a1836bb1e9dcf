"""Conversations → token ids and labels, with the loss on assistant tokens only.

The chat template renders the whole conversation; each assistant message's span is found by
rendering the conversation up to that message with and without it (the template must be
prefix-stable, as Llama 3's is). Tokens whose text lies inside an assistant span — its content
and its end-of-turn token — keep their label; every system, user and header token gets -100.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

Message = dict[str, str]
IGNORE = -100


class TemplateError(ValueError):
    """The chat template does not render conversations prefix by prefix."""


def assistant_spans(tokenizer: PreTrainedTokenizerBase, messages: list[Message]
                    ) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant replies."""
    def render(msgs: list[Message], generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False,
                                             add_generation_prompt=generation_prompt)

    text = render(messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = render(messages[:i], True)
        end = render(messages[: i + 1], False)
        if not (text.startswith(start) and text.startswith(end) and len(start) <= len(end)):
            raise TemplateError("the chat template is not prefix-stable: cannot locate the "
                                "assistant replies to train on")
        spans.append((len(start), len(end)))
    return text, spans


def encode(tokenizer: PreTrainedTokenizerBase, messages: list[Message]
           ) -> tuple[list[int], list[int]]:
    """input_ids and labels (IGNORE outside the assistant replies)."""
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        inside = any(s <= start and end <= e for s, e in spans)
        labels.append(token if inside else IGNORE)
    return encoded["input_ids"], labels
