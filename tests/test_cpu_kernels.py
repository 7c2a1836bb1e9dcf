"""llama.cpp's CPU kernels: the AMX probe, the plain fallback, and the AMX path where it runs.

The fallback path (weights kept as stored, `use_extra_bufts = False`) is forced here, so that it
stays covered on hosts without AMX; on a host with AMX the real kernels are checked too.
"""

from __future__ import annotations

import logging
import sys

import pytest

from tutor import cpu_kernels
from tutor.cpu_kernels import Kernels, choose
from tutor.llm import TutorLLM
from tutor.modes import Generation

CRASHING_CHILD = (sys.executable, "-c", "import ctypes; ctypes.string_at(0)")  # SIGSEGV
GREEDY = Generation(max_tokens=16, temperature=0.0)


def _buffers_logged(caplog) -> str:
    return " ".join(r.getMessage() for r in caplog.records if "model buffer size" in r.getMessage())


def test_a_child_that_dies_is_reported_with_its_signal():
    assert "signal 11" in cpu_kernels.probe(CRASHING_CHILD)
    assert cpu_kernels.probe((sys.executable, "-c", "pass")) == ""
    failed = cpu_kernels.probe((sys.executable, "-c", "raise SystemExit('no quantizer')"))
    assert "no quantizer" in failed


def test_where_amx_kernels_crash_models_load_plain_and_the_verdict_is_cached(
    monkeypatch, tmp_path, tiny_gguf, caplog
):
    monkeypatch.setattr(cpu_kernels, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(cpu_kernels, "library_has_amx", lambda: True)
    monkeypatch.setattr(cpu_kernels, "PROBE_ARGV", CRASHING_CHILD)
    choice = choose("auto", cache_dir=tmp_path)
    assert choice.kernels is Kernels.PLAIN
    assert "crash" in choice.describe() and "signal 11" in choice.describe()
    # The next start reads the verdict instead of probing again.
    monkeypatch.setattr(cpu_kernels, "PROBE_ARGV", (sys.executable, "-c", "pass"))
    assert choose("auto", cache_dir=tmp_path).kernels is Kernels.PLAIN
    assert list(tmp_path.glob("amx-probe-*.json"))

    caplog.set_level(logging.INFO, logger="llama.cpp")
    llm = TutorLLM(tiny_gguf, n_ctx=256, n_threads=2, kernels=choice)
    llm.answer([{"role": "user", "content": "Hello"}], GREEDY)
    assert llm.stats.evaluated_tokens > 0 and llm.stats.generated_tokens > 0
    buffers = _buffers_logged(caplog)
    assert "AMX" not in buffers and "REPACK" not in buffers, buffers


def test_the_settings_choose_without_probing(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_kernels, "PROBE_ARGV", CRASHING_CHILD)
    assert choose("plain", cache_dir=tmp_path).kernels is Kernels.PLAIN
    assert choose("extra", cache_dir=tmp_path).kernels is not Kernels.PLAIN
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="auto, extra or plain"):
        choose("fast", cache_dir=tmp_path)


@pytest.mark.skipif(
    not (cpu_kernels.cpu_has_amx() and cpu_kernels.library_has_amx()),
    reason="this CPU or this llama.cpp build has no AMX",
)
def test_amx_kernels_run_in_this_build(tmp_path, tiny_gguf, caplog):
    """`make` builds llama.cpp with GCC 12's AMX intrinsic fixed: the probe's child decodes
    Q4_0, Q4_1, Q8_0 and Q4_K_M models on AMX tiles, and the engine uses them."""
    assert cpu_kernels.probe() == ""
    choice = choose("auto", cache_dir=tmp_path)
    assert choice.kernels is Kernels.AMX
    caplog.set_level(logging.INFO, logger="llama.cpp")
    llm = TutorLLM(tiny_gguf, n_ctx=256, n_threads=2, kernels=choice)
    llm.answer([{"role": "user", "content": "Hello"}], GREEDY)
    assert llm.stats.evaluated_tokens > 0 and llm.stats.generated_tokens > 0
    assert "AMX" in _buffers_logged(caplog)


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["plain", "auto"])
def test_the_app_says_which_kernels_run_and_answers_on_them(
    setting, tiny_gguf, tiny_whisper_path, tmp_path
):
    from gradio_client import Client

    from bench.harness import running_app

    log = tmp_path / "app.log"
    with running_app(
        model=tiny_gguf,
        whisper=tiny_whisper_path,
        n_ctx=512,
        threads=2,
        cpu_kernels=setting,
        env={"TUTOR_CACHE": str(tmp_path / "cache")},
        log=log,
    ) as app:
        client = Client(app.url, verbose=False)
        job = client.submit("What is 2 + 3?", "hint", [], api_name="/ask")
        list(job)
        assert isinstance(job.result(), str)
        health = client.predict(api_name="/health")
    expected = "plain" if setting == "plain" else choose("auto", tmp_path / "cache").kernels.value
    assert health["cpu_kernels"] == expected
    lines = [line for line in log.read_text().splitlines() if "llama.cpp CPU kernels:" in line]
    assert len(lines) == 1 and f"kernels: {expected} (" in lines[0], lines


def test_a_probe_that_could_not_run_is_not_cached(monkeypatch, tmp_path):
    """A timeout or a probe failing for another reason says plain for now, and asks again."""
    monkeypatch.setattr(cpu_kernels, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(cpu_kernels, "library_has_amx", lambda: True)
    monkeypatch.setattr(cpu_kernels, "PROBE_ARGV", (sys.executable, "-c", "raise SystemExit(3)"))
    assert choose("auto", cache_dir=tmp_path).kernels is Kernels.PLAIN
    assert not list(tmp_path.glob("amx-probe-*.json"))
    monkeypatch.setattr(cpu_kernels, "PROBE_ARGV", (sys.executable, "-c", "pass"))
    assert choose("auto", cache_dir=tmp_path).kernels is Kernels.AMX
    assert list(tmp_path.glob("amx-probe-*.json"))
