"""The README's run command on a fresh machine with no network: stand-in models and a notice
that says what is affected and what to do, without the download error."""

from __future__ import annotations

import pytest

import json
import urllib.request
from pathlib import Path

from gradio_client import Client

from bench.harness import running_app

pytestmark = pytest.mark.slow  # starts apps, servers, a browser or training


def _offline(tmp_path: Path) -> dict[str, str]:
    return {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        "TUTOR_CACHE": str(tmp_path / "tutor"),
    }


def _notice(url: str) -> str:
    config = json.load(urllib.request.urlopen(url + "config"))
    texts = [str(c.get("props", {}).get("value", "")) for c in config["components"]]
    return next(t for t in texts if "Stand-in" in t)


def test_app_starts_offline_on_standins_and_says_so(tmp_path):
    with running_app(env=_offline(tmp_path), log=tmp_path / "app.log") as app:
        notice = _notice(app.url)
        assert "answers and transcripts are not meaningful" in notice
        assert "--model PATH.gguf" in notice and "--whisper PATH.pt" in notice
        assert "Errno" not in notice and "urlopen" not in notice  # the error is in the log
        job = Client(app.url, verbose=False).submit("What is 2 + 2?", "hint", [], api_name="/ask")
        assert list(job) and job.result()
    assert (tmp_path / "tutor" / "standin-llama-q8_0.gguf").is_file()


def test_own_gguf_offline_says_only_speech_is_a_stand_in(tiny_gguf, tmp_path):
    with running_app(model=tiny_gguf, env=_offline(tmp_path), log=tmp_path / "app.log") as app:
        notice = _notice(app.url)
    assert "Stand-in speech model" in notice and "typed questions are answered" in notice
    assert "answers are not meaningful" not in notice and "--model" not in notice
    assert "--whisper base.en" not in notice  # what failed is not advice
