"""Continuous batching in the engine: exactness, shared prefixes, stopping, KV room (real
llama.cpp).

Exactness is checked on a seeded F32 model with greedy sampling and an F32 KV cache: then a
conversation's tokens do not depend on what else shares its decode steps. (With an F16 cache,
batched rows round differently and a rare token differs; see README "Results".)
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time

import numpy as np
import pytest

from tutor.audio import AudioError
from tutor.batching import InLine
from tutor.errors import BusyError
from tutor.llm import GenerationStats, TutorLLM
from tutor.modes import Generation, load_modes
from tutor.service import Tutor
from tutor.transcribe import Transcriber, load_whisper

N_CONVERSATIONS = 8
JOIN_TIMEOUT_S = 600  # generous: only a hang would reach it
# Transcriptions tried while two answers stream, until one lands in a step (not between two):
# nearly every one does, as a step lasts ~100 times longer than the gap between steps.
TRANSCRIPTIONS_TRIED = 20


def _conversation(system: str, *turns: str) -> list[dict]:
    roles = ["user", "assistant"] * len(turns)
    return [{"role": "system", "content": system}] + [
        {"role": role, "content": text} for role, text in zip(roles, turns)
    ]


def _greedy(max_tokens: int) -> Generation:
    return Generation(temperature=0.0, max_tokens=max_tokens)


@pytest.fixture(scope="module")
def alone_llm(slow_gguf) -> TutorLLM:
    """One answer at a time: the reference."""
    return TutorLLM(slow_gguf, n_ctx=1024, n_threads=2, parallel=1, kv_type="f32")


@pytest.fixture(scope="module")
def batched_llm(slow_gguf) -> TutorLLM:
    return TutorLLM(slow_gguf, n_ctx=1024, n_threads=2, parallel=N_CONVERSATIONS, kv_type="f32")


def _three_turns(
    llm: TutorLLM,
    i: int,
    started: threading.Event | None = None,
    after: threading.Event | None = None,
) -> list[str]:
    """Conversation I: three turns of different lengths; START is set once its first answer
    streams, and it begins only once AFTER is set (staggered starts)."""
    if after is not None:
        after.wait()
    turns: list[str] = []
    for turn in range(3):
        turns.append(f"Student {i}, question {turn}: " + "why " * (i + 2 * turn))
        pieces = []
        for piece in llm.stream(
            _conversation(f"You are tutor number {i}.", *turns), _greedy(16 + 5 * i + 3 * turn)
        ):
            pieces.append(piece)
            if started is not None and len(pieces) == 2:
                started.set()
        turns.append("".join(pieces))
    return turns[1::2]


def _run_together(target, count: int) -> dict[int, object]:
    results: dict[int, object] = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, target(i))) for i in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT_S)
    return results


def test_eight_staggered_conversations_answer_token_for_token_as_alone(alone_llm, batched_llm):
    alone = {i: _three_turns(alone_llm, i) for i in range(N_CONVERSATIONS)}
    started = [threading.Event() for _ in range(N_CONVERSATIONS)]
    together = _run_together(
        lambda i: _three_turns(batched_llm, i, started[i], started[i - 1] if i else None),
        N_CONVERSATIONS,
    )
    assert together == alone
    assert len(set(map(tuple, alone.values()))) == N_CONVERSATIONS
    assert batched_llm.most_sequences_in_a_step() >= N_CONVERSATIONS // 2  # really batched


def test_each_answer_samples_with_its_own_settings_and_seed(alone_llm, batched_llm):
    settings = [
        Generation(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=24),
        Generation(
            temperature=0.7, top_k=20, top_p=0.8, min_p=0.1, max_tokens=24, repeat_penalty=1.3
        ),
        _greedy(24),
    ]

    def ask(llm: TutorLLM, i: int, seed: int) -> str:
        return llm.answer(
            _conversation("You are a tutor.", f"Tell me about topic {i}."),
            settings[i % 3],
            seed=seed,
        )

    alone = {i: ask(alone_llm, i, 1000 + i) for i in range(6)}
    together = _run_together(lambda i: ask(batched_llm, i, 1000 + i), 6)
    assert together == alone
    assert ask(alone_llm, 0, 7) != ask(alone_llm, 0, 8)  # the seed matters at temperature 1


def test_first_question_in_a_pinned_mode_evaluates_only_what_follows_the_system_prompt(
    slow_gguf, tiny_whisper_path
):
    llm = TutorLLM(slow_gguf, n_ctx=1024, n_threads=2, parallel=4)
    tutor = Tutor(llm, Transcriber(load_whisper(str(tiny_whisper_path))), load_modes())
    for name, mode in tutor.modes.items():
        messages = _conversation(mode.system_prompt, f"A first question in {name} mode?")
        system_prompt = llm.render(messages[:1], generation_prompt=False)
        prompt = llm.render(messages)
        before = llm.evaluated_tokens()
        stats = GenerationStats()
        llm.answer(messages, _greedy(16), max_tokens=1, stats=stats)  # the one token: not evaluated
        assert llm.evaluated_tokens() - before == len(llm.tokenize(prompt[len(system_prompt) :]))
        assert stats.reused_from == "pinned"
        assert stats.reused_tokens == len(llm.tokenize(system_prompt))


def test_follow_ups_evaluate_only_new_tokens_with_more_conversations_than_slots(slow_gguf):
    llm = TutorLLM(slow_gguf, n_ctx=1024, n_threads=2, parallel=2)
    conversations = [[f"Question from student {i}: " + "how " * i] for i in range(5)]
    for round_ in range(2):
        for i, turns in enumerate(conversations):
            messages = _conversation(f"Tutor {i}.", *turns)
            before = llm.evaluated_tokens()
            stats = GenerationStats()
            answer = llm.answer(messages, _greedy(16), stats=stats)
            evaluated = llm.evaluated_tokens() - before - (stats.generated_tokens - 1)
            if round_:  # the previous prompt and answer come from the cache (saved or live)
                previous = _conversation(f"Tutor {i}.", *turns[:-2])
                new_text = llm.render(messages)[len(llm.render(previous)) :]
                # the new turn, plus at most the answer's last token (sampled, never evaluated)
                # and one token re-split where the template trims the answer
                assert evaluated <= len(llm.tokenize(new_text)) + 2
                assert stats.evaluated_tokens == evaluated
                assert stats.reused_from in ("own", "saved")
            turns += [answer, f"And then, student {i}?"]
    count, nbytes = llm.saved_conversations()
    assert count >= 3 and 0 < nbytes <= 128 * 2**20


def test_stop_ends_one_answer_within_a_step_and_the_others_finish_unchanged(alone_llm, batched_llm):
    questions = [
        _conversation("You are a tutor.", f"Explain idea number {i} at length.") for i in range(3)
    ]
    long = _greedy(120)
    alone = [alone_llm.answer(q, long) for q in questions]
    stop = threading.Event()
    stats = GenerationStats()
    generated_when_stopped: list[int] = []

    def run(i: int) -> str:
        pieces = []
        for piece in batched_llm.stream(
            questions[i], long, cancel=stop if i == 1 else None, stats=stats if i == 1 else None
        ):
            pieces.append(piece)
            if i == 1 and len(pieces) == 3:
                stop.set()
                generated_when_stopped.append(stats.generated_tokens)
        return "".join(pieces)

    together = _run_together(run, 3)
    assert stats.stopped == "cancelled"
    assert stats.generated_tokens <= generated_when_stopped[0] + 1  # one step at most
    assert together[0] == alone[0] and together[2] == alone[2]
    assert alone[1].startswith(together[1])


def _record_batches(llm: TutorLLM) -> list[dict[int, int]]:
    """Each decode step's tokens by sequence, from now on."""
    ctx = llm._scheduler.context
    batches: list[dict[int, int]] = []
    current: collections.Counter[int] = collections.Counter()
    add, decode = ctx.add, ctx.decode

    def recording_add(token: int, pos: int, seq: int, logits: bool) -> int:
        current[seq] += 1
        return add(token, pos, seq, logits)

    def recording_decode(**kwargs) -> int:
        batches.append(dict(current))
        current.clear()
        return decode(**kwargs)

    ctx.add, ctx.decode = recording_add, recording_decode
    return batches


