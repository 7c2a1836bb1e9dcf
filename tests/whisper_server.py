"""The smallest honest OpenAI-compatible transcription server, around the project's own Whisper.

    python tests/whisper_server.py CHECKPOINT --port 8000

Serves `POST /v1/audio/transcriptions` (multipart: file, model, language, response_format) and
`GET /v1/models`, plus `GET /requests` (transcription requests received so far) for the tests.
No package on PyPI serves an openai-whisper checkpoint path offline (vLLM needs a GPU build and
Hub weights; speaches/faster-whisper need CTranslate2 conversions from the Hub), so the tests of
`--stt-url` run against this one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI, File, Form, HTTPException, UploadFile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, when run as a file

from tutor import audio
from tutor.transcribe import Transcriber, load_whisper

MODEL_ID = "whisper-test"


def build(checkpoint: Path) -> FastAPI:
    transcriber = Transcriber(load_whisper(str(checkpoint)), threads=1)
    app = FastAPI()
    served = {"received": 0}

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]}

    @app.post("/v1/audio/transcriptions")
    def transcriptions(
        file: UploadFile = File(...),
        model: str = Form(MODEL_ID),
        language: str | None = Form(None),
        response_format: str = Form("json"),
    ) -> dict:
        served["received"] += 1
        if model != MODEL_ID:
            raise HTTPException(404, f"model {model!r} not found")
        try:
            return {"text": transcriber.transcribe(audio.load(file.file.read()), language)}
        except audio.AudioError:  # nothing heard, or not audio: OpenAI's API answers "" here
            return {"text": ""}

    @app.get("/requests")
    def requests() -> dict:
        return served

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(build(args.checkpoint), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
