"""The app on OpenAI-compatible servers (`--llm-url`): real servers on loopback, no HTTP mocks.

Two servers, each on the same fixture GGUF: llama-cpp-python's own (`python -m llama_cpp.server`)
and llama.cpp's `llama-server` built from the vendored source (skipped where it is not built).
Through the app and gradio_client: streaming in every mode, follow-ups, Stop, and greedy answers
equal to the embedded engine's; then each failure of the remote side, produced for real.

Equal answers need exact arithmetic on both sides: F32 weights and an F32 KV cache without flash
attention (as `test_app_concurrency`). With F16 or Q8_0 the tiny model's near-tied logits flip
under the rounding of another attention kernel or batch split, in one mode of four.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

import servers
from bench.harness import running_app
from bench.app import greedy_prompts
from tutor.llm import TutorLLM
from tutor.modes import load_modes
from tutor.remote_llm import CUT_NOTE
from tutor.service import Tutor

pytestmark = pytest.mark.slow  # starts apps, servers, a browser or training

MAX_TOKENS = 48
LONG_ANSWER_TOKENS = 4000  # the slow model never ends: Stop or a failure must end the answer
QUESTION = "How do I solve 3x + 5 = 20?"
FOLLOW_UP = "And what if it were 3x - 5 = 20?"
WAIT_S = 600.0  # only a hang reaches it


def _ask(client: Client, question: str, mode: str, history=None) -> list[str]:
    """Every streamed update of one /ask call (AppError if the request failed)."""
    job = client.submit(question, mode, history or [], api_name="/ask")
    updates = list(job)
    job.result()  # iterating a failed job just ends; its result raises the app's error
    return updates


def _app_on(url: str, whisper: Path, prompts: Path, log: Path, **options):
    """The app answering through the server at URL with the tiny Whisper in-process, counting
    tokens with the server's own endpoints (no --tokenizer)."""
    return running_app(llm_url=f"{url}/v1", whisper=whisper, prompts=prompts, log=log, **options)


EXACT = {
    "llama_cpp": ["--type_k", "0", "--type_v", "0", "--flash_attn", "false"],  # 0: F32
    "llama-server": ["-ctk", "f32", "-ctv", "f32", "-fa", "off"],
}


def _server(kind: str, model: Path, log: Path, *args: str, port: int | None = None):
    start = servers.llama_cpp_server if kind == "llama_cpp" else servers.llama_server
    return start(model, log, *args, port=port)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    return greedy_prompts(tmp_path_factory.mktemp("prompts"), MAX_TOKENS)


@pytest.fixture(scope="module")
def exact_gguf(tiny_llama_dir, tmp_path_factory) -> Path:
    """The tiny fitted Llama in F32."""
    from export.to_gguf import export

    return export(tiny_llama_dir, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", "F32").path


@pytest.fixture(scope="module", params=["llama_cpp", "llama-server"])
def remote(request, exact_gguf, tiny_whisper_path, prompts, tmp_path_factory):
    """(app URL, server) for the app with --llm-url on each kind of server."""
    kind = request.param
    logs = tmp_path_factory.mktemp(f"logs-{kind}")
    with (
        _server(kind, exact_gguf, logs / "server.log", *EXACT[kind]) as server,
        _app_on(
            server.url,
            tiny_whisper_path,
            prompts,
            logs / "app.log",
            update_interval=0,
        ) as app,
    ):
        yield app.url, server


@pytest.fixture(scope="module")
def embedded(exact_gguf, prompts) -> Tutor:
    """The embedded engine on the same GGUF and modes, for comparison."""
    return Tutor(
        TutorLLM(exact_gguf, n_ctx=1024, n_threads=2, kv_type="f32"), None, load_modes(prompts)
    )


def _embedded_answer(tutor: Tutor, question: str, mode: str, history=None) -> str:
    *_, answer = tutor.ask(question, mode, history)
    return answer


CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [
        {"role": "system", "content": "You are a patient tutor.\n\n1. Ask.\n2. Wait."},
        {"role": "user", "content": "How do I solve 3x + 5 = 20?"},
        {"role": "assistant", "content": "Subtract 5 from both sides:\n\n3x = 15"},
        {"role": "user", "content": "And then? Ünïcödé, émoji 🙂, <b>tags</b>"},
    ],
]


