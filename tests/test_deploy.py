"""deploy/compose.yaml: its two services' own commands and environment, run on loopback.

No Docker daemon runs here, so the images are not built; what the compose file says the
services run (llama-server's flags, the tutor's command and settings) is run as written, with
container paths, host names and ports mapped to this machine.
"""

from __future__ import annotations

import pytest

import yaml
from gradio_client import Client

import servers
from bench.harness import ROOT, free_port, running_app

pytestmark = pytest.mark.slow  # starts apps, servers, a browser or training

COMPOSE = ROOT / "deploy" / "compose.yaml"


def _services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_the_compose_file_wires_the_tutor_to_the_llm_service():
    services = _services()
    llm, tutor = services["llm"], services["tutor"]
    port = llm["command"][llm["command"].index("--port") + 1]
    assert tutor["environment"]["TUTOR_LLM_URL"] == f"http://llm:{port}/v1"
    assert tutor["depends_on"]["llm"]["condition"] == "service_healthy"
    assert (ROOT / "deploy" / tutor["build"]["dockerfile"].removeprefix("deploy/")).is_file()


def _mapped(command: list[str], replacements: dict[str, str]) -> list[str]:
    return [replacements.get(arg, arg) for arg in command]


def test_the_compose_services_serve_a_question(tiny_gguf, tiny_whisper_path, tmp_path):
    services = _services()
    llm, tutor = services["llm"], services["tutor"]
    port = free_port()
    llama_args = _mapped(
        llm["command"],
        {"/models/model.gguf": str(tiny_gguf), "0.0.0.0": "127.0.0.1", "8080": str(port)},
    )
    with servers.serve(
        [str(servers.llama_server_binary()), *llama_args], tmp_path / "llm.log", port
    ) as server:
        env = {k: str(v) for k, v in tutor["environment"].items()}
        env |= {
            "TUTOR_LLM_URL": env["TUTOR_LLM_URL"].replace("llm:8080", f"127.0.0.1:{port}"),
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "TUTOR_WHISPER": str(tiny_whisper_path),
        }  # base.en: offline here
        assert tutor["command"][:2] == ["python", "space_app.py"]
        with running_app(*tutor["command"][2:], env=env, log=tmp_path / "app.log") as app:
            answer = Client(app.url, verbose=False).predict(
                "What is 2 + 2?", "hint", [], api_name="/ask"
            )
        assert answer and "launch_slot_" in server.log_text()  # llama-server answered it
