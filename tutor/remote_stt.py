"""Speech → text on an OpenAI-compatible server (`/v1/audio/transcriptions`: vLLM, speaches, ...).

The recording is decoded and gated here first (`tutor.audio`: length, silence, broken samples),
so only a usable question leaves the machine, as 16 kHz mono 16-bit WAV (32 kB a second).
"""

from __future__ import annotations

import io
import logging

import numpy as np
import openai
import soundfile

from tutor.audio import SAMPLE_RATE, AudioError
from tutor.remote import ServerOptions, check_server, client_for, explain

log = logging.getLogger(__name__)

WHAT = "speech recognition"
DEFAULT_MODEL = "whisper-1"  # OpenAI's name; servers that list their models get theirs instead


def wav_bytes(audio: np.ndarray) -> bytes:
    """AUDIO (float32, 16 kHz, mono) as a 16-bit PCM WAV file."""
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


class RemoteTranscriber:
    """Whisper (or any speech model) behind an OpenAI-compatible transcription endpoint."""

    def __init__(self, options: ServerOptions, language: str = "en") -> None:
        """Check the server once (ServerUnavailable if it cannot be used)."""
        self.client = client_for(options)
        self.model = check_server(self.client, options, WHAT) or DEFAULT_MODEL
        self.language = language
        log.info("speech model %r at %s", self.model, options.base_url)

    def transcribe(
        self,
        audio: np.ndarray,
        language: str | None = None,
        max_tokens: int | None = None,
        draft: str | None = None,
        urgent: bool = True,
    ) -> str:
        """Text of AUDIO (float32, 16 kHz, mono), or AudioError if the server heard no speech.
        (MAX_TOKENS, DRAFT, URGENT: OpenAI's transcription API has no such fields; the server
        decodes afresh, as it decides.)"""
        language = language or self.language
        try:
            result = self.client.audio.transcriptions.create(
                model=self.model,
                file=("question.wav", wav_bytes(audio), "audio/wav"),
                response_format="json",
                temperature=0.0,
                **({} if language == "auto" else {"language": language}),
            )
        except openai.OpenAIError as e:
            raise explain(e, WHAT) from None
        text = (result.text or "").strip()
        if not text:
            raise AudioError(
                f"No speech was recognised in the {len(audio) / SAMPLE_RATE:.1f} s "
                "recording. Please try again."
            )
        return text
