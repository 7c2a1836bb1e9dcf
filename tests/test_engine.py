"""The llama.cpp engine: prompts, modes, context budget and KV cache reuse (real llama.cpp)."""

from __future__ import annotations

import threading
import time

import pytest

from tutor.conversation import ContextOverflowError, fit_messages
from tutor.llm import TutorLLM
from tutor.modes import Generation, load_modes
from tutor.llm import GenerationStats
from tutor.service import Tutor, printable
from tutor.transcribe import Transcriber, load_whisper

GREEDY = Generation(temperature=0.0, max_tokens=24)


@pytest.fixture(scope="module")
def llm(tiny_gguf) -> TutorLLM:
    return TutorLLM(tiny_gguf, n_ctx=1024, n_threads=2)


@pytest.fixture(scope="module")
def tutor(llm, tiny_whisper_path) -> Tutor:
    return Tutor(llm, Transcriber(load_whisper(str(tiny_whisper_path))), load_modes())


def _conversation(system: str, *turns: str) -> list[dict]:
    roles = ["user", "assistant"] * len(turns)
    return [{"role": "system", "content": system}] + [
        {"role": role, "content": text} for role, text in zip(roles, turns)
    ]


def test_prompt_carries_the_modes_system_prompt(tutor):
    for name, mode in tutor.modes.items():
        "".join(tutor.ask("What is 7 times 8?", name))
        prompt = tutor.llm.stats.prompt
        assert mode.system_prompt.strip() in prompt, name
        assert prompt.index(mode.system_prompt.strip()) < prompt.index("What is 7 times 8?")


def test_switching_mode_keeps_the_history(tutor):
    first = list(tutor.ask("How do I solve 3x + 5 = 20?", "hint"))[-1]
    history = [
        {"role": "user", "content": "How do I solve 3x + 5 = 20?"},
        {"role": "assistant", "content": first},
    ]
    "".join(tutor.ask("Show me all the steps.", "step_by_step", history))
    prompt = tutor.llm.stats.prompt
    assert tutor.modes["step_by_step"].system_prompt.strip() in prompt
    assert tutor.modes["hint"].system_prompt.strip() not in prompt
    assert "How do I solve 3x + 5 = 20?" in prompt and first.strip()[:20] in prompt
    assert prompt.rstrip().endswith("assistant<|end_header_id|>")


def test_follow_up_evaluates_only_the_new_tokens(tiny_gguf):
    llm = TutorLLM(tiny_gguf, n_ctx=1024, n_threads=2)
    first = _conversation("You are a tutor.", "What is 7 times 8?")
    llm.answer(first, GREEDY, max_tokens=1)  # the one sampled token is never evaluated
    first_prompt = llm.render(first)
    assert llm.stats.evaluated_tokens == len(llm.tokenize(first_prompt))

    follow_up = _conversation(
        "You are a tutor.",
        "What is 7 times 8?",
        "Think of 7 times 4 first, then double it.",
        "Is it 56?",
    )
    prompt = llm.render(follow_up)
    assert prompt.startswith(first_prompt)
    llm.answer(follow_up, GREEDY)
    new_tokens = len(llm.tokenize(prompt[len(first_prompt) :]))
    assert llm.stats.evaluated_tokens == new_tokens
    assert llm.stats.prompt_tokens - new_tokens == len(llm.tokenize(first_prompt))


