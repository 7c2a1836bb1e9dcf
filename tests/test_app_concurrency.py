"""A class at once through the running app: isolation of 16 sessions, places in the queue.

The app runs `--parallel 4` on a seeded F32 model with an F32 KV cache and greedy modes, so that
an answer given in a crowd must equal, token for token, the answer given alone.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest
from gradio_client import Client
from gradio_client.utils import Status

from app_process import running_app
from bench.app import greedy_prompts

N_STUDENTS = 16
PARALLEL = 4
STATUS_POLL_S = 0.02  # how often a waiting client looks at its job's status
JOIN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def app_url(slow_gguf, tiny_whisper_path, tmp_path_factory):
    prompts = greedy_prompts(tmp_path_factory.mktemp("prompts"), max_tokens=24)
    log = tmp_path_factory.mktemp("logs") / "app.log"
    with running_app("--model", str(slow_gguf), "--whisper", str(tiny_whisper_path),
                     "--prompts", str(prompts), "--n-ctx", "1024", "--threads", "2",
                     "--parallel", str(PARALLEL), "--kv-type", "f32",
                     "--queue-size", str(N_STUDENTS), log=log) as app:
        yield app.url


def _history(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Student {i} asks about topic {i}: " + "why " * i},
            {"role": "assistant", "content": f"Topic {i} is about " + "this and that " * i}]


def _question(i: int) -> str:
    return f"And what follows for topic {i}?"


@dataclass
class Burst:
    alone: dict[int, str]
    together: dict[int, str]
    ranks: dict[int, list[int]]  # places in line each student was shown


@pytest.fixture(scope="module")
def burst(app_url) -> Burst:
    client = Client(app_url, verbose=False)
    alone = {i: client.predict(_question(i), "explain", _history(i), api_name="/ask")
             for i in range(N_STUDENTS)}
    together: dict[int, str] = {}
    ranks: dict[int, list[int]] = {i: [] for i in range(N_STUDENTS)}
    clients = [Client(app_url, verbose=False) for _ in range(N_STUDENTS)]
    go = threading.Barrier(N_STUDENTS)

    def student(i: int) -> None:
        go.wait()  # everyone asks at the same moment
        job = clients[i].submit(_question(i), "explain", _history(i), api_name="/ask")
        while not job.done():
            status = job.status()
            if status.code == Status.IN_QUEUE and status.rank is not None:
                ranks[i].append(status.rank)
            time.sleep(STATUS_POLL_S)
        together[i] = job.result()

    threads = [threading.Thread(target=student, args=(i,)) for i in range(N_STUDENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT_S)
    return Burst(alone, together, ranks)


def test_sixteen_concurrent_sessions_get_exactly_the_answers_they_get_alone(burst):
    assert burst.together == burst.alone
    assert len(set(burst.alone.values())) == N_STUDENTS  # distinct histories, distinct answers


def test_students_beyond_the_parallel_answers_are_shown_their_place_in_line(burst):
    shown = [max(ranks) for ranks in burst.ranks.values() if ranks]
    assert shown and max(shown) >= 1  # someone waited behind others, and was told so