def _between_steps(llm: TutorLLM) -> tuple[threading.Event, threading.Event]:
    """(reached, go): the native thread stops after the step in progress until GO is set."""
    reached, go = threading.Event(), threading.Event()
    llm.thread.submit(lambda: (reached.set(), go.wait()))
    return reached, go


def _ask_in_background(llm: TutorLLM, question: list[dict], answers: list[str]) -> threading.Thread:
    """Ask QUESTION on a thread of its own; returns once the request has reached the engine."""
    inbox = llm._scheduler.inbox
    asking = threading.Thread(target=lambda: answers.append(llm.answer(question, _greedy(16))))
    asking.start()
    while inbox.empty():
        time.sleep(0.001)
    return asking


def test_a_newcomers_prompt_goes_first_and_the_others_wait_one_step_at_most(slow_gguf, alone_llm):
    """A step in which a newcomer samples its first token carries no other answer's token (on a
    CPU they would delay that token by their share of the step); the next step carries them
    again, even when another newcomer has come meanwhile."""
    llm = TutorLLM(slow_gguf, n_ctx=1024, n_threads=2, parallel=3, kv_type="f32")
    streaming = _conversation("You are a tutor.", "Explain idea number 1 at length.")
    newcomers = [_conversation("You are a tutor.", f"What is {n} times 8?") for n in (7, 9)]
    expected = [
        alone_llm.answer(q, _greedy(n))
        for q, n in [(streaming, 120)] + [(newcomers[0], 16), (newcomers[1], 16)]
    ]
    batches = _record_batches(llm)
    stream = llm.stream(streaming, _greedy(120))
    pieces = [next(stream)]  # it is generating: one token a step
    answers: list[str] = []
    reached, go = _between_steps(llm)
    reached.wait()
    first = _ask_in_background(llm, newcomers[0], answers)
    reached_again, go_again = _between_steps(llm)  # right after the newcomer's first step
    go.set()
    reached_again.wait()
    before = len(batches)
    second = _ask_in_background(llm, newcomers[1], answers)
    go_again.set()
    pieces += list(stream)
    first.join(JOIN_TIMEOUT_S)
    second.join(JOIN_TIMEOUT_S)
    prompt_step, next_step = batches[before - 1], batches[before]
    assert len(prompt_step) == 1 and list(prompt_step.values())[0] > 1  # the newcomer's prompt
    assert len(next_step) == 3  # the streaming answer, the newcomer's first answer token, the
    # second newcomer's prompt: no two steps in a row leave the streaming answer out
    assert "".join(pieces) == expected[0] and sorted(answers) == sorted(expected[1:])


