"""The README's run command on a fresh machine with no network: stand-in models and a notice."""

from __future__ import annotations

import json
import urllib.request

from gradio_client import Client

from bench.harness import running_app


def test_app_starts_offline_on_standins_and_says_so(tmp_path):
    fresh = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
             "XDG_CACHE_HOME": str(tmp_path / "xdg"), "TUTOR_CACHE": str(tmp_path / "tutor")}
    with running_app(env=fresh, log=tmp_path / "app.log") as app:
        url = app.url
        config = json.load(urllib.request.urlopen(url + "config"))
        texts = [str(c.get("props", {}).get("value", "")) for c in config["components"]]
        notice = next(t for t in texts if "Stand-in models" in t)
        assert "not meaningful" in notice and "--model" in notice
        job = Client(url, verbose=False).submit("What is 2 + 2?", "hint", [], api_name="/ask")
        assert list(job) and job.result()
    assert (tmp_path / "tutor" / "standin-llama-q8_0.gguf").is_file()
