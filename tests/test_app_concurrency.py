"""A class at once through the running app: isolation of 16 sessions, a burst beyond the line.

The app runs `--parallel 4` on a seeded F32 model with an F32 KV cache and greedy modes, so that
an answer given in a crowd must equal, token for token, the answer given alone.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

import raw_http
from bench.harness import running_app
from bench.app import greedy_prompts

pytestmark = pytest.mark.slow  # starts apps, servers, a browser or training

N_STUDENTS = 16
PARALLEL = 4
JOIN_TIMEOUT_S = 600
WIND_DOWN_S = 120  # only a leaked thread reaches it: ended answers' threads end at once


def _serve(slow_gguf, tiny_whisper_path, tmp_path_factory, max_tokens: int, queue_size: int):
    """The app with PARALLEL answer slots, greedy modes of MAX_TOKENS, an F32 KV cache."""
    prompts = greedy_prompts(tmp_path_factory.mktemp("prompts"), max_tokens=max_tokens)
    log = tmp_path_factory.mktemp("logs") / "app.log"
    with running_app(
        model=slow_gguf,
        whisper=tiny_whisper_path,
        prompts=prompts,
        n_ctx=1024,
        threads=2,
        parallel=PARALLEL,
        kv_type="f32",
        queue_size=queue_size,
        log=log,
    ) as app:
        yield app.url


@pytest.fixture(scope="module")
def app_url(slow_gguf, tiny_whisper_path, tmp_path_factory):
    yield from _serve(slow_gguf, tiny_whisper_path, tmp_path_factory, 24, N_STUDENTS)


def _history(i: int) -> list[dict]:
    return [
        {"role": "user", "content": f"Student {i} asks about topic {i}: " + "why " * i},
        {"role": "assistant", "content": f"Topic {i} is about " + "this and that " * i},
    ]


def _question(i: int) -> str:
    return f"And what follows for topic {i}?"


@dataclass
class Burst:
    alone: dict[int, str]
    together: dict[int, str]


@pytest.fixture(scope="module")
def burst(app_url) -> Burst:
    client = Client(app_url, verbose=False)
    alone = {
        i: client.predict(_question(i), "explain", _history(i), api_name="/ask")
        for i in range(N_STUDENTS)
    }
    together: dict[int, str] = {}
    clients = [Client(app_url, verbose=False) for _ in range(N_STUDENTS)]
    go = threading.Barrier(N_STUDENTS)

    def student(i: int) -> None:
        go.wait()  # everyone asks at the same moment
        together[i] = clients[i].predict(_question(i), "explain", _history(i), api_name="/ask")

    threads = [threading.Thread(target=student, args=(i,)) for i in range(N_STUDENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT_S)
    return Burst(alone, together)


def test_sixteen_concurrent_sessions_get_exactly_the_answers_they_get_alone(burst):
    assert burst.together == burst.alone
    assert len(set(burst.alone.values())) == N_STUDENTS  # distinct histories, distinct answers


BURST = 40  # clients at once, against PARALLEL answers and a line of QUEUE_SIZE
QUEUE_SIZE = 16


@pytest.fixture(scope="module")
def long_answers_url(slow_gguf, tiny_whisper_path, tmp_path_factory):
    """200-token answers: the first ones are still streaming when the burst has arrived."""
    yield from _serve(slow_gguf, tiny_whisper_path, tmp_path_factory, 200, QUEUE_SIZE)


def test_a_burst_beyond_the_line_is_answered_whole_or_told_busy_at_once(long_answers_url):
    """Every client (gradio_client or raw HTTP) gets its whole answer or "busy" while the
    first answers are still streaming, never a hang; the app then serves normally."""
    clients = [Client(long_answers_url, verbose=False) for _ in range(BURST)]
    go = threading.Barrier(BURST)
    outcomes: dict[int, tuple[str, str, float]] = {}  # i -> (kind, text, when it ended)

    def student(i: int) -> None:
        go.wait()
        if i % 4 == 3:  # a quarter call the HTTP API directly
            outcome = raw_http.call(long_answers_url, "ask", "What is a fraction?", "hint", [])
            kind = "answer" if outcome.event == "complete" else "refused"
            text = outcome.data[0] if kind == "answer" else outcome.data
        else:
            try:
                kind, text = (
                    "answer",
                    clients[i].predict("What is a fraction?", "hint", [], api_name="/ask"),
                )
            except AppError as e:
                kind, text = "refused", str(e)
        outcomes[i] = (kind, text, time.monotonic())

    threads = [threading.Thread(target=student, args=(i,)) for i in range(BURST)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT_S)
    assert len(outcomes) == BURST  # nobody left hanging
    answers = [o for o in outcomes.values() if o[0] == "answer"]
    refusals = [o for o in outcomes.values() if o[0] == "refused"]
    assert len(answers) >= PARALLEL + QUEUE_SIZE and refusals
    assert all("The tutor is busy" in text and "Traceback" not in text for _, text, _ in refusals)
    assert max(end for *_, end in refusals) < max(end for *_, end in answers)  # told at once
    after = Client(long_answers_url, verbose=False).predict(
        "What is a fraction?", "hint", [], api_name="/ask"
    )
    assert {text for _, text, _ in answers} == {after}  # whole answers, the same as alone


def _health(url: str) -> dict:
    return Client(url, verbose=False).predict(api_name="/health")


def test_fifty_clients_vanishing_mid_answer_leave_nothing_behind(long_answers_url):
    before = _health(long_answers_url)
    for _ in range(50):
        raw_http.abandon(long_answers_url, "ask", "Tell me about fractions.", "hint", [])
    deadline = time.monotonic() + JOIN_TIMEOUT_S  # a hang guard: we wait for the counters
    while (health := _health(long_answers_url))["answering"] or health["waiting"]:
        assert time.monotonic() < deadline, health
        time.sleep(0.1)
    ended = {
        k: health["answers_ended"].get(k, 0) - before["answers_ended"].get(k, 0)
        for k in health["answers_ended"]
    }
    assert ended.get("cancelled", 0) == 50 and ended.get("max_tokens", 0) == 0  # none ran on

    def own(health: dict) -> int:  # threads beyond Gradio's worker pool: the app's own
        return health["threads"] - health["worker_threads"]

    settled = time.monotonic() + WIND_DOWN_S
    while own(health := _health(long_answers_url)) > own(before):  # the app's own wind down
        assert time.monotonic() < settled, (health, before)
        time.sleep(0.1)
    # The pool keeps idle workers a while (AnyIO retires them when it is next used, after 10 s
    # idle): never more than its bound, however many clients came and went.
    assert health["worker_threads"] <= health["max_worker_threads"] < 50
