"""Voice tutor: record a question, pick a tutor mode, read the answer as it streams in.

    python space_app.py [--model GGUF_PATH_or_OWNER/REPO/FILE.gguf] [--whisper base.en] ...
    python space_app.py --llm-url http://llm:8080/v1 [--stt-url http://stt:8000/v1] ...

Runs as a Hugging Face Space (README front matter: sdk gradio, app_file space_app.py) or
locally. Every flag has an environment variable (see --help). Without network and without
cached models the app starts on small stand-in models and says so on the page. With
`--llm-url` / `--stt-url` the models run on OpenAI-compatible servers instead (README "Scaling
out"), and the local ones are not loaded.

API (gradio_client): `/transcribe` (recording, language → text) and
`/ask` (question, mode, history → the answer, streamed).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import gradio as gr

from tutor.audio import AudioLimits
from tutor.errors import TranscriberLoadError, TutorError
from tutor.fairness import BoundedLine, InFlightLimits
from tutor.llama_runtime import KV_TYPES
from tutor.llm import (DEFAULT_KV_TOKENS, DEFAULT_KV_TYPE, DEFAULT_MAX_WAITING,
                       DEFAULT_PARALLEL, InLine, ModelLoadError,
                       TutorLLM, resolve_model)
from tutor.modes import PROMPTS_DIR, load_modes
from tutor.remote import DEFAULT_TIMEOUT_S, ServerOptions, ServerUnavailable
from tutor.service import LanguageModel, SpeechToText, Tutor
from tutor.threads import DedicatedThread

log = logging.getLogger("voice-tutor")

DEFAULT_MODEL = "bartowski/Llama-3.2-1B-Instruct-GGUF/Llama-3.2-1B-Instruct-Q4_K_M.gguf"
DEFAULT_WHISPER = "base.en"
MAX_PARALLEL = 64
MAX_QUEUE_SIZE = 256  # each waiting question holds a Gradio worker thread
OTHER_WORKER_THREADS = 8  # Gradio worker threads beyond the answers: transcriptions, page events
JOIN_BURST = 256  # requests arriving at the same instant that Gradio holds before its handlers
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
SOMETHING_WENT_WRONG = "Something went wrong on our side. Please try again."
EXAMPLES = [
    "How do I solve 3x + 5 = 20?",
    "Why does ice float on water?",
    "What is the derivative of x squared times sine of x?",
    "A patient has a fever, a stiff neck and a headache. What should I consider?",
]
LATEX = [{"left": "$$", "right": "$$", "display": True},
         {"left": "$", "right": "$", "display": False},
         {"left": "\\(", "right": "\\)", "display": False},
         {"left": "\\[", "right": "\\]", "display": True}]
LANGUAGES = [("English", "en"), ("Detect automatically", "auto"), ("French", "fr"),
             ("German", "de"), ("Spanish", "es"), ("Italian", "it"), ("Portuguese", "pt"),
             ("Dutch", "nl")]


def _setting(help: str, env: str, default, type=str):
    return field(default=default, metadata={"help": help, "env": env, "type": type})


def _secret(help: str, env: str):
    # "%(default).0s" prints nothing, and tells argparse's formatter not to append the default:
    # --help must not show a key taken from the environment.
    return _setting(help + "%(default).0s", env, "")


@dataclass
class Settings:
    """Everything configurable, each with a flag and an environment variable."""

    model: str = _setting("GGUF path, or OWNER/REPO/FILE.gguf on the Hugging Face Hub",
                          "TUTOR_MODEL", DEFAULT_MODEL)
    whisper: str = _setting("Whisper model name (base.en, small, ...) or checkpoint path",
                            "TUTOR_WHISPER", DEFAULT_WHISPER)
    whisper_precision: str = _setting("Whisper weights: int8 (fast on CPU) or fp32",
                                      "TUTOR_WHISPER_PRECISION", "int8")
    language: str = _setting("spoken language code, or 'auto'", "TUTOR_LANGUAGE", "en")
    threads: int = _setting("CPU threads for llama.cpp and Whisper (0: all cores)",
                            "TUTOR_THREADS", 0, int)
    n_ctx: int = _setting("context window of the language model, in tokens", "TUTOR_N_CTX",
                          4096, int)
    parallel: int = _setting("answers generated at once (continuous batching); more wait in "
                             "the queue", "TUTOR_PARALLEL", DEFAULT_PARALLEL, int)
    kv_tokens: int = _setting("KV cache shared by all conversations, in tokens",
                              "TUTOR_KV_TOKENS", DEFAULT_KV_TOKENS, int)
    kv_type: str = _setting("KV cache cells: q8_0, f16 (twice the memory) or f32 (exact, "
                            "four times)", "TUTOR_KV_TYPE", DEFAULT_KV_TYPE)
    cache_mb: int = _setting("memory for saved conversation KV caches, in MB", "TUTOR_CACHE_MB",
                             128, int)
    prompts: str = _setting("folder of tutor mode files", "TUTOR_PROMPTS", str(PROMPTS_DIR))
    mode: str = _setting("mode selected when the page opens", "TUTOR_MODE", "hint")
    max_audio_seconds: float = _setting("longest recording accepted, in seconds",
                                        "TUTOR_MAX_AUDIO_SECONDS", 120.0, float)
    max_upload_mb: float = _setting("largest upload accepted, in MB (refused while it arrives); "
                                    "two minutes of 48 kHz stereo WAV are 23 MB",
                                    "TUTOR_MAX_UPLOAD_MB", 25.0, float)
    upload_max_age_minutes: float = _setting("uploads and recordings are deleted from Gradio's "
                                             "cache after this many minutes",
                                             "TUTOR_UPLOAD_MAX_AGE_MINUTES", 30.0, float)
    max_per_session: int = _setting("questions one session (a page, a gradio_client) may have in "
                                    "flight at once", "TUTOR_MAX_PER_SESSION", 1, int)
    max_per_address: int = _setting("questions one network address may have in flight at once "
                                    "(0: no limit; a whole class may share a school's address)",
                                    "TUTOR_MAX_PER_ADDRESS", 0, int)
    queue_size: int = _setting("questions that may wait for an answer slot (more are told the "
                               "tutor is busy), and recordings that may wait for Whisper",
                               "TUTOR_QUEUE_SIZE", DEFAULT_MAX_WAITING, int)
    update_interval: float = _setting("seconds between streamed answer updates (fewer updates "
                                      "leave more CPU to the model)", "TUTOR_UPDATE_INTERVAL",
                                      0.08, float)
    llm_url: str = _setting("OpenAI-compatible server of the language model, e.g. "
                            "http://localhost:8080/v1 (llama-server, vLLM, ...); empty: run "
                            "--model in this process", "TUTOR_LLM_URL", "")
    llm_model: str = _setting("model name to ask the --llm-url server for (empty: the first it "
                              "lists)", "TUTOR_LLM_MODEL", "")
    llm_api_key: str = _secret("API key of the --llm-url server", "TUTOR_LLM_API_KEY")
    tokenizer: str = _setting("tokenizer.json path or Hub id, to count tokens when the "
                              "--llm-url server has no tokenizer endpoint", "TUTOR_TOKENIZER", "")
    stt_url: str = _setting("OpenAI-compatible server of the speech model (its "
                            "/v1/audio/transcriptions); empty: run --whisper in this process",
                            "TUTOR_STT_URL", "")
    stt_model: str = _setting("model name to ask the --stt-url server for (empty: the first it "
                              "lists, else whisper-1)", "TUTOR_STT_MODEL", "")
    stt_api_key: str = _secret("API key of the --stt-url server", "TUTOR_STT_API_KEY")
    remote_timeout: float = _setting("seconds to wait for a model server's next bytes before "
                                     "telling the student", "TUTOR_REMOTE_TIMEOUT",
                                     DEFAULT_TIMEOUT_S, float)
    host: str = _setting("address to listen on (0.0.0.0 on a Space)", "GRADIO_SERVER_NAME",
                         "127.0.0.1")
    port: int = _setting("port to listen on", "GRADIO_SERVER_PORT", 7860, int)

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> Settings:
        parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        for f in fields(cls):
            meta = f.metadata
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=meta["type"],
                                default=meta["type"](os.environ.get(meta["env"], f.default)),
                                help=f"{meta['help']} [env {meta['env']}]")
        return cls(**vars(parser.parse_args(argv)))


@dataclass
class LoadedModels:
    tutor: Tutor
    notice: str | None  # shown on the page when stand-ins replace the real models


def load(settings: Settings) -> LoadedModels:
    """Load the models; fall back to stand-ins only for defaults that cannot be had."""
    modes = load_modes(Path(settings.prompts))
    if settings.mode not in modes:
        raise TutorError(f"--mode {settings.mode!r} is not one of: {', '.join(modes)}")
    if not 1 <= settings.parallel <= MAX_PARALLEL:
        raise TutorError(f"--parallel must be between 1 and {MAX_PARALLEL}")
    if not 0 <= settings.queue_size <= MAX_QUEUE_SIZE:
        raise TutorError(f"--queue-size must be between 0 and {MAX_QUEUE_SIZE}")
    if settings.max_per_session < 1 or settings.max_per_address < 0:
        raise TutorError("--max-per-session must be at least 1, --max-per-address at least 0")
    if settings.max_upload_mb <= 0 or settings.upload_max_age_minutes <= 0:
        raise TutorError("--max-upload-mb and --upload-max-age-minutes must be positive")
    if settings.kv_type not in KV_TYPES:
        raise TutorError(f"--kv-type must be one of: {', '.join(KV_TYPES)}")
    if settings.kv_tokens < settings.n_ctx:
        raise TutorError(f"--kv-tokens ({settings.kv_tokens}) must be at least --n-ctx "
                         f"({settings.n_ctx}): one conversation must fit")
    missing: list[str] = []  # real models replaced by stand-ins
    # One thread for every native call, loading included: one OpenMP team in the process, as
    # many threads as cores (a torch call from any other thread adds a team; tutor.threads).
    native = DedicatedThread("native")
    threads = settings.threads or os.cpu_count() or 1
    # Whisper first: its fp32 → int8 conversion briefly needs twice its size, which is
    # returned before llama.cpp takes its share (see return_freed_memory_to_the_system).
    transcriber = (_remote_transcriber(settings) if settings.stt_url
                   else _local_transcriber(settings, native, threads, missing))
    llm = (_remote_llm(settings) if settings.llm_url
           else _local_llm(settings, native, threads, missing))
    tutor = Tutor(llm, transcriber, modes, AudioLimits(max_seconds=settings.max_audio_seconds))
    notice = None
    if missing:
        notice = ("⚠️ **Stand-in models: answers are not meaningful.** The real "
                  + " and ".join(missing) + " could not be loaded, so small local stand-ins "
                  "are running. To use real models, run online once (they are cached), or pass "
                  "`--model PATH.gguf --whisper base.en` (or set `TUTOR_MODEL`, `TUTOR_WHISPER`).")
    return LoadedModels(tutor, notice)


def _with_standin(load_fn, spec: str, default: str, standin: str, what: str, missing: list[str]):
    """LOAD_FN(SPEC); if SPEC is the default and cannot be had, LOAD_FN(the stand-in), noting
    WHAT in MISSING."""
    try:
        return load_fn(spec)
    except (ModelLoadError, TranscriberLoadError) as e:
        if spec != default:
            raise
        import synth.standin

        missing.append(f"{what} ({e})")
        try:
            built = getattr(synth.standin, standin)()
        except OSError as build_error:  # no room, read-only cache, ...
            raise ModelLoadError(
                f"{e}; and the stand-in {what} could not be built in "
                f"{synth.standin.CACHE_DIR} ({build_error.strerror or build_error}): "
                "set TUTOR_CACHE to a writable folder") from None
        return load_fn(str(built))


def _local_transcriber(settings: Settings, native: DedicatedThread, threads: int,
                       missing: list[str]) -> SpeechToText:
    # Imported here: torch and Whisper cost ~300 MB that an app with --stt-url does not need.
    from tutor.transcribe import Transcriber, load_whisper

    whisper_model = native.run(_with_standin, load_whisper, settings.whisper, DEFAULT_WHISPER,
                               "standin_whisper", "speech model", missing)
    transcriber = Transcriber(whisper_model, settings.language, threads,
                              settings.whisper_precision, thread=native)
    del whisper_model
    release_freed_memory()
    return transcriber


def _local_llm(settings: Settings, native: DedicatedThread, threads: int,
               missing: list[str]) -> LanguageModel:
    model_path = native.run(_with_standin, resolve_model, settings.model, DEFAULT_MODEL,
                            "standin_llm", "language model", missing)
    return TutorLLM(model_path, n_ctx=settings.n_ctx, n_threads=threads,
                    cache_bytes=settings.cache_mb * 2**20, parallel=settings.parallel,
                    kv_tokens=settings.kv_tokens, kv_type=settings.kv_type,
                    max_waiting=settings.queue_size, thread=native)


def _remote_llm(settings: Settings) -> LanguageModel:
    from tutor.remote_llm import RemoteLLM

    return RemoteLLM(ServerOptions(settings.llm_url, settings.llm_api_key or None,
                                   settings.llm_model or None, settings.remote_timeout),
                     n_ctx=settings.n_ctx, tokenizer=settings.tokenizer or None,
                     max_in_flight=settings.parallel + settings.queue_size)


def _remote_transcriber(settings: Settings) -> SpeechToText:
    from tutor.remote_stt import RemoteTranscriber

    return RemoteTranscriber(ServerOptions(settings.stt_url, settings.stt_api_key or None,
                                           settings.stt_model or None, settings.remote_timeout),
                             settings.language)


def return_freed_memory_to_the_system() -> None:
    """Make glibc give large freed blocks back to the OS at once (peak RSS is what a Space pays).

    By default glibc raises its mmap threshold after big frees, and model-sized temporary
    buffers then stay in the heap after they are freed.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)


