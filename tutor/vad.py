"""Is anyone speaking? Silero VAD (its model ships inside the silero-vad package) on a recording
at 16 kHz, before Whisper sees it: white noise, a steady tone and keyboard clicks pass an energy
gate, and Whisper invents text from them. Chosen over webrtcvad and the energy gate by
`python -m bench.vad` (docs/results/vad/vad.md): every speech clip found, no false speech on noise,
tones or clicks. Its ONNX model (onnxruntime, one thread) costs ~6 ms of one core per second of
audio, a third of its TorchScript one, and needs no torch thread: it runs on the caller's.
"""

from __future__ import annotations

import threading

import numpy as np

from tutor.audio import SAMPLE_RATE, AudioError

MIN_SPEECH_S = 0.25  # less speech than this in a recording is no question
NO_SPEECH = (
    "No speech was heard in the recording (only silence or noise): check the "
    "microphone, come closer to it and ask again."
)


def load_vad():
    """A Silero VAD model (ONNX, one thread); it keeps the state of the audio it has heard."""
    from silero_vad import load_silero_vad

    return load_silero_vad(onnx=True)


class SpeechDetector:
    """Seconds of speech in a recording, by Silero VAD; one recording at a time."""

    def __init__(self) -> None:
        self.model = load_vad()
        self._lock = threading.Lock()  # the model's state belongs to one recording

    def speech_seconds(self, audio: np.ndarray) -> float:
        """Seconds of speech in AUDIO (float32 mono at 16 kHz)."""
        with self._lock:
            return self._speech_seconds(audio)

    def require_speech(self, audio: np.ndarray) -> None:
        """AudioError unless AUDIO holds at least MIN_SPEECH_S of speech."""
        if self.speech_seconds(audio) < MIN_SPEECH_S:
            raise AudioError(NO_SPEECH)

    def _speech_seconds(self, audio: np.ndarray) -> float:
        import torch
        from silero_vad import get_speech_timestamps

        with torch.inference_mode():
            # It resets the model's state first: each recording is heard afresh.
            spans = get_speech_timestamps(
                torch.from_numpy(np.ascontiguousarray(audio)), self.model, sampling_rate=SAMPLE_RATE
            )
        return sum(s["end"] - s["start"] for s in spans) / SAMPLE_RATE
