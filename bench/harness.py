"""Run space_app.py in a subprocess on a free loopback port, as a user would (tests, benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RunningApp:
    url: str
    pid: int


STOP_GRACE_S = 10.0  # a server's time to exit after SIGTERM, before SIGKILL


def stop(proc: subprocess.Popen) -> None:
    """Ask PROC to exit; kill it if it has not within STOP_GRACE_S."""
    proc.terminate()
    try:
        proc.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_flags(**options: object) -> list[str]:
    """space_app.py's flags from keyword options: n_ctx=1024 → ["--n-ctx", "1024"]."""
    return [
        part
        for name, value in options.items()
        for part in (f"--{name.replace('_', '-')}", str(value))
    ]


@contextmanager
def running_app(
    *args: str,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    timeout: float = 180.0,
    **options: object,
) -> Iterator[RunningApp]:
    """Start `python space_app.py ARGS OPTIONS` (OPTIONS as in app_flags) and yield it once it
    answers HTTP."""
    args = (*args, *app_flags(**options))
    port = free_port()
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "space_app.py", "--port", str(port), *args],
        cwd=ROOT,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the app exited with {proc.returncode}" + (f"; see {log}" if log else "")
                )
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the app did not answer at {url} in {timeout} s") from None
                time.sleep(0.3)
        yield RunningApp(url, proc.pid)
    finally:
        stop(proc)
        if log:
            out.close()
