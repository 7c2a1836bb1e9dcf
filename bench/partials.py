"""Hands-free with and without early answers (tutor.batching: the answer begun at the pause that
ends the question), partials (tutor.live: the words still being spoken transcribed every second,
for the prefill) and drafts (the piece's transcription decoded from its latest partial's words:
tutor.draft_decoding), side by side in one process, alone and with other students answering.

    python -m bench.partials [--repeats 8] [--others 4]

The same components and question as bench.voice_server (Whisper base's and the 1B Q4_K_M's
shapes, synthetic weights, real decoding lengths, the fitted window); four students follow up
in turn: the app's way (early answers, partials, drafts), then each without one more of them.
Each follow-up's speech ends at another point of a microphone chunk (bench.voice_server).
(The synthetic Whisper's partials are always
right as far as they go: real tiny.en's partials had 60% of the tokens right on the shared clips,
bench.streaming_wer.)
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench import models, real_whisper, speech, voice
from bench import voice_server as server
from tutor.settings import Settings

# Each student's: the window setting its partials follow, whether it decodes from drafts, and
# whether answers begin at pauses.
PATHS = {
    "early answers, partials and drafts": ("fit", True, True),
    "partials and drafts": ("fit", True, False),
    "partials": ("fit", False, False),
    "neither": ("full", False, False),
}


def run(repeats: int, others: int, threads: int) -> dict:
    from tutor import app

    clip, _ = speech.clip_near(5.0)
    question_pcm = server.pcm_of(clip)
    with tempfile.TemporaryDirectory() as tmp:
        settings = replace(
            Settings(),
            model=str(models.llama_1b_q4()),
            whisper=str(models.whisper_base()),
            threads=threads,
            prompts=str(voice.prompts(Path(tmp) / "p")),
            parallel=others + 2,
        )
        tutor = app.load(settings).tutor
        tutor.transcriber.window = "fit"
        rate = real_whisper.tokens_per_second()
        tutor.transcriber = real_whisper.DecodesLikeRealWhisper(tutor.transcriber, rate)
        result: dict = {"repeats": repeats, "others": others, "tokens_per_s": rate}
        for load in (0, others):
            with voice.OtherStudents(load, functools.partial(server.ask_the_tutor, tutor)):
                listeners = {
                    path: server.listener_for(
                        tutor, replace(settings, whisper_window=window), drafts=drafts
                    )
                    for path, (window, drafts, _) in PATHS.items()
                }
                students = {path: server.Student(tutor, question_pcm, path) for path in PATHS}
                times: dict[str, list[float]] = {path: [] for path in PATHS}
                for i in range(repeats):
                    for path, (_, _, early) in PATHS.items():
                        from_speech_end, _ = students[path].hands_free(
                            listeners[path], phase=i / repeats, early=early
                        )
                        times[path].append(from_speech_end - settings.end_of_speech_s)
                result[f"{load} others"] = {
                    path: {"after_silence_s": t, "median_s": statistics.median(t)}
                    for path, t in times.items()
                }
                print(
                    f"{load} others:", {p: round(statistics.median(t), 2) for p, t in times.items()}
                )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.partials", description=__doc__)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--others", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    run(args.repeats, args.others, args.threads)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
