"""Start-up faults: one clear line each, a non-zero exit, nothing half-built left behind.

The model servers of `--llm-url` and `--stt-url` are checked once at start-up, too."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys

import gguf
import numpy as np
import pytest

import servers
from bench.harness import ROOT, free_port

pytestmark = pytest.mark.slow  # starts apps, servers, a browser or training

START_TIMEOUT_S = 600  # only a hang reaches it


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the app until it exits (each case must make it exit)."""
    return subprocess.run(
        [sys.executable, "space_app.py", "--port", str(free_port()), *args],
        cwd=ROOT,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
    )


def _assert_one_clear_line(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(w in last for w in words), last


@pytest.fixture
def models(tiny_gguf, tiny_whisper_path) -> list[str]:
    return ["--model", str(tiny_gguf), "--whisper", str(tiny_whisper_path)]


def test_a_gguf_truncated_in_the_middle(tiny_gguf, tiny_whisper_path, tmp_path):
    truncated = tmp_path / "truncated.gguf"
    data = tiny_gguf.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    result = _start("--model", str(truncated), "--whisper", str(tiny_whisper_path))
    _assert_one_clear_line(result, "truncated.gguf")


def test_a_gguf_of_an_unsupported_architecture(tiny_whisper_path, tmp_path):
    path = tmp_path / "unknown-arch.gguf"
    writer = gguf.GGUFWriter(str(path), "made-up-architecture")
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    result = _start("--model", str(path), "--whisper", str(tiny_whisper_path))
    _assert_one_clear_line(result, "unknown-arch.gguf")


def test_a_whisper_checkpoint_of_the_wrong_format(tiny_gguf, tmp_path):
    wrong = tmp_path / "whisper.pt"
    wrong.write_bytes(b"this is not a torch checkpoint" * 100)
    result = _start("--model", str(tiny_gguf), "--whisper", str(wrong))
    _assert_one_clear_line(result, "whisper.pt")


def test_a_prompts_folder_with_a_broken_file(models, tmp_path):
    prompts = tmp_path / "prompts"
    shutil.copytree(ROOT / "prompts", prompts)
    (prompts / "hint.yaml").write_text("name: hint\nsystem_prompt: [unclosed\n")
    result = _start(*models, "--prompts", str(prompts))
    _assert_one_clear_line(result, "hint.yaml")


def test_a_port_already_in_use(models):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _start(*models, "--port", str(port))
    _assert_one_clear_line(result, str(port), "--port")
    assert "CPU kernels" not in result.stderr  # said before the models load, not after


def test_a_port_out_of_range(models):
    _assert_one_clear_line(_start(*models, "--port", "0"), "--port must be between 1 and 65535")


def test_no_room_to_build_the_standins(tmp_path):
    cache = tmp_path / "read-only-cache"
    cache.mkdir()
    cache.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.access(cache, os.W_OK):  # root ignores permissions: use a file where a folder must go
        cache.chmod(stat.S_IRWXU)
        cache.rmdir()
        cache.write_text("not a folder")
    offline = {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        "TUTOR_CACHE": str(cache),
    }
    result = _start(env=offline)
    _assert_one_clear_line(result, "stand-in")
    if cache.is_dir():
        assert not any(cache.iterdir())  # nothing half-built


def _closed_port_url() -> str:
    with socket.socket() as s:  # bound and closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def test_an_unreachable_language_model_server(tiny_whisper_path):
    url = _closed_port_url()
    result = _start("--llm-url", url, "--whisper", str(tiny_whisper_path))
    _assert_one_clear_line(result, "cannot reach the language model server", url)


def test_an_unreachable_speech_server(tiny_gguf):
    url = _closed_port_url()
    result = _start("--model", str(tiny_gguf), "--stt-url", url)
    _assert_one_clear_line(result, "cannot reach the speech recognition server", url)


def test_a_wrong_api_key(tiny_gguf, tiny_whisper_path, tmp_path):
    with servers.llama_cpp_server(
        tiny_gguf, tmp_path / "server.log", "--api_key", "the-right-key"
    ) as server:
        result = _start(
            "--llm-url",
            f"{server.url}/v1",
            "--whisper",
            str(tiny_whisper_path),
            env={"TUTOR_LLM_API_KEY": "a-wrong-key"},
        )
    _assert_one_clear_line(result, "refused the API key (401)")
    assert "a-wrong-key" not in result.stderr + result.stdout  # keys stay out of logs


def test_a_server_without_a_tokenizer_endpoint_needs_a_tokenizer(
    tiny_gguf, tiny_whisper_path, tmp_path
):
    """A gateway that passes only the OpenAI API (/v1/) hides every tokenizer endpoint."""
    with (
        servers.llama_cpp_server(tiny_gguf, tmp_path / "server.log") as server,
        servers.rate_limiter(server, tmp_path, rate="100r/s", openai_api_only=True) as gateway,
    ):
        result = _start("--llm-url", f"{gateway.url}/v1", "--whisper", str(tiny_whisper_path))
    _assert_one_clear_line(result, "--tokenizer")
