"""Which cached tokens a new prompt may reuse: canonical tokens, own answers, split characters."""

from __future__ import annotations

from tutor.context_cache import Context


def _context(pieces: list[bytes], generated_from: int) -> Context:
    context = Context()
    for i, piece in enumerate(pieces):
        context.extend([i], [piece], generated=i >= generated_from)
    return context


def _tokenize(data: bytes) -> list[int]:
    """A stand-in tokenizer: one token per byte, ids far from the contexts' own."""
    return [1000 + b for b in data]


def test_another_students_text_is_reused_only_where_its_tokens_are_canonical():
    other = _context([b"<s>", b"topic", b" 1", b"0"], generated_from=99)  # "topic 10"
    prompt = b"<s>topic 12"
    canonical = [0, 1, 1002]  # "<s>", "topic", " 12": " 1" alone would split it otherwise
    n, tokens = other.reuse_for(prompt, canonical, _tokenize)
    assert (n, tokens) == (2, canonical)


def test_a_follow_up_reuses_the_answer_as_sampled_and_tokenizes_only_the_rest():
    previous = _context([b"<q>", b"an", b"sw", b"er"], generated_from=1)
    prompt = b"<q>answer<eot><q2>"
    n, tokens = previous.reuse_for(prompt, _tokenize(prompt), _tokenize)
    assert n == 4
    assert tokens == [0, 1, 2, 3] + _tokenize(b"<eot><q2>")


def test_a_token_that_showed_no_text_is_not_reused_at_the_end_of_a_match():
    # The answer's first token was the first byte of a split character: the student saw nothing.
    answered = _context([b"<q>", b"", b"\xef\xbf\xbd"], generated_from=1)
    assert answered.reusable_tokens(b"<q>") == 1
    assert answered.reusable_tokens(b"<q>\xef\xbf\xbd and more") == 3
