"""Crash safety of what users keep: a writer killed mid-write leaves the old file or the new one.

Each writer runs in a subprocess that rewrites its file over and over, alternating two
versions; once a write is under way (its temporary file beside the destination exists), the
process gets SIGKILL. The destination must then hold one complete version.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gguf
import pytest

from bench.harness import ROOT

pytestmark = pytest.mark.slow  # starts apps, servers, a browser or training

HANG_GUARD_S = 300.0  # only a writer that never writes reaches it

# name -> (Python loop rewriting DEST forever, alternating versions k % 2; the file it writes)
WRITERS = {
    "GGUF export": (
        """
from export.to_gguf import export
for k in __import__('itertools').count():
    export(SRC, DEST / 'model.gguf', 'Q8_0', name=f'version {k % 2}')
""",
        "model.gguf",
    ),
    "Whisper checkpoint": (
        """
from synth.whisper import build_checkpoint
for k in __import__('itertools').count():
    build_checkpoint(DEST / 'whisper.pt', seed=k % 2)
""",
        "whisper.pt",
    ),
    "benchmark report": (
        """
from bench.report import write
for k in __import__('itertools').count():
    write({'threads': 2, 'ceiling': {'read_bandwidth_gb_s': 1.0, 'ceiling_tokens_per_s': 1.0},
           'version': k % 2, 'padding': ['x' * 100] * 20000}, DEST)
""",
        "report.json",
    ),
    "evaluation results": (
        """
from train.evaluate import write_outputs
r = {'loss': 1.0, 'perplexity': 2.7, 'answer_words': 9.0, 'time_to_first_token_s': 0.1,
     'tokens_per_s': 30.0, **{m: {'mean': 0.5, 'std': 0.1} for m in (
     'rouge1', 'rouge2', 'rougeL', 'hint_leak_rate', 'ordered_steps_rate')}}
for k in __import__('itertools').count():
    write_outputs({f'model {i}': r for i in range(20)}, {'version': k % 2, 'seeds': [0]}, DEST)
""",
        "evaluation.json",
    ),
}


def _complete(path: Path) -> bool:
    """Whether PATH is a whole file of its kind (parses to the end)."""
    if path.suffix == ".gguf":
        reader = gguf.GGUFReader(path)
        return len(reader.tensors) > 0 and reader.tensors[-1].data.size > 0
    if path.suffix == ".pt":
        import torch

        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        return {"dims", "model_state_dict"} <= set(checkpoint)
    return bool(json.loads(path.read_text()))


@pytest.mark.parametrize("writer", WRITERS)
def test_a_writer_killed_mid_write_leaves_a_whole_file(writer, tiny_llama_dir, tmp_path):
    loop, name = WRITERS[writer]
    dest = tmp_path / "out"
    dest.mkdir()
    script = (
        f"from pathlib import Path\nSRC = Path({str(tiny_llama_dir)!r})\n"
        f"DEST = Path({str(dest)!r})\n" + loop
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + HANG_GUARD_S
    try:
        # Wait for a finished version, then for the next write to be under way.
        while not (dest / name).exists() or not list(dest.glob(f".{name}.*.tmp")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the writer never got going"
            time.sleep(0.001)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _complete(dest / name)