@pytest.mark.parametrize("model", ["tiny Llama 3 template", "SmolLM2-135M-Instruct (ChatML)"])
def test_llama_cpp_pythons_server_counts_prompts_as_it_evaluates_them(
    model, exact_gguf, real_wheel_models_cache, tmp_path
):
    """`--llm-url` on `python -m llama_cpp.server` needs no --tokenizer: its prompt lengths (the
    chat template included) equal what the server reports evaluating."""
    import openai

    from tutor.remote import ServerOptions
    from tutor.remote_llm import RemoteLLM

    path = (
        exact_gguf
        if model.startswith("tiny")
        else (real_wheel_models_cache / "wheels" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    )
    with servers.llama_cpp_server(path, tmp_path / "server.log") as server:
        llm = RemoteLLM(ServerOptions(f"{server.url}/v1"))
        assert "llama-cpp-python" in llm.count_tokens.source
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
        for messages in CONVERSATIONS:
            done = client.chat.completions.create(
                model=llm.model, messages=messages, max_tokens=1, temperature=0.0
            )
            assert llm.count_tokens(messages) == done.usage.prompt_tokens, messages


def test_ask_streams_in_every_mode(remote, embedded):
    client = Client(remote[0], verbose=False)
    for mode in embedded.modes:
        updates = _ask(client, QUESTION, mode)
        assert len(updates) >= 2, f"{mode}: the answer came in one piece"
        assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(updates, updates[1:]))


def test_greedy_answers_equal_the_embedded_engines_in_every_mode(remote, embedded):
    client = Client(remote[0], verbose=False)
    for mode in embedded.modes:
        assert _ask(client, QUESTION, mode)[-1] == _embedded_answer(embedded, QUESTION, mode), mode


def test_a_follow_up_keeps_the_history(remote, embedded):
    client = Client(remote[0], verbose=False)
    first = _ask(client, QUESTION, "hint")[-1]
    history = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": first}]
    # A server tokenizes the whole prompt afresh; the embedded engine would reuse its answer's
    # tokens as sampled (tutor.context_cache), another split of the same text: start it afresh.
    embedded.llm.forget()
    expected = _embedded_answer(embedded, FOLLOW_UP, "hint", history)
    assert _ask(client, FOLLOW_UP, "hint", history)[-1] == expected


@pytest.fixture(params=["llama_cpp", "llama-server"])
def slow_remote(request, slow_gguf, tiny_whisper_path, tmp_path):
    """The app on a server of the slow, never-ending model, with long answers."""
    kind = request.param
    prompts = greedy_prompts(tmp_path / "prompts", LONG_ANSWER_TOKENS)
    with (
        _server(kind, slow_gguf, tmp_path / "server.log") as server,
        _app_on(
            server.url,
            tiny_whisper_path,
            prompts,
            tmp_path / "app.log",
            update_interval=0,
            remote_timeout=600,
        ) as app,
    ):
        yield kind, app.url, server


