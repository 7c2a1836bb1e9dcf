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
    "native/amx-tilecfg-fix.h",
]
# llama-cpp-python, built from source before the rest (docs/amx.md)
LLAMA_CPP_PIN = next(
    line.strip()
    for line in (ROOT / "requirements.txt").read_text().splitlines()
    if line.startswith("llama-cpp-python==")
)
LLAMA_CPP_STAMP = ".built-" + LLAMA_CPP_PIN.replace("==", "-")
LLAMA_CPP_BUILD = (
    f'.venv/bin/python -m pip install --no-cache-dir --force-reinstall --no-deps "{LLAMA_CPP_PIN}"'
)

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _checkout(folder: Path) -> Path:
    for name in SETUP_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
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
    installs = [c.strip() for c in commands if " pip " in c]
    assert installs == [LLAMA_CPP_BUILD, ".venv/bin/python -m pip install -e ."]  # the runtime
    assert commands[-1].startswith(".venv/bin/python space_app.py")


def test_the_tests_add_the_training_stack_and_test_tools_in_the_same_environment(tmp_path):
    installs = [c.strip() for c in _dry_run(_checkout(tmp_path), "test") if " pip " in c]
    assert installs == [
        LLAMA_CPP_BUILD,
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
    for stamp in (LLAMA_CPP_STAMP, ".runtime-installed"):
        (folder / ".venv" / stamp).touch()
        os.utime(folder / ".venv" / stamp, (later, later))
    assert _dry_run(folder, "app") == [".venv/bin/python space_app.py "]
    os.utime(folder / "requirements.txt", (later + 10, later + 10))  # the runtime changed
    assert " pip install" in _dry_run(folder, "app")[0]


def test_llama_cpp_is_built_with_the_amx_fix_and_never_from_a_cached_wheel(tmp_path):
    """GCC 12's AMX intrinsic fixed by a force-included header, for C and C++ (docs/amx.md);
    a wheel pip cached from an earlier build without it is not reused."""
    folder = _checkout(tmp_path)
    commands = [c.strip() for c in _dry_run(folder, "app")]
    fix = folder / "native" / "amx-tilecfg-fix.h"
    flags = f'CMAKE_ARGS="-DCMAKE_C_FLAGS=-include{fix} -DCMAKE_CXX_FLAGS=-include{fix}" \\'
    assert commands[commands.index(LLAMA_CPP_BUILD) - 1] == flags
    # Another requirement changing reinstalls the runtime, not llama.cpp (an 8-minute build).
    later = time.time() + 10
    (folder / ".venv").mkdir()
    (folder / ".venv" / "bin").mkdir()
    (folder / ".venv" / "bin" / "python").write_text("#!/bin/sh\n")
    stamp = folder / ".venv" / LLAMA_CPP_STAMP
    stamp.touch()
    os.utime(stamp, (later, later))
    os.utime(folder / "requirements.txt", (later + 10, later + 10))
    assert LLAMA_CPP_BUILD not in [c.strip() for c in _dry_run(folder, "app")]
