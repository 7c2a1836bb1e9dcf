"""The README's two commands set a checkout up anywhere: everything goes into the project's own
virtual environment (a stock Debian Python refuses pip installs, PEP 668), and a second
`make app` starts at once.

Make's own dry run (`make -n`) says what it would run, in a copy of the project's set-up files.
`.ci/run` runs the real thing with Debian's externally managed Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bench.harness import ROOT

SETUP_FILES = [
    "Makefile",
    "pyproject.toml",
    "requirements.txt",
    "requirements-train.txt",
    "requirements-dev.txt",
]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _checkout(folder: Path) -> Path:
    for name in SETUP_FILES:
        shutil.copy2(ROOT / name, folder / name)
    return folder


def _dry_run(folder: Path, *targets: str) -> list[str]:
    """The commands `make TARGETS` would run in FOLDER, one per line."""
    # A make of its own, not a sub-make of `make test` (which would print its directories).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", *targets, "PYTHON=/usr/bin/python3"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in result.stdout.splitlines() if line.strip()]


def test_a_fresh_checkout_installs_only_into_its_own_virtual_environment(tmp_path):
    commands = _dry_run(_checkout(tmp_path), "app")
    assert commands[0] == "/usr/bin/python3 -m venv .venv"
    installs = [c for c in commands if " pip " in c]
    assert installs == [".venv/bin/python -m pip install -e ."]  # the runtime only
    assert commands[-1].startswith(".venv/bin/python space_app.py")


def test_the_tests_add_the_training_stack_and_test_tools_in_the_same_environment(tmp_path):
    installs = [c for c in _dry_run(_checkout(tmp_path), "test") if " pip " in c]
    assert installs == [
        ".venv/bin/python -m pip install -e .",
        '.venv/bin/python -m pip install -e ".[train,dev]"',
    ]


def test_a_second_make_app_starts_without_reinstalling(tmp_path):
    folder = _checkout(tmp_path)
    python = folder / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    later = time.time() + 10  # installed after the set-up files were last changed
    (folder / ".venv" / ".runtime-installed").touch()
    os.utime(folder / ".venv" / ".runtime-installed", (later, later))
    assert _dry_run(folder, "app") == [".venv/bin/python space_app.py "]
    os.utime(folder / "requirements.txt", (later + 10, later + 10))  # the runtime changed
    assert " pip install" in _dry_run(folder, "app")[0]
