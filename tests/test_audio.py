"""Decoding, downmixing, resampling and gating of recordings (soundfile + soxr, no ffmpeg)."""

from __future__ import annotations

import json
import struct
import tracemalloc

import numpy as np
import pytest
import soundfile

from audio_files import BAD_CASES, bad_recordings, encode, tone, write
from tutor import audio


def _peak_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / audio.SAMPLE_RATE)[spectrum.argmax()])


@pytest.mark.parametrize(
    "rate, channels, fmt",
    [
        (8000, 1, "WAV"),
        (22050, 1, "WAV"),
        (44100, 2, "FLAC"),
        (48000, 2, "OGG"),
        (96000, 1, "WAV"),
        (48000, 6, "WAV"),
    ],
)
def test_any_rate_and_channel_count_becomes_16k_mono(rate, channels, fmt, tmp_path):
    path = write(
        tmp_path / f"tone.{fmt.lower()}", tone(2.0, rate, channels, freq=1000.0), rate, format=fmt
    )
    samples = audio.load(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - 2 * audio.SAMPLE_RATE) <= audio.SAMPLE_RATE * 0.01
    assert abs(_peak_hz(samples) - 1000.0) < 5  # resampled, not just relabelled


def test_integer_samples_from_the_browser(tmp_path):
    pcm = (tone(1.0, 44100, 2) * 32767).astype(np.int16)
    samples = audio.load((44100, pcm))
    assert len(samples) == audio.SAMPLE_RATE and 0.2 < np.abs(samples).max() <= 0.31


def test_shared_speech_clips_decode(assets):
    rows = [json.loads(line) for line in (assets / "speech" / "transcripts.jsonl").open()]
    for row in rows[:3] + [r for r in rows if r["channels"] == 2]:
        samples = audio.load(assets / "speech" / row["audio"])
        assert abs(len(samples) / audio.SAMPLE_RATE - row["duration_s"]) < 0.05


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_recordings_are_refused_with_a_reason(case, tmp_path):
    source, words = bad_recordings(tmp_path)[case]
    with pytest.raises(audio.AudioError, match=words):
        audio.load(source, audio.AudioLimits(max_seconds=120))


def test_length_cap_is_configurable(tmp_path):
    path = write(tmp_path / "tone.wav", tone(5.0, 16000), 16000)
    assert len(audio.load(path, audio.AudioLimits(max_seconds=10)))
    with pytest.raises(audio.AudioError, match="too long"):
        audio.load(path, audio.AudioLimits(max_seconds=4))


def _flac_without_its_length(path, seconds: float, rate: int) -> bytes:
    """A FLAC of clicks whose header leaves the length unset (as a streaming encoder may)."""
    samples = np.zeros((int(seconds * rate), 1), np.float32)
    samples[::rate] = 0.5  # a click a second: compresses to almost nothing
    soundfile.write(path, samples, rate, format="FLAC")
    data = bytearray(path.read_bytes())
    data[21] &= 0xF0  # STREAMINFO's 36-bit total sample count: 0, unknown
    data[22:26] = bytes(4)
    return bytes(data)


def test_a_small_file_that_decodes_to_hours_is_refused_while_decoding(tmp_path):
    data = _flac_without_its_length(tmp_path / "hours.flac", 2 * 3600, 8000)
    assert len(data) < 8 * 2**20  # small on the wire: far below the upload limit
    tracemalloc.start()
    try:
        with pytest.raises(audio.AudioError, match="too long"):
            audio.load(data)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    limit_bytes = 120 * 8000 * 4  # two minutes of mono float32: what the limit allows
    assert peak_bytes < 3 * limit_bytes  # not two hours' worth


def test_a_wav_header_claiming_ten_hours_is_read_for_what_it_holds(tmp_path):
    samples = (tone(2.0, 16000) * 32767).astype("<i2")
    n_claimed = 10 * 3600 * 16000 * 2
    header = (
        b"RIFF"
        + struct.pack("<I", 36 + n_claimed)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
        + b"data"
        + struct.pack("<I", n_claimed)
    )
    assert len(audio.load(header + samples.tobytes())) == 2 * 16000


def test_six_channels_at_96_khz_for_two_minutes_decode_within_bounds(tmp_path):
    path = write(tmp_path / "surround.flac", tone(120.0, 96000, channels=6), 96000)
    tracemalloc.start()
    try:
        whisper_input = audio.load(path)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert whisper_input.shape == (120 * audio.SAMPLE_RATE,)
    all_channels_bytes = 120 * 96000 * 6 * 4  # what decoding the file at once would hold
    assert peak_bytes < all_channels_bytes / 2


def _envelope(samples: np.ndarray, frame: int = 480) -> np.ndarray:
    """RMS loudness of 30 ms frames of 16 kHz mono samples."""
    mono = samples[: len(samples) // frame * frame]
    return np.sqrt(np.mean(mono.reshape(-1, frame).astype(np.float64) ** 2, axis=1))


@pytest.mark.parametrize(
    "name, codec, out_rate",
    [
        ("chromium-recording.webm", "libopus", 48000),  # MediaRecorder in Chromium and Firefox
        ("iphone-voice-memo.m4a", "aac", 44100),
        ("phone-recorder.amr", "libopencore_amrnb", 8000),
    ],
)
def test_what_browsers_and_phones_record_is_decoded(name, codec, out_rate, assets, tmp_path):
    clip = assets / "speech" / "ljspeech" / "LJ001-0002.wav"
    samples, rate = soundfile.read(clip, always_2d=True, dtype="float32")
    reference = audio.load(clip)
    decoded = audio.load(encode(tmp_path / name, samples, rate, codec, out_rate))
    assert abs(len(decoded) - len(reference)) < 0.1 * audio.SAMPLE_RATE  # codec priming only
    # The same speech: the loudness envelopes agree (at the best shift of up to 150 ms).
    a, b = _envelope(decoded), _envelope(reference)
    n = min(len(a), len(b)) - 5
    best = max(np.corrcoef(a[lag : lag + n], b[:n])[0, 1] for lag in range(5))
    assert best > 0.95


def test_a_compressed_recording_over_the_limit_is_refused(tmp_path):
    path = encode(tmp_path / "lecture.webm", tone(130.0, 16000), 16000, "libopus")
    with pytest.raises(audio.AudioError, match="too long"):
        audio.load(path, audio.AudioLimits(max_seconds=120))


def test_a_playlist_is_never_followed(tmp_path):
    """FFmpeg would open the files an HLS playlist names: such a file must not reach it."""
    playlist = tmp_path / "question.m3u8"
    playlist.write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n"
    )
    with pytest.raises(audio.AudioError, match="not a readable recording"):
        audio.load(playlist)


def test_a_clip_just_under_the_minimum_says_its_length_exactly(tmp_path):
    path = write(tmp_path / "short.wav", tone(0.45, 16000), 16000)
    with pytest.raises(audio.AudioError, match=r"0\.45 s; the shortest is 0\.5 s"):
        audio.load(path)