def release_freed_memory() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def coalesce(updates: Iterator[str], interval_s: float) -> Iterator[str]:
    """Pass on the first update at once, then at most one per INTERVAL_S, and always the last.

    Each streamed update costs Python time on the 2 shared cores (diffing, JSON, the event loop)
    that llama.cpp would otherwise use; a few updates a second read just as smoothly.
    """
    last, pending = float("-inf"), None
    for update in updates:
        pending = update
        now = time.monotonic()
        if now - last >= interval_s:
            last, pending = now, None
            yield update
    if pending is not None:
        yield pending


def waiting_message(place: int) -> str:
    """What a student reads while their question waits for a free answer slot."""
    if place == 1:
        return "⏳ The tutor is answering other students. You are next in line."
    return f"⏳ The tutor is answering other students. You are number {place} in line."


def _user_error(e: Exception) -> gr.Error:
    """One clear message for the page; details of unexpected failures go to the server log."""
    if isinstance(e, TutorError):
        return gr.Error(str(e), print_exception=False)
    log.exception("request failed")
    return gr.Error(SOMETHING_WENT_WRONG, print_exception=False)


def client_of(request: gr.Request | None) -> tuple[str, str]:
    """(session, network address) of a request; behind a proxy (a Space), the address the
    proxy reports. A forged X-Forwarded-For only moves a client into another address's share."""
    if request is None:
        return "", ""
    forwarded = request.headers.get("x-forwarded-for", "")
    address = forwarded.split(",")[0].strip() or (request.client.host if request.client else "")
    return request.session_hash or "", address


