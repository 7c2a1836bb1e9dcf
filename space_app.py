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

from pathlib import Path

from tutor.settings import Settings


def build_standin(what: str, why: Exception) -> Path:
    """A small seeded stand-in for WHAT ("language model" or "speech model"), built once into
    the stand-in cache, for a first start without network and without cached models."""
    import synth.standin
    from tutor.llm import ModelLoadError

    try:
        return (
            synth.standin.standin_llm()
            if what == "language model"
            else synth.standin.standin_whisper()
        )
    except OSError as e:  # no room, read-only cache, ...
        raise ModelLoadError(
            f"{why}; and the stand-in {what} could not be built in "
            f"{synth.standin.CACHE_DIR} ({e.strerror or e}): set TUTOR_CACHE "
            "to a writable folder"
        ) from None


def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_args(argv)  # --help answers here, before Gradio and the models load
    from tutor.app import serve

    serve(settings, build_standin)


if __name__ == "__main__":
    main()
