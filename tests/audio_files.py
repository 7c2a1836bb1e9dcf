"""Recordings written on the spot for tests: tones, noise, silence and broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile


def tone(
    seconds: float, rate: int, channels: int = 1, freq: float = 440.0, amplitude: float = 0.3
) -> np.ndarray:
    """A sine (different phase per channel), shaped (frames, channels)."""
    t = np.arange(int(seconds * rate)) / rate
    return np.stack(
        [amplitude * np.sin(2 * np.pi * freq * t + c) for c in range(channels)], axis=1
    ).astype(np.float32)


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
                np.ascontiguousarray(samples[start : start + 1024].T, dtype=np.float32),
                format="fltp",
                layout=layout,
            )
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def bad_recordings(tmp_path: Path) -> dict[str, tuple[object, str]]:
    """Recordings the app must refuse, each with words its message must contain."""
    silence = np.zeros((16000 * 3, 1), np.float32)
    click = np.zeros((int(0.2 * 44100), 1), np.float32)
    click[100:120] = 0.9
    long_click = np.zeros((16000 * 3, 1), np.float32)
    long_click[8000:8050] = 0.9
    nan = tone(2.0, 16000)
    nan[1000:1100] = np.nan
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4)
    text = tmp_path / "notes.wav"
    text.write_text("these are my lecture notes, not audio")
    return {
        "empty": ((16000, np.zeros(0, np.int16)), "empty"),
        "0.2 s click": (write(tmp_path / "click.wav", click, 44100), "too short"),
        "silence": (write(tmp_path / "silence.wav", silence, 16000), "No speech"),
        "a click in silence": (write(tmp_path / "lclick.wav", long_click, 16000), "No speech"),
        "10 minutes": (
            write(
                tmp_path / "long.wav", np.zeros((600 * 16000, 1), np.int16), 16000, subtype="PCM_16"
            ),
            "too long",
        ),
        "corrupt wav": (corrupt, "not a readable recording"),
        "not audio": (text, "not a readable recording"),
        "NaN samples": (write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT"), "damaged"),
    }


BAD_CASES = [
    "empty",
    "0.2 s click",
    "silence",
    "a click in silence",
    "10 minutes",
    "corrupt wav",
    "not audio",
    "NaN samples",
]