def test_steps_cut_short_keep_nothing_and_every_answer_stays_as_alone(slow_gguf, alone_llm):
    """A step interrupted (for a transcription someone waits for) is redone whole, to its end
    this time: prompt chunks and generated tokens alike, and no answer changes by a token."""
    llm = TutorLLM(slow_gguf, n_ctx=1024, n_threads=2, parallel=3, kv_type="f32")
    questions = [
        _conversation("You are a tutor.", f"Explain idea number {i} at length.") for i in range(3)
    ]
    expected = [alone_llm.answer(q, _greedy(40)) for q in questions]
    ctx = llm._scheduler.context
    decode, steps = ctx.decode, []

    def cut_short_now_and_then(**kwargs) -> int:
        steps.append(kwargs)
        if len(steps) in (1, 2, 9, 10, 25):  # the prompts' step, its redo, generating steps
            ctx.interrupt.set()
        return decode(**kwargs)

    ctx.decode = cut_short_now_and_then
    answers = _run_together(lambda i: llm.answer(questions[i], _greedy(40)), 3)
    assert [answers[i] for i in range(3)] == expected
    assert llm._scheduler.steps_cut_short == 3  # each redo went to its end
    assert not ctx.interrupt.is_set()
    interruptible = [step["interruptible"] for step in steps]
    assert interruptible[:3] == [True, False, True] and interruptible[8:11] == [True, False, True]
    assert interruptible.count(False) == 3


def test_a_transcription_someone_waits_for_cuts_the_answer_step_short_a_partial_never(
    slow_gguf, tiny_whisper_path, alone_llm
):
    """On the native thread they share, a transcription marked urgent (a piece at a pause, a
    recording) interrupts the answer step in progress instead of waiting for its end; a partial
    transcription (urgent=False) waits. The answers are unchanged either way."""
    llm = TutorLLM(slow_gguf, n_ctx=1024, n_threads=2, parallel=2, kv_type="f32")
    transcriber = Transcriber(load_whisper(str(tiny_whisper_path)), thread=llm.thread)
    audio = np.zeros(16000, np.float32)
    questions = [
        _conversation("You are a tutor.", f"Explain idea number {i} at length.") for i in range(2)
    ]
    expected = [alone_llm.answer(q, _greedy(200)) for q in questions]

    def transcribe_while_answering(urgent: bool) -> list[str]:
        answering = threading.Event()

        def answer(i: int) -> str:
            pieces = []
            for piece in llm.stream(questions[i], _greedy(200)):
                pieces.append(piece)
                answering.set()
            return "".join(pieces)

        def transcribe_meanwhile() -> None:
            answering.wait()
            for _ in range(TRANSCRIPTIONS_TRIED):
                with contextlib.suppress(AudioError):  # silence: no words, as expected
                    transcriber.transcribe(audio, "en", 4, urgent=urgent)
                if urgent and llm._scheduler.steps_cut_short:
                    return

        meanwhile = threading.Thread(target=transcribe_meanwhile)
        meanwhile.start()
        answers = _run_together(answer, 2)
        meanwhile.join(JOIN_TIMEOUT_S)
        return [answers[i] for i in range(2)]

    assert transcribe_while_answering(urgent=False) == expected
    assert llm._scheduler.steps_cut_short == 0
    assert transcribe_while_answering(urgent=True) == expected
    assert llm._scheduler.steps_cut_short >= 1