def build_app(models: LoadedModels, settings: Settings) -> gr.Blocks:
    tutor = models.tutor
    limits = InFlightLimits(settings.max_per_session, settings.max_per_address or None)
    transcriptions = BoundedLine(1 + settings.queue_size)

    def transcribe(recording: str | None, language: str = "en") -> str:
        """Text of a recorded or uploaded question (WAV, FLAC or OGG)."""
        try:
            with transcriptions.hold():  # Whisper runs one at a time; the line is bounded
                return tutor.transcribe(recording, language)
        except Exception as e:
            raise _user_error(e) from None

    def respond(question: str, mode: str, history: list[dict], request: gr.Request):
        try:
            with limits.hold(*client_of(request)):
                stream = tutor.ask(question, mode, history, places=True)
                turn = list(history or []) + [{"role": "user", "content": question.strip()},
                                              {"role": "assistant", "content": ""}]
                yield turn, ""
                for update in coalesce(stream, settings.update_interval):
                    answer = waiting_message(update.place) if isinstance(update, InLine) else update
                    turn[-1] = {"role": "assistant", "content": answer}
                    yield turn, ""
        except Exception as e:
            raise _user_error(e) from None

    def ask(question: str, mode: str = settings.mode, history: list[dict] | None = None,
            request: gr.Request = None) -> Iterator[str]:
        """Stream the tutor's answer to QUESTION in MODE after HISTORY ({role, content}
        messages)."""
        try:
            with limits.hold(*client_of(request)):
                yield from coalesce(tutor.ask(question, mode, history), settings.update_interval)
        except Exception as e:
            raise _user_error(e) from None

    # Gradio keeps every upload in its cache folder; sweep it so that days of recordings do not
    # fill the disk (at most max-age × upload rate stays on disk; measured by the soak).
    max_age_s = int(settings.upload_max_age_minutes * 60)
    sweep_every_s = max(60, max_age_s // 4)
    with gr.Blocks(title="Voice tutor", delete_cache=(sweep_every_s, max_age_s)) as app:
        gr.Markdown("# Voice tutor\nRecord or type a question, pick how the tutor should "
                    "help, and read the answer as it is written.")
        if models.notice:
            gr.Markdown(models.notice, elem_id="standin-notice")
        with gr.Row():
            with gr.Column(scale=2):
                recording = gr.Audio(sources=["microphone", "upload"], type="filepath",
                                     label="Ask by voice", elem_id="recording")
                language = gr.Dropdown(LANGUAGES, value=settings.language, label="Spoken language",
                                       elem_id="language")
                question = gr.Textbox(label="Your question (edit it, or just type)", lines=3,
                                      elem_id="question",
                                      placeholder="e.g. How do I solve 3x + 5 = 20?")
                mode = gr.Radio([(m.title, m.name) for m in tutor.modes.values()],
                                value=settings.mode, label="Tutor mode", elem_id="mode",
                                info=" · ".join(f"{m.title}: {m.description}"
                                                for m in tutor.modes.values()))
                with gr.Row():
                    send = gr.Button("Ask", variant="primary", elem_id="send")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                    new = gr.Button("New conversation", elem_id="new")
                gr.Examples(EXAMPLES, inputs=[question], label="Try one of these")
            with gr.Column(scale=3):
                chat = gr.Chatbot(label="Tutor", elem_id="chat", height=560, latex_delimiters=LATEX,
                                  buttons=["copy"], feedback_options=None)
        recording.stop_recording(transcribe, [recording, language], [question],
                                 concurrency_limit=None,
                                 api_name="transcribe")
        recording.upload(transcribe, [recording, language], [question], concurrency_limit=None,
                         api_visibility="private")
        answering = [
            send.click(respond, [question, mode, chat], [chat, question],
                       concurrency_limit=None, api_visibility="private"),
            question.submit(respond, [question, mode, chat], [chat, question],
                            concurrency_limit=None, api_visibility="private"),
        ]
        stop.click(None, cancels=answering)
        new.click(lambda: ([], ""), outputs=[chat, question], cancels=answering,
                  api_visibility="private")
        gr.api(ask, api_name="ask", concurrency_limit=None)

        def health() -> dict:
            """The engine's load and the process's resources (for monitoring and the soak)."""
            activity = tutor.llm.activity()
            return {"answering": activity.answering, "waiting": activity.waiting,
                    "parallel": settings.parallel, "queue_size": settings.queue_size,
                    "saved_conversations": activity.saved_conversations,
                    "saved_mb": round(activity.saved_bytes / 2**20, 1),
                    "answers_ended": activity.ended, "threads": threading.active_count()}

        gr.api(health, api_name="health", concurrency_limit=None)
    # Every event goes straight to its handler: the engine answers N at once and keeps a
    # bounded line of questions (the page shows each student their place); Whisper keeps one
    # of recordings; beyond them a request ends at once with "busy", a message every client
    # receives. Gradio's own "queue full" is an HTTP 503 at join time, which gradio_client 2.7
    # never reports to a caller iterating the job (it waits forever), so Gradio's queue is
    # only a backstop for requests arriving in the same instant.
    app.queue(max_size=JOIN_BURST, default_concurrency_limit=None)
    return app


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = Settings.from_args(argv)
    return_freed_memory_to_the_system()
    try:
        models = load(settings)
    except (TutorError, ModelLoadError, TranscriberLoadError, ServerUnavailable) as e:
        raise SystemExit(f"error: {e}") from None
    if models.notice:
        log.warning("running on stand-in models: answers are not meaningful")
    app = build_app(models, settings)
    try:
        app.launch(
            server_name=settings.host, server_port=settings.port,
            # Our handlers raise only gr.Error (a message for the user); this lets a caller
            # also learn why Gradio itself refused a request, e.g. a file never uploaded.
            show_error=True,
            max_file_size=int(settings.max_upload_mb * 2**20),
            # A worker thread per answer in flight or waiting, per recording waiting, and some more.
            max_threads=settings.parallel + 2 * settings.queue_size + OTHER_WORKER_THREADS)
    except OSError as e:  # the port is taken, or the address is not this machine's
        raise SystemExit(f"error: cannot serve on {settings.host}:{settings.port}: "
                         f"{str(e).splitlines()[0]}") from None


if __name__ == "__main__":
    main()
