"""Recordings → the float32 16 kHz mono array Whisper wants, with no system ffmpeg.

Browsers and uploads deliver any sample rate (8–96 kHz), mono or stereo: WAV, FLAC, OGG and MP3
are decoded with soundfile (channels averaged, soxr resamples); what browsers and phones record
(WebM/Opus, MP4 and M4A with AAC or Opus, AMR) with PyAV, whose wheel ships FFmpeg's decoders.
Recordings that cannot help (empty, a click, silence, far too long, broken samples) are refused
with a message for the student: Whisper invents text from silence, so it must never see it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from tutor.errors import TutorError

SAMPLE_RATE = 16000
FRAME_S = 0.03
DECODE_BLOCK_S = 4  # seconds of a file decoded at a time (a bounded buffer, whatever the file)
MAX_CHANNELS = 8  # more is not a recording of a question
MIN_RATE, MAX_RATE = 4000, 384000  # Hz: phone audio to studio formats
UNKNOWN_LENGTH = 2**62  # libsndfile reports a file of unknown length as SF_COUNT_MAX frames
READABLE_FORMATS = "WAV, FLAC, OGG, MP3, WebM, MP4/M4A or AMR"


class AudioError(TutorError):
    """A recording that cannot be transcribed; the message is meant for the student."""


@dataclass(frozen=True)
class AudioLimits:
    """What a usable recording looks like."""

    min_seconds: float = 0.5
    max_seconds: float = 120.0
    # Speech needs some frames clearly above the noise floor; a click or hiss has (almost) none.
    speech_dbfs: float = -45.0
    min_speech_seconds: float = 0.25


def _to_float(samples: np.ndarray) -> np.ndarray:
    """Integer PCM → float in [-1, 1]; float stays float."""
    samples = np.asarray(samples)
    if samples.dtype.kind in "iu":
        info = np.iinfo(samples.dtype)
        scale = max(abs(info.min), info.max)
        offset = 0 if info.min < 0 else (info.max + 1) / 2  # unsigned PCM is centred on mid-scale
        return ((samples.astype(np.float64) - offset) / scale).astype(np.float32)
    if samples.dtype.kind == "f":
        return samples.astype(np.float32)
    raise AudioError("The recording is not audio samples.")


def _refuse_if_too_long(seconds: float, limits: AudioLimits) -> None:
    if seconds > limits.max_seconds:
        raise AudioError(
            f"The recording is too long ({seconds / 60:.1f} min; the limit is "
            f"{limits.max_seconds / 60:g} min). Please ask a shorter question."
        )


def read(
    source: str | Path | bytes | tuple[int, np.ndarray], limits: AudioLimits = AudioLimits()
) -> tuple[np.ndarray, int]:
    """Decode SOURCE (a file path, file bytes, or Gradio's (rate, samples)) to (samples, rate).

    Samples are float32, shaped (frames, channels); a file comes back already averaged to mono
    and at 16 kHz, (frames, 1), converted as it is decoded. A file over the length limit is
    refused from its header, and, should the header understate it, as soon as decoding passes
    the limit: memory stays bounded by the limit, whatever the file claims.
    """
    if isinstance(source, tuple):
        rate, samples = source
        samples = _to_float(samples)
    else:
        data = io.BytesIO(source) if isinstance(source, bytes) else source
        try:
            samples, rate = _decode_mono(data, limits)
        except AudioError:
            raise
        except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
            container = _recorded_container(data)
            if container is None:
                raise AudioError(
                    f"That file is not a readable recording: please send {READABLE_FORMATS} audio."
                ) from None
            samples, rate = _decode_recorded(data, container, limits)
        except OSError:
            raise AudioError("The recording could not be opened.") from None
    if samples.ndim == 1:
        samples = samples[:, None]
    if samples.ndim != 2 or not rate or int(rate) <= 0:
        raise AudioError("The recording is not audio samples.")
    return samples, int(rate)


def _decode_mono(data: str | Path | io.BytesIO, limits: AudioLimits) -> tuple[np.ndarray, int]:
    """A file's samples averaged to mono and resampled to 16 kHz block by block: (frames, 1) and
    SAMPLE_RATE. Nothing larger than one block of the file and the 16 kHz result is held."""
    with soundfile.SoundFile(data) as f:
        if not 0 < f.channels <= MAX_CHANNELS or not MIN_RATE <= f.samplerate <= MAX_RATE:
            raise AudioError(
                f"That file is not a usable recording ({f.channels} channels at {f.samplerate} Hz)."
            )
        if f.frames < UNKNOWN_LENGTH:  # e.g. a streamed FLAC leaves its length unset
            _refuse_if_too_long(f.frames / f.samplerate, limits)
        max_frames = int(limits.max_seconds * f.samplerate)
        # One-shot and streamed soxr output are identical; streaming keeps memory flat.
        resampler = soxr.ResampleStream(f.samplerate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        pieces, frames = [], 0
        for block in f.blocks(
            blocksize=f.samplerate * DECODE_BLOCK_S, dtype="float32", always_2d=True
        ):
            frames += len(block)
            if frames > max_frames:  # the header understated the length
                _refuse_if_too_long(frames / f.samplerate, limits)
            pieces.append(resampler.resample_chunk(block.mean(axis=1, dtype=np.float32)))
        pieces.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        return np.concatenate(pieces)[:, None], SAMPLE_RATE


def _recorded_container(data: str | Path | io.BytesIO) -> str | None:
    """The FFmpeg demuxer for a container that browsers and phones record into and libsndfile
    cannot read, recognised by the file's first bytes; None for anything else.

    A file never chooses its own demuxer: a playlist (HLS, concat) would make FFmpeg open other
    files, and nothing outside the app's folders may be read.
    """
    try:
        if isinstance(data, io.BytesIO):
            head = data.getvalue()[:16]
        else:
            with open(data, "rb") as f:
                head = f.read(16)
    except OSError:
        return None
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"  # WebM/Opus from MediaRecorder (Chromium, Firefox, Android)
    if head[4:8] == b"ftyp":
        return "mov"  # MP4/M4A: Safari's MediaRecorder, iPhone voice memos (AAC)
    if head.startswith(b"#!AMR"):
        return "amr"  # phone voice recorders
    return None


def _decode_recorded(
    data: str | Path | io.BytesIO, container: str, limits: AudioLimits
) -> tuple[np.ndarray, int]:
    """Like `_decode_mono`, through PyAV (FFmpeg's decoders ship in its wheel) with the given
    demuxer: (frames, 1) at SAMPLE_RATE, refused as soon as it passes the length limit."""
    import av

    if isinstance(data, io.BytesIO):
        data.seek(0)
    try:
        with av.open(data, mode="r", format=container) as f:
            stream = next((s for s in f.streams if s.type == "audio"), None)
            if stream is None:
                raise AudioError("That file has no sound in it.")
            rate, channels = stream.codec_context.sample_rate, stream.codec_context.channels
            if not 0 < channels <= MAX_CHANNELS or not MIN_RATE <= rate <= MAX_RATE:
                raise AudioError(
                    f"That file is not a usable recording ({channels} channels at {rate} Hz)."
                )
            if f.duration is not None and f.duration > 0:  # microseconds, from the header
                _refuse_if_too_long(f.duration / 1e6, limits)
            to_mono = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            pieces, seconds = [], 0.0
            for frame in f.decode(stream):
                seconds += frame.samples / (frame.sample_rate or rate)
                if seconds > limits.max_seconds:  # the header understated the length
                    _refuse_if_too_long(seconds, limits)
                pieces += [out.to_ndarray().reshape(-1) for out in to_mono.resample(frame)]
            pieces += [out.to_ndarray().reshape(-1) for out in to_mono.resample(None)]
    except av.FFmpegError:
        raise AudioError(
            "That file is not a readable recording: it may be damaged. Please record again."
        ) from None
    samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return samples.astype(np.float32, copy=False)[:, None], SAMPLE_RATE


def to_whisper(samples: np.ndarray, rate: int) -> np.ndarray:
    """(frames, channels) at RATE → float32 mono at 16 kHz."""
    mono = samples.mean(axis=1, dtype=np.float64)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(np.clip(mono, -1.0, 1.0), dtype=np.float32)


def check(samples: np.ndarray, rate: int, limits: AudioLimits) -> None:
    """Refuse recordings Whisper should not see, with a message saying why."""
    seconds = len(samples) / rate
    if len(samples) == 0:
        raise AudioError("The recording is empty: hold the microphone button and speak.")
    if not np.isfinite(samples).all():
        raise AudioError(
            "The recording is damaged (it contains invalid samples). Please record again."
        )
    if seconds < limits.min_seconds:  # two decimals: 0.45 s must not read as the 0.5 s limit
        raise AudioError(
            f"The recording is too short ({seconds:.2f} s; the shortest is "
            f"{limits.min_seconds:g} s): please ask your question in a full "
            "sentence."
        )
    _refuse_if_too_long(seconds, limits)
    frame = max(1, int(FRAME_S * rate))
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    n = len(mono) // frame
    rms = np.sqrt(np.mean(mono[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    loud = rms > 10 ** (limits.speech_dbfs / 20)
    if loud.sum() * frame / rate < limits.min_speech_seconds:
        raise AudioError(
            "No speech was heard in the recording: check the microphone and speak a little louder."
        )


def load(
    source: str | Path | bytes | tuple[int, np.ndarray], limits: AudioLimits = AudioLimits()
) -> np.ndarray:
    """Decode, check and convert a recording for Whisper."""
    samples, rate = read(source, limits)
    check(samples, rate, limits)
    return to_whisper(samples, rate)
