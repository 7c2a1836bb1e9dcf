"""Which voice-activity detector should decide "no speech" and "speech has ended"?

    python -m bench.vad [--out runs/vad] [--repeats 5]

Measured side by side in one run on the shared speech clips, each padded with 1.5 s of a quiet
microphone's noise floor (−60 dBFS) before and after, and on recordings with no speech: silence,
white noise (−20 dBFS), a steady 440 Hz tone (−12 dBFS), keyboard-like clicks. Candidates:
today's energy gate (`tutor.audio.check`), webrtcvad (modes 2 and 3, 30 ms frames, speech once
250 ms are voiced, 300 ms hang-over), and Silero VAD (its bundled model, defaults). Reported:
clips whose speech is found, end-of-speech error against the padding's edge, false alarms on
the non-speech recordings, and CPU time per second of audio on one thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from train.assets import assets_dir
from tutor import audio
from tutor.files import atomic_output

SAMPLE_RATE = audio.SAMPLE_RATE
PAD_S = 1.5  # silence (a noise floor) before and after each clip
FLOOR_DBFS = -60.0  # a quiet microphone's noise
NON_SPEECH_S = 4.0  # length of each non-speech recording
Segments = list[tuple[int, int]]  # (start, end) sample indices of detected speech


def _db(level_dbfs: float) -> float:
    return 10 ** (level_dbfs / 20)


def non_speech(rng: np.random.Generator) -> dict[str, Callable[[], np.ndarray]]:
    """Recordings with no speech in them, each a fresh draw."""
    n = int(NON_SPEECH_S * SAMPLE_RATE)

    def floor(length: int = n) -> np.ndarray:
        return (rng.standard_normal(length) * _db(FLOOR_DBFS)).astype(np.float32)

    def clicks() -> np.ndarray:
        x, t, burst = floor(), 0.1, int(0.008 * SAMPLE_RATE)
        decay = np.exp(-np.arange(burst) / 40)
        while t < NON_SPEECH_S - 0.05:  # a key every 120-300 ms, each a damped 8 ms burst
            i = int(t * SAMPLE_RATE)
            x[i : i + burst] += (rng.standard_normal(burst) * decay * 0.5).astype(np.float32)
            t += rng.uniform(0.12, 0.3)
        return x

    t = np.arange(n) / SAMPLE_RATE
    return {
        "silence": floor,
        "white noise": lambda: (rng.standard_normal(n) * _db(-20)).astype(np.float32),
        "steady tone": lambda: (np.sin(2 * np.pi * 440 * t) * _db(-12)).astype(np.float32),
        "keyboard clicks": clicks,
    }


def energy_gate(x: np.ndarray) -> Segments:
    try:
        audio.check(x[:, None], SAMPLE_RATE, audio.AudioLimits())
    except audio.AudioError:
        return []
    return [(0, len(x))]  # it cannot say where speech ends


def webrtc(
    mode: int, frame_ms: int = 30, min_speech_ms: int = 250, hang_ms: int = 300
) -> Callable[[np.ndarray], Segments]:
    import webrtcvad

    vad, n = webrtcvad.Vad(mode), SAMPLE_RATE * frame_ms // 1000

    def segments(x: np.ndarray) -> Segments:
        pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
        voiced = [
            vad.is_speech(pcm[i : i + n].tobytes(), SAMPLE_RATE)
            for i in range(0, len(pcm) - n + 1, n)
        ]
        found, start, last = [], None, 0
        for k, flag in enumerate(voiced + [False] * (hang_ms // frame_ms + 1)):
            if flag:
                start, last = (k if start is None else start), k
            elif start is not None and (k - last) * frame_ms > hang_ms:
                if (last - start + 1) * frame_ms >= min_speech_ms:
                    found.append((start * n, (last + 1) * n))
                start = None
        return found

    return segments


def silero(onnx: bool = False) -> Callable[[np.ndarray], Segments]:
    """Silero VAD's TorchScript model, or its ONNX one (onnxruntime; what the app runs)."""
    import torch
    from silero_vad import get_speech_timestamps, load_silero_vad

    model = load_silero_vad(onnx=onnx)

    def segments(x: np.ndarray) -> Segments:
        return [
            (s["start"], s["end"])
            for s in get_speech_timestamps(torch.from_numpy(x), model, sampling_rate=SAMPLE_RATE)
        ]

    return segments


def run(repeats: int) -> dict:
    import torch

    torch.set_num_threads(1)  # per-thread cost, as beside answers on a shared CPU
    rng = np.random.default_rng(0)
    speech = assets_dir() / "speech"
    clips = sorted((speech / "ljspeech").glob("*.wav")) + [speech / "whisper" / "jfk.flac"]
    pad = int(PAD_S * SAMPLE_RATE)
    padded = []
    for clip in clips:
        x = audio.load(clip)
        noise = (rng.standard_normal(2 * pad) * _db(FLOOR_DBFS)).astype(np.float32)
        padded.append((np.concatenate([noise[:pad], x, noise[pad:]]), pad + len(x)))
    others = non_speech(rng)
    detectors = {
        "energy gate (today)": energy_gate,
        "webrtcvad mode 2": webrtc(2),
        "webrtcvad mode 3": webrtc(3),
        "Silero VAD (TorchScript)": silero(),
        "Silero VAD (ONNX, the app's)": silero(onnx=True),
    }
    results = {}
    for name, detect in detectors.items():
        found, end_errors, cpu_s, audio_s = 0, [], 0.0, 0.0
        for x, speech_end in padded:
            started = time.process_time()
            segments = detect(x)
            cpu_s, audio_s = cpu_s + time.process_time() - started, audio_s + len(x) / SAMPLE_RATE
            if segments:
                found += 1
                end_errors.append((segments[-1][1] - speech_end) / SAMPLE_RATE)
        false_alarms = {
            kind: sum(bool(detect(make())) for _ in range(repeats)) for kind, make in others.items()
        }
        results[name] = {
            "speech_found": found,
            "clips": len(padded),
            "end_error_median_s": statistics.median(end_errors) if end_errors else None,
            "end_error_p90_abs_s": float(np.percentile(np.abs(end_errors), 90))
            if end_errors
            else None,
            "false_alarms": false_alarms,
            "recordings_each": repeats,
            "cpu_ms_per_audio_s": 1000 * cpu_s / audio_s,
        }
    return {"pad_s": PAD_S, "detectors": results}


def markdown(result: dict) -> str:
    kinds = list(next(iter(result["detectors"].values()))["false_alarms"])
    lines = [
        f"Speech clips padded with {result['pad_s']} s of a −60 dBFS noise floor; "
        "recordings without speech, each drawn several times:",
        "",
        "| detector | speech found | end of speech, median error (s) | p90 abs (s) | "
        + " | ".join(f"false alarms: {k}" for k in kinds)
        + " | CPU ms per audio s |",
        "|---|---|---|---|" + "---|" * len(kinds) + "---|",
    ]
    for name, r in result["detectors"].items():

        def fmt(v):
            return "n/a" if v is None else f"{v:+.3f}"

        lines.append(
            f"| {name} | {r['speech_found']}/{r['clips']} | "
            f"{fmt(r['end_error_median_s'])} | {fmt(r['end_error_p90_abs_s'])} | "
            + " | ".join(f"{r['false_alarms'][k]}/{r['recordings_each']}" for k in kinds)
            + f" | {r['cpu_ms_per_audio_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.vad", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/vad"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    result = run(args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.out / "vad.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    with atomic_output(args.out / "vad.md") as tmp:
        tmp.write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
