"""Defaults shared by the engine and the app's settings, importing nothing heavy: `--help`
reads them without loading llama.cpp, torch or Gradio."""

import os
from pathlib import Path

DEFAULT_MODEL = "bartowski/Llama-3.2-1B-Instruct-GGUF/Llama-3.2-1B-Instruct-Q4_K_M.gguf"
DEFAULT_WHISPER = "base.en"
# Where models built or fetched locally are kept: stand-ins, real models from PyPI wheels, the
# AMX probe's verdict.
CACHE_DIR = Path(os.environ.get("TUTOR_CACHE", Path.home() / ".cache" / "voice-tutor"))
PROMPTS_DIR = Path(__file__).resolve().parents[1] / "prompts"
DEFAULT_PARALLEL = 8  # answers at once in the app: chosen by `python -m bench` (README "Results")
DEFAULT_KV_TOKENS = 6144  # KV cache cells shared by all conversations
# q8_0 cells: 102 MB for a 1B Llama 3 (f16: 192 MB), so that the default app fits 2 GB; saved
# conversations halve too. Measured beside f16 in one run: the same speed within noise.
DEFAULT_KV_TYPE = "q8_0"
DEFAULT_MAX_WAITING = 16  # answers that may wait for a slot; more are refused as busy
DEFAULT_TIMEOUT_S = 60.0  # longest wait for a model server's next bytes (a first token included)
