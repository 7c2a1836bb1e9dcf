"""Recordings written on the spot for tests: tones, noise, silence and broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile


def tone(seconds: float, rate: int, channels: int = 1, freq: float = 440.0,
         amplitude: float = 0.3) -> np.ndarray:
    """A sine (different phase per channel), shaped (frames, channels)."""
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([amplitude * np.sin(2 * np.pi * freq * t + c) for c in range(channels)],
                    axis=1).astype(np.float32)


def write(path: Path, samples: np.ndarray, rate: int, **kwargs) -> Path:
    soundfile.write(path, samples, rate, **kwargs)
    return path


def encode(path: Path, samples: np.ndarray, rate: int, codec: str, out_rate: int = 48000) -> Path:
    """SAMPLES (frames, channels) at RATE, compressed with CODEC into PATH's container (.webm,
    .m4a, ...) by PyAV, as a browser's MediaRecorder or a phone would."""
    import av

    layout = "mono" if samples.shape[1] == 1 else "stereo"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=out_rate, layout=layout)
        stream.bit_rate = 12200 if out_rate == 8000 else 64000  # AMR-NB's highest mode
        for start in range(0, len(samples), 1024):  # a recorder's chunks, not one huge frame
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(samples[start:start + 1024].T, dtype=np.float32),
                format="fltp", layout=layout)
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path