def test_a_closed_stream_frees_its_slot_for_the_next_student(slow_gguf):
    llm = TutorLLM(slow_gguf, n_ctx=1024, n_threads=2, parallel=1)
    first = llm.stream(_conversation("Tutor.", "A long story, please."), _greedy(500))
    next(first)  # streaming: it holds the only slot
    waiting: list[str] = []
    second = threading.Thread(
        target=lambda: waiting.append(llm.answer(_conversation("Tutor.", "Hello?"), _greedy(16)))
    )
    second.start()
    first.close()  # the student left
    second.join(JOIN_TIMEOUT_S)
    assert waiting and llm.stats.stopped == "max_tokens"


def test_requests_wait_for_room_in_the_kv_cache_and_then_answer(slow_gguf, alone_llm):
    llm = TutorLLM(slow_gguf, n_ctx=512, n_threads=2, parallel=4, kv_tokens=512, kv_type="f32")
    questions = [_conversation(f"Tutor {i}.", f"Question {i}: " + "what " * 40) for i in range(4)]
    cells = [llm.count_tokens(q) + 60 for q in questions]  # prompt + answer budget
    assert max(cells) <= 512 < sum(cells)
    alone = {i: alone_llm.answer(q, _greedy(60)) for i, q in enumerate(questions)}
    together = _run_together(lambda i: llm.answer(questions[i], _greedy(60)), 4)
    assert together == alone
    assert llm.most_sequences_in_a_step() < 4  # their worst cases do not fit 512 cells at once


def test_pinned_prompts_give_way_to_a_conversation_that_needs_the_whole_cache(slow_gguf, alone_llm):
    llm = TutorLLM(slow_gguf, n_ctx=256, n_threads=2, parallel=2, kv_tokens=256, kv_type="f32")
    pinned = llm.pin(_conversation("A pinned mode prompt. " * 8))
    question = _conversation("Another prompt.", "word " * 50)
    assert llm.count_tokens(question) + 64 + pinned > 256 >= llm.count_tokens(question) + 64
    assert llm.answer(question, _greedy(64)) == alone_llm.answer(question, _greedy(64))


def test_conversations_rotating_through_a_small_store_keep_being_answered(slow_gguf):
    """One slot, three students taking turns, a store that holds about one saved conversation:
    restoring one while saving another must not lose either request."""
    llm = TutorLLM(slow_gguf, n_ctx=1024, n_threads=2, parallel=1, cache_bytes=2 * 2**20)
    histories = {i: [f"Student {i} asks: " + "what " * (3 * i + 2)] for i in range(3)}
    sources = set()
    for _ in range(3):
        for i, turns in histories.items():
            stats = GenerationStats()
            answer = llm.answer(_conversation(f"Tutor {i}.", *turns), _greedy(24), stats=stats)
            assert stats.stopped == "max_tokens" and stats.generated_tokens == 24
            sources.add(stats.reused_from)
            turns += [answer, "Go on."]
    assert "saved" in sources
    count, nbytes = llm.saved_conversations()
    assert 0 < nbytes <= 2 * 2**20


def test_a_full_line_is_refused_at_once_and_waiting_answers_hear_their_place(slow_gguf):
    llm = TutorLLM(slow_gguf, n_ctx=512, n_threads=2, parallel=1, max_waiting=2)
    questions = [_conversation("Tutor.", f"Question {i}?") for i in range(4)]
    answering = llm.stream(questions[0], _greedy(400))
    assert isinstance(next(answering), str)
    second, third = (llm.stream(q, _greedy(16), places=True) for q in questions[1:3])
    assert next(second) == InLine(1) and next(third) == InLine(2)
    with pytest.raises(BusyError, match="busy"):
        next(llm.stream(questions[3], _greedy(16)))
    assert llm.stats.stopped == "busy"
    answering.close()  # the first student leaves: the line moves up
    assert isinstance(next(second), str) and next(third) == InLine(1)
    assert "".join(p for p in second if isinstance(p, str))
    assert all(isinstance(p, str) for p in third)  # served in its turn
    assert llm.answer(questions[3], _greedy(16))  # and the engine keeps serving
