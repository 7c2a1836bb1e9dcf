"""The packages form layers: each imports only those below it, and serving pulls in no training.

    tutor (runtime) ← export (HF → GGUF) ← synth ← train ← bench, tests; space_app.py uses tutor.

Each package's every module is imported in a fresh interpreter, which then says which of the
project's other packages (and which heavy stacks) got imported along.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.harness import ROOT

pytestmark = pytest.mark.slow  # starts apps, servers, a browser or training

PACKAGES = ["tutor", "export", "synth", "train", "bench"]
BELOW = {
    "tutor": set(),
    "export": {"tutor"},
    "synth": {"tutor", "export"},
    "train": {"tutor", "export", "synth"},
    "bench": {"tutor", "export", "synth", "train"},
}
TRAINING_STACKS = {"trl", "peft", "datasets", "accelerate"}

PROBE = """
import importlib, json, pkgutil, sys
name = sys.argv[1]
if name == "space_app":  # the entry file and the app it serves
    importlib.import_module(name)
    importlib.import_module("tutor.app")
else:
    package = importlib.import_module(name)
    for module in pkgutil.iter_modules(package.__path__):
        if module.name != "__main__":
            importlib.import_module(f"{name}.{module.name}")
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def _imported_by(name: str) -> set[str]:
    """Top-level modules in sys.modules after importing NAME (all of its modules)."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, name], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_the_layers_below_it(package):
    imported = _imported_by(package) & set(PACKAGES)
    assert imported - {package} <= BELOW[package], imported - {package} - BELOW[package]


def test_the_app_imports_the_runtime_and_no_training_stack():
    imported = _imported_by("space_app")
    assert not imported & (set(PACKAGES) - {"tutor"}), imported & set(PACKAGES)
    assert not imported & TRAINING_STACKS, imported & TRAINING_STACKS


# What `--help` must not wait for: each of these takes from a quarter of a second (openai, scipy)
# to several seconds (torch, transformers) to import on these machines.
HEAVY_STACKS = {
    "torch",
    "transformers",
    "tokenizers",
    "whisper",
    "llama_cpp",
    "gradio",
    "gradio_client",
    "matplotlib",
    "scipy",
    "onnxruntime",
    "silero_vad",
    "openai",
    "selenium",
    "datasketch",
    "av",
    "safetensors",
} | TRAINING_STACKS

HELP_PROBE = """
import contextlib, io, json, runpy, sys
name = sys.argv[1]
sys.argv = [name, "--help"]
out, code = io.StringIO(), None
with contextlib.redirect_stdout(out):
    try:
        runpy.run_module(name, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
print(json.dumps({"code": code, "help": out.getvalue(),
                  "imported": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def _entry_points() -> list[str]:
    """Every `python -m …` the project has: packages with a __main__, modules with a main guard."""
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            if path.name == "__main__.py":
                names.append(package)
            elif 'if __name__ == "__main__":' in path.read_text():
                names.append(f"{package}.{path.stem}")
    return names + ["space_app"]


@pytest.mark.parametrize("entry_point", _entry_points())
def test_help_answers_without_importing_a_heavy_stack(entry_point):
    result = subprocess.run(
        [sys.executable, "-c", HELP_PROBE, entry_point],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["code"] in (0, None) and "usage:" in probe["help"], result.stderr[-2000:]
    heavy = set(probe["imported"]) & HEAVY_STACKS
    assert not heavy, f"python -m {entry_point} --help imports {sorted(heavy)}"
