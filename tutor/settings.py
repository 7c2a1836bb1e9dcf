"""Every setting of the app, each with a flag and an environment variable.

Light on purpose: `python space_app.py --help` answers from here before the heavy stacks load.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields

from tutor.defaults import (
    DEFAULT_KV_TOKENS,
    DEFAULT_KV_TYPE,
    DEFAULT_MAX_WAITING,
    DEFAULT_MODEL,
    DEFAULT_PARALLEL,
    DEFAULT_TIMEOUT_S,
    DEFAULT_WHISPER,
    PROMPTS_DIR,
)

DESCRIPTION = "Voice tutor: record a question, pick a tutor mode, read the answer as it streams in."


def yes_no(text: str | bool) -> bool:
    """A switch's value: yes/no, on/off, true/false or 1/0."""
    if isinstance(text, bool):
        return text
    value = {
        "yes": True,
        "on": True,
        "true": True,
        "1": True,
        "no": False,
        "off": False,
        "false": False,
        "0": False,
    }.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected yes or no, not {text!r}")
    return value


def _setting(help: str, env: str, default, type=str):
    return field(default=default, metadata={"help": help, "env": env, "type": type})


def _secret(help: str, env: str):
    # "%(default).0s" prints nothing, and tells argparse's formatter not to append the default:
    # --help must not show a key taken from the environment.
    return _setting(help + "%(default).0s", env, "")