def test_follow_up_after_a_generated_answer_reuses_it(tiny_gguf):
    llm = TutorLLM(tiny_gguf, n_ctx=1024, n_threads=2)
    history = _conversation("You are a tutor.", "Explain the derivative of x squared.")
    answer = llm.answer(history, GREEDY)
    generated = llm.stats.generated_tokens
    history += [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And of x cubed?"},
    ]
    llm.answer(history, GREEDY)
    tail = (
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnd of x cubed?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # New: the turn markers and question, plus at most the answer's last token (sampled, not yet
    # evaluated) and a token re-split at the trimmed end of the answer.
    assert llm.stats.evaluated_tokens <= len(llm.tokenize(tail)) + 2
    assert llm.stats.prompt_tokens - llm.stats.evaluated_tokens >= generated - 2


def test_interleaved_sessions_keep_their_caches(tiny_gguf):
    llm = TutorLLM(tiny_gguf, n_ctx=1024, n_threads=2)
    a = _conversation("You are a maths tutor.", "What is a prime number?")
    b = _conversation("You are a biology tutor.", "What does a cell membrane do?")
    llm.answer(a, GREEDY, max_tokens=1)
    llm.answer(b, GREEDY, max_tokens=1)  # another student in between
    a_prompt = llm.render(a)
    a2 = _conversation(
        "You are a maths tutor.",
        "What is a prime number?",
        "A number with exactly two divisors.",
        "Is 1 prime?",
    )
    llm.answer(a2, GREEDY)
    assert llm.stats.evaluated_tokens == len(llm.tokenize(llm.render(a2)[len(a_prompt) :]))
    b2 = _conversation(
        "You are a biology tutor.",
        "What does a cell membrane do?",
        "It controls what enters and leaves.",
        "How?",
    )
    llm.answer(b2, GREEDY)
    assert llm.stats.evaluated_tokens == len(llm.tokenize(llm.render(b2)[len(llm.render(b)) :]))


def test_saved_caches_stay_within_their_memory_bound(tiny_gguf):
    llm = TutorLLM(tiny_gguf, n_ctx=1024, n_threads=2, cache_bytes=2 * 2**20)
    for i in range(12):
        llm.answer(
            _conversation(f"Tutor number {i}.", f"Question {i}: " + "why? " * 40),
            GREEDY,
            max_tokens=4,
        )
    count, nbytes = llm.saved_conversations()
    assert 0 < count < 11
    assert nbytes <= 2 * 2**20


def test_trimming_keeps_system_prompt_and_question_and_fits(llm):
    turns = []
    for i in range(30):
        turns += [
            f"Question {i} about fractions and decimals, please explain it fully.",
            f"Answer {i}: " + "a long explanation with many words " * 8,
        ]
    history = [
        {"role": role, "content": text} for role, text in zip(["user", "assistant"] * 30, turns)
    ]
    n_ctx, max_answer = 512, 128
    messages, budget, dropped = fit_messages(
        "SYSTEM PROMPT", history, "THE NEW QUESTION", llm.count_tokens, n_ctx, max_answer
    )
    assert dropped > 0
    assert messages[0] == {"role": "system", "content": "SYSTEM PROMPT"}
    assert messages[-1] == {"role": "user", "content": "THE NEW QUESTION"}
    assert llm.count_tokens(messages) + budget <= n_ctx and budget == max_answer
    assert messages[1:-1] == history[2 * dropped :]  # whole turns, the newest kept


def test_a_question_longer_than_the_window_is_refused(llm):
    with pytest.raises(ContextOverflowError, match="too long"):
        fit_messages("SYSTEM", [], "word " * 2000, llm.count_tokens, 512, 128)


def test_generation_fits_the_context_window(tutor):
    history = []
    for i in range(40):
        history += [
            {"role": "user", "content": f"Question {i}: " + "tell me more " * 10},
            {"role": "assistant", "content": "More detail. " * 12},
        ]
    answer = list(tutor.ask("And finally?", "step_by_step", history))
    assert answer
    assert tutor.llm.stats.prompt_tokens + tutor.llm.stats.generated_tokens <= tutor.llm.n_ctx


def test_generation_can_be_stopped_mid_answer(llm, slow_gguf):
    # The slow model never ends an answer by itself (~100 tokens/s): only the cancel can end
    # this one before its budget, however far the engine runs ahead of a slow reader.
    never_ending = TutorLLM(slow_gguf, n_ctx=1024, n_threads=2)
    cancel = threading.Event()
    pieces = []
    for piece in never_ending.stream(
        _conversation("Tutor.", "Tell me a long story."),
        Generation(temperature=0.8, max_tokens=4000),
        cancel=cancel,
    ):
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()
    assert never_ending.stats.stopped == "cancelled"
    assert 3 <= never_ending.stats.generated_tokens < 4000
    # Closing the stream early (the app's Stop button) frees the model for the next request.
    stream = llm.stream(_conversation("Tutor.", "Another story."), GREEDY)
    next(stream)
    stream.close()
    assert llm.answer(_conversation("Tutor.", "Hello?"), GREEDY, max_tokens=4) is not None


def test_answers_keep_no_control_characters_and_end_lines_with_newlines():
    assert printable("a\r\nb\rc\td\x01e\x1b\x7f") == "a\nb\nc\tde"
    pieces = iter(["Step 1", "\r", "\n", "\x08", "Step 2"])
    updates = list(Tutor._accumulate(pieces, GenerationStats()))
    assert updates == ["Step 1", "Step 1\n", "Step 1\nStep 2"]  # each shows something new


def _until(condition, what: str) -> None:
    """Poll CONDITION (an engine event) until it holds."""
    deadline = time.monotonic() + 300  # only a hang reaches it
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _wait_for_prefills(llm: TutorLLM, reason: str, count: int = 1) -> None:
    """Until COUNT prefills have ended for REASON (a prefill returns before it is done)."""
    _until(lambda: llm.activity().prefills_ended.get(reason, 0) >= count, f"{count} {reason}")


def test_a_prefilled_question_is_answered_after_evaluating_only_its_last_token(tiny_gguf):
    llm = TutorLLM(tiny_gguf, n_ctx=1024, n_threads=2, parallel=2)
    question = _conversation("You are a tutor.", "What is 7 times 8?", "Seven eights.", "Is it 56?")
    expected = llm.answer(question, GREEDY)  # from scratch
    llm.forget()
    llm.prefill(question)
    _wait_for_prefills(llm, "done")
    assert llm.answer(question, GREEDY) == expected
    assert llm.stats.evaluated_tokens == 1  # the last token, for its logits
    assert llm.stats.reused_tokens == llm.stats.prompt_tokens - 1


def test_a_prefill_of_the_start_of_a_question_serves_the_whole_question(tiny_gguf):
    llm = TutorLLM(tiny_gguf, n_ctx=1024, n_threads=2)
    start = _conversation("You are a tutor.", "What is 7 times 8? I think")
    whole = _conversation("You are a tutor.", "What is 7 times 8? I think it is 56.")
    llm.prefill(start)  # the question's first piece, heard while the student goes on
    _wait_for_prefills(llm, "done")
    llm.answer(whole, GREEDY, max_tokens=1)
    start_tokens, whole_tokens = llm.tokenize(llm.render(start)), llm.tokenize(llm.render(whole))
    shared = next(i for i, (a, b) in enumerate(zip(start_tokens, whole_tokens)) if a != b)
    assert shared > len(llm.tokenize(llm.render(start[:1], False)))  # the question's start too
    assert llm.stats.evaluated_tokens == len(whole_tokens) - shared


def test_a_question_takes_the_slot_of_a_prefill_at_once(tiny_gguf):
    llm = TutorLLM(tiny_gguf, n_ctx=2048, n_threads=2, parallel=1, n_batch=32, prefill_chunk=32)
    question = _conversation("You are a tutor.", "What is 7 times 8?")
    expected = llm.answer(question, GREEDY)
    long_guess = _conversation("You are a tutor.", "Tell me about prime numbers. " * 60)
    # The native thread runs one job at a time: hold it after the prefill's first step (of the
    # dozen its 32-token batches need), and send the question in then.
    first_step_done, go_on = threading.Event(), threading.Event()
    hold = threading.Event()
    llm.thread.submit(hold.wait)
    llm.prefill(long_guess)  # its first step is queued behind the hold
    llm.thread.submit(lambda: (first_step_done.set(), go_on.wait()))
    hold.set()
    first_step_done.wait()
    answers: list[str] = []
    asking = threading.Thread(target=lambda: answers.append(llm.answer(question, GREEDY)))
    asking.start()
    while llm._scheduler.inbox.empty():  # the question is in; the prefill holds the one slot
        time.sleep(0.001)
    go_on.set()
    asking.join()
    assert answers == [expected]
    assert llm.activity().prefills_ended == {"superseded": 1}


def test_a_prefill_of_a_question_already_asked_is_dropped(tiny_gguf):
    """The hands-free page's words can reach the engine just after their question (a slow
    transcription): the prefill must not evaluate the question's prompt a second time."""
    llm = TutorLLM(tiny_gguf, n_ctx=1024, n_threads=2, parallel=2)
    question = _conversation("You are a tutor.", "What is 7 times 8?")
    expected = llm.answer(question, GREEDY)
    llm.forget()
    hold = threading.Event()
    llm.thread.submit(hold.wait)  # both arrive before the next step
    answers: list[str] = []
    asking = threading.Thread(target=lambda: answers.append(llm.answer(question, GREEDY)))
    asking.start()
    while llm._scheduler.inbox.empty():  # the question is in
        time.sleep(0.001)
    llm.prefill(question)
    hold.set()
    asking.join()
    assert answers == [expected]
    deadline = time.monotonic() + 300  # only a hang reaches it
    while not llm.activity().prefills_ended:  # a prefill returns before it ends
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert llm.activity().prefills_ended == {"asked": 1}
    assert llm.stats.evaluated_tokens == llm.stats.prompt_tokens - llm.stats.reused_tokens


def test_a_prefill_never_waits_in_line(tiny_gguf):
    llm = TutorLLM(tiny_gguf, n_ctx=1024, n_threads=2, parallel=1)
    busy = llm.stream(_conversation("You are a tutor.", "Count to ten."), GREEDY)
    next(busy)  # the one slot is answering
    llm.prefill(_conversation("You are a tutor.", "What is 7 times 8?"))
    _wait_for_prefills(llm, "skipped")
    busy.close()


def test_a_question_takes_over_its_early_answer_with_the_first_tokens_ready(tiny_gguf):
    """A hands-free question's answer, begun at the pause that ended it: when the question is
    asked, its first tokens are there without a single decode step."""
    llm = TutorLLM(tiny_gguf, n_ctx=1024, n_threads=2, parallel=2)
    question = _conversation("You are a tutor.", "What is 7 times 8?", "Seven eights.", "Is it 56?")
    expected = llm.answer(question, GREEDY)  # from scratch
    llm.forget()
    llm.prefill(question, answer=GREEDY)
    _until(lambda: llm.activity().early_answers_ready == 1, "the early answer's tokens")
    stream = llm.stream(question, GREEDY)
    hold = threading.Event()
    llm.thread.submit(hold.wait)  # no step can run until the first piece is in
    first: list[str] = []
    try:
        reader = threading.Thread(target=lambda: first.append(next(stream)))
        reader.start()
        reader.join(timeout=60)
        assert first, "the first piece waited for a decode step"
    finally:
        hold.set()
    assert first[0] + "".join(stream) == expected  # the same answer, the rest as it goes on
    assert llm.stats.begun_early and llm.stats.time_to_first_token_s == 0.0
    assert llm.activity().prefills_ended == {"claimed": 1}


def test_stop_ends_an_answer_its_question_took_over(tiny_gguf):
    llm = TutorLLM(tiny_gguf, n_ctx=1024, n_threads=2, parallel=1)
    question = _conversation("You are a tutor.", "What is 7 times 8?")
    llm.prefill(question, answer=GREEDY)
    _until(lambda: llm.activity().early_answers_ready == 1, "the early answer's tokens")
    stop = threading.Event()
    stream = llm.stream(question, GREEDY, cancel=stop)
    next(stream)
    stop.set()  # the student pressed Stop
    list(stream)
    assert llm.stats.begun_early and llm.stats.stopped == "cancelled"
    assert llm.stats.generated_tokens < GREEDY.max_tokens


def test_an_early_answer_gives_its_slot_up_to_another_question(tiny_gguf):
    llm = TutorLLM(tiny_gguf, n_ctx=1024, n_threads=2, parallel=1)
    guess = _conversation("You are a tutor.", "What is 7 times 8?")
    other = _conversation("You are a tutor.", "Name a prime number.")
    expected = llm.answer(other, GREEDY)
    llm.prefill(guess, answer=GREEDY)
    _until(lambda: llm.activity().early_answers_ready == 1, "the early answer's tokens")
    assert llm.answer(other, GREEDY) == expected  # the one slot was the early answer's
    assert llm.activity().prefills_ended == {"superseded": 1}
    llm.answer(guess, GREEDY)
    assert not llm.stats.begun_early  # superseded: no longer there to take over


def test_an_early_answer_is_not_taken_over_once_outdated_or_for_other_settings(tiny_gguf):
    llm = TutorLLM(tiny_gguf, n_ctx=1024, n_threads=2, parallel=2)
    question = _conversation("You are a tutor.", "What is 7 times 8?")
    expected = llm.answer(question, GREEDY)
    outdated = threading.Event()
    llm.prefill(question, outdated, answer=GREEDY)
    _until(lambda: llm.activity().early_answers_ready == 1, "the early answer's tokens")
    outdated.set()  # the student went on speaking
    assert llm.answer(question, GREEDY) == expected
    assert not llm.stats.begun_early
    shorter = Generation(temperature=0.0, max_tokens=16)  # e.g. another mode's
    llm.prefill(question, answer=GREEDY)
    _until(lambda: llm.activity().early_answers_ready == 1, "the early answer's tokens")
    llm.answer(question, shorter)
    assert not llm.stats.begun_early and llm.stats.generated_tokens <= 16
    ended = llm.activity().prefills_ended
    assert ended["cancelled"] == 1 and "claimed" not in ended


def test_an_early_answer_no_question_claims_is_dropped(tiny_gguf, monkeypatch):
    monkeypatch.setattr("tutor.batching.EARLY_KEPT_S", 0.0)  # bounded: kept no time at all
    llm = TutorLLM(tiny_gguf, n_ctx=1024, n_threads=2, parallel=1)
    question = _conversation("You are a tutor.", "What is 7 times 8?")
    llm.prefill(question, answer=GREEDY)
    _until(lambda: llm.activity().early_answers_ready == 1, "the early answer's tokens")
    llm.answer(question, GREEDY)  # too late
    assert not llm.stats.begun_early
    assert llm.activity().prefills_ended == {"expired": 1}  # its slot went back first


def test_forgetting_the_cache_ends_an_early_answer(tiny_gguf):
    llm = TutorLLM(tiny_gguf, n_ctx=1024, n_threads=2, parallel=1)
    question = _conversation("You are a tutor.", "What is 7 times 8?")
    expected = llm.answer(question, GREEDY)
    llm.prefill(question, answer=GREEDY)
    _until(lambda: llm.activity().early_answers_ready == 1, "the early answer's tokens")
    llm.forget()  # its cache is gone: it must not go on from it
    assert llm.answer(question, GREEDY) == expected
    assert not llm.stats.begun_early
    assert llm.activity().prefills_ended == {"cancelled": 1}


def test_a_spoken_question_asked_as_it_was_guessed_takes_over_its_early_answer(tutor):
    """The app's way: words heard up to a pause begin their answer (Tutor.prefill), and the
    question the trailing silence sends, in the same mode after the same conversation, gets it."""
    history = [
        {"role": "user", "content": "What is 7 times 8?"},
        {"role": "assistant", "content": "56."},
    ]
    tutor.prefill("And 7 times 9?", "hint", history, begin_answer=True)
    _until(lambda: tutor.llm.activity().early_answers_ready == 1, "the early answer's tokens")
    for _ in tutor.ask("And 7 times 9?", "hint", history):
        pass
    assert tutor.llm.stats.begun_early
    tutor.prefill("And 7 times 9?", "hint", history, begin_answer=True)
    _until(lambda: tutor.llm.activity().early_answers_ready == 1, "the early answer's tokens")
    for _ in tutor.ask("And 7 times 9?", "explain", history):  # another mode: not that answer
        pass
    assert not tutor.llm.stats.begun_early
