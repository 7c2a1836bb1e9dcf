"""Real servers on loopback for the remote-backend tests: llama-cpp-python's OpenAI-compatible
server, llama.cpp's `llama-server`, a Whisper transcription server, nginx as a rate limiter."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.harness import ROOT, free_port, stop
from bench import llama_server as llama_server_build

READY_TIMEOUT_S = 600.0  # only a hang reaches it: a busy machine may take minutes to start one
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@dataclass
class Server:
    """A server process on loopback; URL is its root (the OpenAI API is under /v1)."""

    url: str
    port: int
    proc: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def freeze(self) -> None:
        """Stop the process without closing its sockets: connections wait, nothing answers."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


@contextmanager
def serve(
    command: list[str],
    log: Path,
    port: int,
    ready_path: str = "/v1/models",
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """Run COMMAND; yield once GET READY_PATH gets any answer but 503 (a 401 means up, too)."""
    url = f"http://127.0.0.1:{port}"
    with open(log, "a") as out:
        # Unbuffered: the tests read what a server prints (llama_cpp.server prints, to stdout,
        # that a client went away) while it runs, not when a buffer happens to fill.
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{command[0]} exited with {proc.returncode}: "
                    + log.read_text(errors="replace")[-2000:]
                )
            try:
                if httpx.get(url + ready_path, timeout=5).status_code != 503:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{command[0]} did not start; see {log}")
            time.sleep(0.2)
        yield Server(url, port, proc, log)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # a frozen server cannot exit
            stop(proc)


def llama_cpp_server(model: Path, log: Path, *args: str, port: int | None = None):
    """`python -m llama_cpp.server` (llama-cpp-python's `server` extra) on MODEL; requests
    take turns (by default a new request would end the answer streaming)."""
    port = port or free_port()
    return serve(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--n_threads",
            "1",
            "--interrupt_requests",
            "false",
            *args,
        ],
        log,
        port,
    )


def llama_server_binary() -> Path:
    """llama.cpp's llama-server as `python -m bench.llama_server` builds it, or a skip."""
    path = llama_server_build.binary_path()
    if not path.is_file():
        pytest.skip(
            f"llama-server is not built ({path}); build it once with "
            "`python -m bench.llama_server` (~12 min)"
        )
    return path


def llama_server(model: Path, log: Path, *args: str, port: int | None = None):
    """llama.cpp's own `llama-server` on MODEL, two slots of 1024 tokens."""
    port = port or free_port()
    return serve(
        llama_server_build.loopback_command(
            llama_server_binary(), model, port, "-c", "2048", "--parallel", "2", "-t", "1", *args
        ),
        log,
        port,
    )


def whisper_server(checkpoint: Path, log: Path):
    """tests/whisper_server.py: OpenAI's transcription API around the project's Whisper."""
    port = free_port()
    return serve(
        [
            sys.executable,
            str(ROOT / "tests" / "whisper_server.py"),
            str(checkpoint),
            "--port",
            str(port),
        ],
        log,
        port,
    )


NGINX_CONFIG = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    limit_req_zone $binary_remote_addr zone=answers:1m rate={rate};
    server {{
        listen 127.0.0.1:{port};
        location /v1/chat/completions {{
            limit_req zone=answers nodelay;
            limit_req_status {status};
            proxy_pass http://127.0.0.1:{upstream};
            proxy_buffering off;
        }}
        location /v1/ {{ proxy_pass http://127.0.0.1:{upstream}; }}
        location / {{ {other_paths} }}
    }}
}}
"""
PASS_ON = "proxy_pass http://127.0.0.1:{upstream};"


def rate_limiter(
    upstream: Server,
    folder: Path,
    rate: str = "1r/m",
    status: int = 429,
    openai_api_only: bool = False,
):
    """nginx in front of UPSTREAM, refusing answers beyond RATE with STATUS (429 or 503), as a
    load balancer in front of inference servers at capacity does. OPENAI_API_ONLY: paths outside
    /v1/ (a server's own tokenizer endpoints) answer 404, as many API gateways do."""
    if not Path(NGINX).is_file():
        pytest.skip("nginx is not installed (make system-deps installs nginx-light)")
    port = free_port()
    config = folder / "nginx.conf"
    config.write_text(
        NGINX_CONFIG.format(
            dir=folder,
            port=port,
            upstream=upstream.port,
            rate=rate,
            status=status,
            other_paths="return 404;"
            if openai_api_only
            else PASS_ON.format(upstream=upstream.port),
        )
    )
    return serve(
        [NGINX, "-c", str(config), "-p", str(folder), "-e", "stderr"], folder / "nginx.out", port
    )
