"""End of speech → first answer token of a spoken follow-up: hands-free streaming (the page in
Chromium, its microphone playing a question) against today's one-shot path (the whole recording
transcribed into the box, then Send), side by side against one app; alone, then with other
students' answers streaming.

    python -m bench.voice [--out runs/voice] [--repeats 3] [--others 4] [--end-of-speech-s 0.8]
                          [--whisper-window full|fit]

Both paths go through the page in Chromium, which here shares the app's 2 cores (on a Space it
runs on the student's device): one-shot is timed from the recording's upload (a student who
presses Stop and then Send at once), hands-free from the end of the speech in the file and from
the end of the trailing silence that sends the question (--end-of-speech-s, the student's
setting: the hands-free counterpart of pressing Stop). One-shot through the API (/transcribe,
then /ask, no browser) is shown beside them. Whisper base's and Llama 3.2 1B Q4_K_M's shapes
with synthetic weights (bench.models).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile
import yaml

from bench import app, hardware, models, speech
from bench.browser import BY, DESKTOP, Page, PageClock, chromium, wait
from bench.harness import running_app
from bench.llm import QUESTIONS
from tutor.live import END_OF_QUESTION_S

# Silence before the question and after it (the microphone loops). The pause must outlast the
# answer, even with other students' answers streaming: the app takes no speech for a question
# while this student's answer streams, so a shorter loop cut the next question short.
LEAD_S, TRAIL_S = 0.5, 12.0
ANSWER_TOKENS = 16  # the measured student's answers: short (a mode allows no fewer), done soon
# The other students ask again and again; their answers must leave the measured student room
# in the engine's KV cells (--kv-tokens), or its question would wait in line.
OTHER_ANSWER_TOKENS = 600
LISTENING_S = 20.0  # how long the app's CPU is measured while a student listens to silence
TEXT_READY = re.compile(r"hands-free question: .* its text ready ([0-9.]+) s after")


def prompts(folder: Path) -> Path:
    """Greedy modes: short answers in "hint" (the measured student's), long ones elsewhere."""
    app.greedy_prompts(folder, OTHER_ANSWER_TOKENS)
    hint = folder / "hint.yaml"
    mode = yaml.safe_load(hint.read_text())
    mode["generation"]["max_tokens"] = ANSWER_TOKENS
    hint.write_text(yaml.safe_dump(mode))
    return folder


def question_file(folder: Path) -> tuple[Path, float, float]:
    """The ~5 s shared clip between silences: (WAV, seconds into it where speech ends, length)."""
    clip, _ = speech.clip_near(5.0)
    samples, rate = soundfile.read(clip, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    path = folder / "question.wav"
    soundfile.write(
        path,
        np.concatenate(
            [
                np.zeros(int(LEAD_S * rate), np.float32),
                mono,
                np.zeros(int(TRAIL_S * rate), np.float32),
            ]
        ),
        rate,
    )
    return path, LEAD_S + len(mono) / rate, LEAD_S + len(mono) / rate + TRAIL_S


def streaming(
    url: str, wav: Path, speech_end_s: float, length_s: float, repeats: int
) -> tuple[list[float], int]:
    """(seconds from the end of each spoken follow-up to its first answer token, hands-free;
    loops whose question was not taken).

    The fake microphone loops the file: loop k's speech ends LENGTH_S × k + SPEECH_END_S after
    the page showed the microphone listening. An answer belongs to the last loop whose speech
    ended before it began: on a slow day an answer may still stream when the next loop's question
    begins, and the app takes no question while it does, so a loop can pass unasked.
    """
    driver = chromium(DESKTOP, wav)
    try:
        driver.get(url)
        clock = PageClock(driver)
        wait(lambda: driver.find_elements(BY, "#hands-free input"))[0].click()
        listening_since = clock.listening()
        latencies, loops = [], []
        for k in range(repeats + 1):
            since_first_speech_end = clock.answer(k) - listening_since - speech_end_s
            loops.append(int(since_first_speech_end // length_s))
            if k:  # the first answer is a first question: the others follow up
                latencies.append(since_first_speech_end - loops[-1] * length_s)
        return latencies, loops[-1] + 1 - len(loops)
    finally:
        driver.quit()


def listening_cost(url: str, pid: int, folder: Path) -> dict:
    """The app's CPU (cores) over LISTENING_S idle, then with one page listening hands-free to a
    silent microphone: what a listening student costs the server before any question (the VAD on
    every chunk, and the stream's handling)."""
    silence = folder / "silence.wav"
    soundfile.write(silence, np.zeros(int(LISTENING_S * 16000), np.float32), 16000)

    def cores_over(seconds: float) -> float:
        start_cpu, start = app.cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        return (app.cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)

    idle = cores_over(LISTENING_S)
    driver = chromium(DESKTOP, silence)
    try:
        driver.get(url)
        wait(lambda: driver.find_elements(BY, "#hands-free input"))[0].click()
        wait(lambda: driver.find_elements(BY, "#live button.stop-button"))
        listening = cores_over(LISTENING_S)
    finally:
        driver.quit()
    return {"idle_cores": idle, "listening_cores": listening}


def one_shot_in_page(url: str, clip: Path, folder: Path, repeats: int) -> list[float]:
    """Seconds from choosing CLIP in the page's "Upload a recording" (what Stop sends) to the
    first answer token, the student pressing Send as soon as the text is in the box; follow-ups
    1..REPEATS after a first question."""
    driver = chromium(DESKTOP, clip)
    try:
        page = Page(driver, url).open()
        clock = PageClock(driver)
        latencies = []
        for k in range(repeats + 1):
            recording = folder / f"follow-up-{k}{clip.suffix}"  # a new file: a new upload
            recording.write_bytes(clip.read_bytes())
            asked = len(page.bots())
            clock.send_when_transcribed()
            start = clock.mark(f"upload {k}")
            page.upload(recording)
            first_text = clock.answer(asked)
            if k:
                latencies.append(first_text - start)
            wait(page.idle)
        return latencies
    finally:
        driver.quit()


class OtherStudents:
    """N students asking again and again while the measurement runs: ASK(i, stopping) asks
    student i's question until STOPPING is set (their answers are long)."""

    def __init__(self, n: int, ask: Callable[[int, threading.Event], None]) -> None:
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=ask, args=(i, self.stopping), daemon=True) for i in range(n)
        ]

    def __enter__(self) -> OtherStudents:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=60)  # an answer stops at its next token


def other_question(i: int) -> str:
    return QUESTIONS[i % len(QUESTIONS)] + f" ({i})"


def _ask_the_app(url: str, i: int, stopping: threading.Event) -> None:
    """Student I asks the app at URL through its API until STOPPING."""
    from gradio_client import Client  # here: `--help` need not wait for it

    client = Client(url, verbose=False)
    while not stopping.is_set():
        job = client.submit(other_question(i), "explain", [], api_name="/ask")
        try:
            for _ in job:
                if stopping.is_set():
                    job.cancel()
                    break
        except Exception:  # the app went away at the end of the run
            return


def _text_waits(log: Path, skip: int) -> tuple[list[float], int]:
    """(each hands-free question's wait for its text after the trailing silence, from the app's
    LOG after its first SKIP lines; the lines read)."""
    lines = log.read_text().splitlines()
    waits = [float(m.group(1)) for line in lines[skip:] if (m := TEXT_READY.search(line))]
    return waits, len(lines)


def run(
    repeats: int,
    others: int,
    threads: int,
    end_of_speech_s: float,
    log: Path,
    whisper_window: str = "fit",
) -> dict:
    """The figures; the app's log (each hands-free question's timing) goes to LOG."""
    llama, whisper_ckpt = models.llama_1b_q4(), models.whisper_base()
    result: dict = {
        "ceiling": hardware.ceiling(llama, threads),
        "repeats": repeats,
        "others": others,
        "end_of_speech_s": end_of_speech_s,
        "whisper_window": whisper_window,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        wav, speech_end_s, length_s = question_file(folder)
        clip, _ = speech.clip_near(5.0)
        # A slot for each student: the measured one never waits in line behind the others.
        with running_app(
            model=llama,
            whisper=whisper_ckpt,
            threads=threads,
            prompts=prompts(folder / "p"),
            parallel=others + 1,
            end_of_speech_s=end_of_speech_s,
            whisper_window=whisper_window,
            log=log,
        ) as served:
            print("voice: the app's CPU while a student listens to silence …", flush=True)
            result["listening"] = listening_cost(served.url, served.pid, folder)
            read = 0
            for load in ("alone", f"{others} others"):
                print(f"voice, {load}: one-shot, then hands-free …", flush=True)
                with OtherStudents(
                    others if load != "alone" else 0, functools.partial(_ask_the_app, served.url)
                ):
                    api = app.voice_to_first_token(served.url, clip, repeats)["follow_up_each_s"]
                    one_shot = one_shot_in_page(served.url, clip, folder, repeats)
                    hands_free, unasked = streaming(
                        served.url, wav, speech_end_s, length_s, repeats
                    )
                waits, read = _text_waits(log, read)
                after_silence = [t - end_of_speech_s for t in hands_free]
                result[load] = {
                    "one_shot_api_s": api,
                    "one_shot_api_median_s": statistics.median(api),
                    "one_shot_s": one_shot,
                    "streaming_s": hands_free,
                    "loops_unasked": unasked,
                    "streaming_after_silence_s": after_silence,
                    "text_waited_s": waits,
                    "one_shot_median_s": statistics.median(one_shot),
                    "streaming_median_s": statistics.median(hands_free),
                    "streaming_after_silence_median_s": statistics.median(after_silence),
                    "text_waited_median_s": statistics.median(waits) if waits else None,
                }
    alone, busy = result["alone"], result[f"{others} others"]
    after = "streaming_after_silence_median_s"
    result["streaming_vs_one_shot"] = alone[after] / alone["one_shot_median_s"]
    result["streaming_busy_vs_alone"] = busy[after] / alone[after]
    result["from_speech_end_vs_one_shot"] = alone["streaming_median_s"] / alone["one_shot_median_s"]
    return result


def markdown(r: dict) -> str:
    others = f"{r['others']} others"
    silence = r["end_of_speech_s"]

    def row(label: str, key: str) -> str:
        alone, busy = r["alone"][key], r[others][key]
        shown = [f"{x:.2f}" if x is not None else "–" for x in (alone, busy)]
        return f"| {label} | {shown[0]} | {shown[1]} |"

    return "\n".join(
        [
            f"Memory bandwidth in this run: {r['ceiling']['read_bandwidth_gb_s']:.1f} GB/s. "
            f"Whisper's window: {r.get('whisper_window', 'full')}. "
            f"A spoken follow-up → its first answer token, median of {r['repeats']}:",
            "",
            "| path | alone (s) | with " + others + " answering (s) |",
            "|---|---|---|",
            row(
                "one-shot in the page: the recording's upload → text in the box, Send → first "
                "token",
                "one_shot_median_s",
            ),
            row(
                f"hands-free: the end of the {silence} s trailing silence → first token",
                "streaming_after_silence_median_s",
            ),
            row("hands-free: the end of the speech → first token", "streaming_median_s"),
            row(
                "hands-free: the text ready after the trailing silence (app log)",
                "text_waited_median_s",
            ),
            row("one-shot via the API (no browser): /transcribe, /ask", "one_shot_api_median_s"),
            "",
            f"Hands-free / one-shot, alone: **{r['streaming_vs_one_shot']:.2f}×** (goal ≤ 0.45×; "
            f"from the end of the speech, {silence} s of trailing silence included: "
            f"{r['from_speech_end_vs_one_shot']:.2f}×). Hands-free with {others} / alone: "
            f"**{r['streaming_busy_vs_alone']:.2f}×** (goal ≤ 1.5×).",
            "",
            f"Loops whose question was not taken (an answer still streaming): "
            f"{r['alone']['loops_unasked']} alone, {r[others]['loops_unasked']} with {others}. "
            f"The app's CPU while one student listens hands-free to silence: "
            f"{r['listening']['listening_cores']:.3f} cores (idle: "
            f"{r['listening']['idle_cores']:.3f}).",
        ]
    )


def add_voice_arguments(parser: argparse.ArgumentParser, out: str, repeats: int) -> None:
    """The options both voice benches take (this one and bench.voice_server)."""
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--others", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--end-of-speech-s",
        type=float,
        default=END_OF_QUESTION_S,
        help="the trailing silence that sends a hands-free question",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.voice", description=__doc__)
    add_voice_arguments(parser, "runs/voice", 3)
    parser.add_argument(
        "--whisper-window", choices=["full", "fit"], default="fit", help="the app's"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(
        args.repeats,
        args.others,
        args.threads,
        args.end_of_speech_s,
        args.out / "app.log",
        args.whisper_window,
    )
    (args.out / "voice.json").write_text(json.dumps(result, indent=1))
    (args.out / "voice.md").write_text(markdown(result) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