def _until(condition, what: str, timeout_s: float = WAIT_S) -> None:
    """Wait for CONDITION (polled); only a hang reaches the timeout."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _start_answer(client: Client, updates_before: int = 3):
    """Submit a long answer and return its job once UPDATES_BEFORE updates have streamed."""
    job = client.submit(QUESTION, "explain", [], api_name="/ask")
    _until(lambda: len(job.outputs()) >= updates_before or job.done(), "the answer to stream")
    assert not job.done(), job.outputs()[-1:]
    return job


def test_stop_closes_the_remote_stream_and_the_server_stops_generating(slow_remote):
    kind, url, server = slow_remote
    client = Client(url, verbose=False)
    job = _start_answer(client)
    job.cancel()
    # Each server logs it when a client goes: it stops generating for it.
    seen = "Disconnected from client" if kind == "llama_cpp" else "stop: cancel task"
    _until(lambda: seen in server.log_text(), "the server to see the connection closed")
    if kind == "llama-server":
        _until(
            lambda: (
                not any(
                    s["is_processing"] for s in httpx.get(f"{server.url}/slots", timeout=30).json()
                )
            ),
            "the server to free the slot",
        )
    # The server is free again: a second question streams right away.
    assert len(_start_answer(client).outputs()) >= 3


def test_a_server_killed_mid_answer_leaves_the_partial_answer_marked_as_cut(
    slow_remote, slow_gguf, tmp_path
):
    kind, url, server = slow_remote
    client = Client(url, verbose=False)
    job = _start_answer(client)
    partial = job.outputs()[-1]
    server.proc.kill()
    _until(job.done, "the answer to end")
    answer = job.result()  # the cut answer is an answer, not an error
    assert answer.startswith(partial) and answer.endswith(CUT_NOTE)
    # A new question needs the server (llama-server's token count, then the answer).
    for question in (QUESTION, FOLLOW_UP):
        with pytest.raises(AppError, match="cannot be reached"):
            _ask(client, question, "hint")
    # The app kept serving: once the server is back on its port, answers flow again.
    with _server(kind, slow_gguf, tmp_path / "server2.log", port=server.port):
        assert len(_start_answer(client).outputs()) >= 3


def test_a_frozen_server_times_out_with_a_message_then_recovers(
    tiny_gguf, tiny_whisper_path, prompts, tmp_path
):
    with (
        servers.llama_cpp_server(tiny_gguf, tmp_path / "server.log") as server,
        _app_on(
            server.url,
            tiny_whisper_path,
            prompts,
            tmp_path / "app.log",
            remote_timeout=1,
        ) as app,
    ):
        client = Client(app.url, verbose=False)
        server.freeze()
        try:
            with pytest.raises(AppError, match="taking too long"):
                _ask(client, QUESTION, "hint")
        finally:
            server.thaw()
        assert _ask(client, QUESTION, "hint")[-1]


@pytest.mark.parametrize("status", [429, 503])
def test_a_server_at_capacity_gets_a_busy_message_after_retries(
    status, tiny_gguf, tiny_llama_dir, tiny_whisper_path, prompts, tmp_path
):
    """The balancer lets one completion a minute through: the app counts tokens with the
    tokenizer it is given (measuring the server's template takes completions)."""
    with (
        servers.llama_cpp_server(tiny_gguf, tmp_path / "server.log") as server,
        servers.rate_limiter(server, tmp_path, status=status) as balancer,
        _app_on(
            balancer.url,
            tiny_whisper_path,
            prompts,
            tmp_path / "app.log",
            tokenizer=tiny_llama_dir / "tokenizer.json",
        ) as app,
    ):
        client = Client(app.url, verbose=False)
        assert _ask(client, QUESTION, "hint")[-1]  # the one answer a minute the balancer allows
        with pytest.raises(AppError, match="busy"):
            _ask(client, QUESTION, "hint")
        refused = (tmp_path / "access.log").read_text().count(f'" {status} ')
        assert refused >= 2, "the client did not retry"  # the first try, then backoff retries
        assert client.predict(api_name="/health")["answering"] == 0  # and the app serves on


def test_concurrent_answers_on_one_server_are_each_whole(remote, embedded):
    """Several students at once through one server: each answer equals the one given alone."""
    url, _ = remote
    alone = {mode: _embedded_answer(embedded, QUESTION, mode) for mode in embedded.modes}
    together: dict[str, str] = {}

    def ask(mode: str) -> None:
        together[mode] = _ask(Client(url, verbose=False), QUESTION, mode)[-1]

    threads = [threading.Thread(target=ask, args=(mode,)) for mode in embedded.modes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert together == alone