@dataclass
class Settings:
    """Everything configurable, each with a flag and an environment variable."""

    model: str = _setting(
        "GGUF path, or OWNER/REPO/FILE.gguf on the Hugging Face Hub", "TUTOR_MODEL", DEFAULT_MODEL
    )
    whisper: str = _setting(
        "Whisper model name (base.en, small, ...) or checkpoint path",
        "TUTOR_WHISPER",
        DEFAULT_WHISPER,
    )
    whisper_precision: str = _setting(
        "Whisper weights: int8 (fast on CPU) or fp32", "TUTOR_WHISPER_PRECISION", "int8"
    )
    whisper_window: str = _setting(
        "Whisper's encoder window: fit (the audio and 2.56 s of silence, in 5 s steps: a 5 s "
        "question transcribes ~2x faster, as accurately on the shared clips) or full (30 s, "
        "as Whisper was trained)",
        "TUTOR_WHISPER_WINDOW",
        "fit",
    )
    language: str = _setting("spoken language code, or 'auto'", "TUTOR_LANGUAGE", "en")
    end_of_speech_s: float = _setting(
        "hands-free mode: seconds of silence that end a spoken question",
        "TUTOR_END_OF_SPEECH_S",
        0.8,
        float,
    )
    max_listeners: int = _setting(
        "hands-free mode: students listening at once (each costs the server ~0.05 of a core while "
        "it listens, bench.voice); beyond them, turning hands-free on says the tutor is busy",
        "TUTOR_MAX_LISTENERS",
        16,
        int,
    )
    vad: bool = _setting(
        "refuse recordings without speech (Silero VAD) before local Whisper sees them: yes or no",
        "TUTOR_VAD",
        True,
        yes_no,
    )
    threads: int = _setting(
        "CPU threads for llama.cpp and Whisper (0: all cores)", "TUTOR_THREADS", 0, int
    )
    n_ctx: int = _setting(
        "context window of the language model, in tokens", "TUTOR_N_CTX", 4096, int
    )
    parallel: int = _setting(
        "answers generated at once (continuous batching); more wait in the queue",
        "TUTOR_PARALLEL",
        DEFAULT_PARALLEL,
        int,
    )
    kv_tokens: int = _setting(
        "KV cache shared by all conversations, in tokens", "TUTOR_KV_TOKENS", DEFAULT_KV_TOKENS, int
    )
    kv_type: str = _setting(
        "KV cache cells: q8_0, f16 (twice the memory) or f32 (exact, four times)",
        "TUTOR_KV_TYPE",
        DEFAULT_KV_TYPE,
    )
    cpu_kernels: str = _setting(
        "llama.cpp's CPU kernels: auto (AMX tiles or repacked weights, unless they crash in this "
        "llama.cpp build: checked once in a child process), extra (the same, unchecked) or plain "
        "(weights as the file stores them)",
        "TUTOR_CPU_KERNELS",
        "auto",
    )
    cache_mb: int = _setting(
        "memory for saved conversation KV caches, in MB", "TUTOR_CACHE_MB", 128, int
    )
    prompts: str = _setting("folder of tutor mode files", "TUTOR_PROMPTS", str(PROMPTS_DIR))
    mode: str = _setting("mode selected when the page opens", "TUTOR_MODE", "hint")
    max_audio_seconds: float = _setting(
        "longest recording accepted, in seconds", "TUTOR_MAX_AUDIO_SECONDS", 120.0, float
    )
    max_upload_mb: float = _setting(
        "largest upload accepted, in MB (refused while it arrives); "
        "two minutes of 48 kHz stereo WAV are 23 MB",
        "TUTOR_MAX_UPLOAD_MB",
        25.0,
        float,
    )
    upload_max_age_minutes: float = _setting(
        "uploads and recordings are deleted from Gradio's cache after this many minutes",
        "TUTOR_UPLOAD_MAX_AGE_MINUTES",
        30.0,
        float,
    )
    max_per_session: int = _setting(
        "questions one session (a page, a gradio_client) may have in flight at once",
        "TUTOR_MAX_PER_SESSION",
        1,
        int,
    )
    max_per_address: int = _setting(
        "questions one network address may have in flight at once "
        "(0: no limit; a whole class may share a school's address)",
        "TUTOR_MAX_PER_ADDRESS",
        0,
        int,
    )
    queue_size: int = _setting(
        "questions that may wait for an answer slot (more are told the "
        "tutor is busy), and recordings that may wait for Whisper",
        "TUTOR_QUEUE_SIZE",
        DEFAULT_MAX_WAITING,
        int,
    )
    update_interval: float = _setting(
        "seconds between streamed answer updates (fewer updates leave more CPU to the model)",
        "TUTOR_UPDATE_INTERVAL",
        0.08,
        float,
    )
    llm_url: str = _setting(
        "OpenAI-compatible server of the language model, e.g. "
        "http://localhost:8080/v1 (llama-server, vLLM, ...); empty: run "
        "--model in this process",
        "TUTOR_LLM_URL",
        "",
    )
    llm_model: str = _setting(
        "model name to ask the --llm-url server for (empty: the first it lists)",
        "TUTOR_LLM_MODEL",
        "",
    )
    llm_api_key: str = _secret("API key of the --llm-url server", "TUTOR_LLM_API_KEY")
    tokenizer: str = _setting(
        "tokenizer.json path or Hub id, to count tokens when the "
        "--llm-url server has no tokenizer endpoint",
        "TUTOR_TOKENIZER",
        "",
    )
    stt_url: str = _setting(
        "OpenAI-compatible server of the speech model (its "
        "/v1/audio/transcriptions); empty: run --whisper in this process",
        "TUTOR_STT_URL",
        "",
    )
    stt_model: str = _setting(
        "model name to ask the --stt-url server for (empty: the first it lists, else whisper-1)",
        "TUTOR_STT_MODEL",
        "",
    )
    stt_api_key: str = _secret("API key of the --stt-url server", "TUTOR_STT_API_KEY")
    remote_timeout: float = _setting(
        "seconds to wait for a model server's next bytes before telling the student",
        "TUTOR_REMOTE_TIMEOUT",
        DEFAULT_TIMEOUT_S,
        float,
    )
    host: str = _setting(
        "address to listen on (0.0.0.0 on a Space)", "GRADIO_SERVER_NAME", "127.0.0.1"
    )
    port: int = _setting("port to listen on", "GRADIO_SERVER_PORT", 7860, int)

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> Settings:
        parser = argparse.ArgumentParser(
            description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        for f in fields(cls):
            meta = f.metadata
            parser.add_argument(
                f"--{f.name.replace('_', '-')}",
                type=meta["type"],
                default=meta["type"](os.environ.get(meta["env"], f.default)),
                help=f"{meta['help']} [env {meta['env']}]",
            )
        return cls(**vars(parser.parse_args(argv)))
