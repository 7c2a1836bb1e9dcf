"""`--stt-url`: the app transcribes on an OpenAI-compatible transcription server, and with both
`--llm-url` and `--stt-url` it loads no model of its own.

The transcription server is tests/whisper_server.py (the project's Whisper behind OpenAI's API;
no registry package serves a Whisper checkpoint path offline), run on loopback.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import servers
from bench.harness import running_app
from audio_files import write
from tutor import audio
from tutor.remote_stt import wav_bytes
from tutor.transcribe import Transcriber, load_whisper

pytestmark = pytest.mark.slow  # starts apps, servers, a browser or training

CLIPS = ["ljspeech/LJ001-0002.wav", "whisper/jfk.flac"]


@pytest.fixture(scope="module")
def speech_server(tiny_whisper_path, tmp_path_factory):
    with servers.whisper_server(
        tiny_whisper_path, tmp_path_factory.mktemp("logs") / "whisper.log"
    ) as server:
        yield server


@pytest.fixture(scope="module")
def language_server(tiny_gguf, tmp_path_factory):
    with servers.llama_cpp_server(tiny_gguf, tmp_path_factory.mktemp("logs") / "llm.log") as server:
        yield server


@pytest.fixture(scope="module")
def app(speech_server, language_server, tiny_llama_dir, tmp_path_factory):
    """The app with both models on servers: a thin front end."""
    with running_app(
        llm_url=f"{language_server.url}/v1",
        tokenizer=tiny_llama_dir / "tokenizer.json",
        stt_url=f"{speech_server.url}/v1",
        log=tmp_path_factory.mktemp("logs") / "app.log",
    ) as running:
        yield running


def _received(server: servers.Server) -> int:
    return httpx.get(f"{server.url}/requests", timeout=30).json()["received"]


@pytest.mark.parametrize("clip", CLIPS)
def test_transcribe_through_the_speech_server_equals_local_whisper(
    clip, app, assets, tiny_whisper_path
):
    """The server hears the decoded, gated recording as 16 kHz 16-bit WAV: its text is local
    Whisper's on that same audio."""
    path = assets / "speech" / clip
    sent = audio.load(wav_bytes(audio.load(path)))
    expected = Transcriber(load_whisper(str(tiny_whisper_path)), threads=1).transcribe(sent)
    text = Client(app.url, verbose=False).predict(
        handle_file(str(path)), "en", api_name="/transcribe"
    )
    assert text == expected


def test_silence_is_refused_here_and_never_sent(app, speech_server, tmp_path):
    silence = write(tmp_path / "silence.wav", np.zeros((16000 * 3, 1), np.float32), 16000)
    before = _received(speech_server)
    with pytest.raises(AppError, match="silent|silence|No speech"):
        Client(app.url, verbose=False).predict(
            handle_file(str(silence)), "en", api_name="/transcribe"
        )
    assert _received(speech_server) == before


def _mapped_files(pid: int) -> set[str]:
    return {
        line.split(maxsplit=5)[5]
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
        if len(line.split(maxsplit=5)) == 6
    }


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return (
        int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
        / 1024
    )


def test_an_app_on_servers_loads_no_model_of_its_own(
    app, tiny_gguf, tiny_whisper_path, tmp_path, record_property
):
    """No torch, no Whisper, no GGUF in the process; its memory beside the embedded app's."""
    Client(app.url, verbose=False).predict("What is 2 + 2?", "hint", [], api_name="/ask")
    files = _mapped_files(app.pid)
    assert not [f for f in files if "libtorch" in f or f.endswith(".gguf")], files
    thin_mb = _rss_mb(app.pid)
    with running_app(
        model=tiny_gguf, whisper=tiny_whisper_path, log=tmp_path / "embedded.log"
    ) as embedded:
        Client(embedded.url, verbose=False).predict("What is 2 + 2?", "hint", [], api_name="/ask")
        embedded_mb = _rss_mb(embedded.pid)
        assert any("libtorch" in f for f in _mapped_files(embedded.pid))  # the check can fail
    record_property("rss_mb", {"on servers": round(thin_mb), "embedded": round(embedded_mb)})
    print(f"RSS: app on servers {thin_mb:.0f} MB, embedded app (tiny models) {embedded_mb:.0f} MB")
    assert thin_mb < embedded_mb
