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
