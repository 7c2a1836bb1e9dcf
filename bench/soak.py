"""A day of traffic in minutes: 1,000 mixed requests against the real app, resources watched.

    python -m bench.soak [--requests 1000] [--students 6] [--out docs/results/soak]

Students (threads, each its own `gradio_client`, or raw HTTP) keep several conversations in
flight: a voice question then a follow-up, typed questions, Stop mid-answer, connections that
vanish mid-answer, and bad input (malformed histories, unknown modes, broken recordings). Every
second the app's resident memory, open file descriptors, threads and Gradio's upload cache on
disk are sampled. The app runs on the seeded stand-in models (real GGUF and Whisper formats),
with its uploads swept after a short age so that the bound on disk shows within the run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from typing import TYPE_CHECKING

import soundfile

from bench.harness import running_app
from bench.app import greedy_prompts
from bench.speech import clip_near
from synth.standin import standin_llm, standin_whisper
from train.plots import plot_lines
from tutor.files import atomic_output

if TYPE_CHECKING:  # gradio_client is imported where used: `--help` need not wait
    from gradio_client import Client

ANSWER_TOKENS = 48  # the modes' budget: short answers, many requests
SAMPLE_EVERY_S = 1.0
WARM_UP_FRACTION = 0.3  # requests before the baseline: bounded caches fill up meanwhile
SAVED_CONVERSATIONS_MB = 16  # the app's --cache-mb: small, so that its bound is reached in warm-up
FD_SETTLE_S = 30.0  # after the last request: closed connections' descriptors must be gone by then
UPLOAD_MAX_AGE_MINUTES = 1.0  # short, so that the sweep of Gradio's cache shows in the run
SETTLE_TIMEOUT_S = 120.0  # after the last request: the app must be idle again by then
# What a student does next, and how often (weights).
SCENARIOS = {
    "voice and follow-up": 3,
    "typed question": 4,
    "stop mid-answer": 1,
    "vanish mid-answer": 1,
    "bad input": 1,
}
BAD_HISTORIES = [
    "not a list",
    [{"role": "system", "content": "x"}],
    [{"role": "user", "content": 5}],
]


@dataclass
class Sample:
    t_s: float
    requests_done: int
    rss_mb: float
    fds: int
    threads: int
    upload_cache_mb: float
    saved_conversations_mb: float


@dataclass
class Outcome:
    kind: str
    start_s: float
    latency_s: float
    ok: bool  # answered, or refused with a clear message where refusal was the point


def _proc(pid: int) -> tuple[float, int, int]:
    """(resident MB, open file descriptors, threads) of process PID."""
    status = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":" in line
    )
    return (
        int(status["VmRSS"].split()[0]) / 1024,
        len(os.listdir(f"/proc/{pid}/fd")),
        int(status["Threads"]),
    )


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def _client(url: str) -> Client:
    from gradio_client import Client

    return Client(url, verbose=False)


def _upload(path: Path):
    from gradio_client import handle_file

    return handle_file(str(path))


class Soak:
    """The students, the sampler and the tally of one run."""

    def __init__(
        self, url: str, pid: int, cache: Path, clip: Path, requests: int, seed: int
    ) -> None:
        self.url, self.pid, self.cache, self.clip = url, pid, cache, clip
        self.requests = requests
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.done = 0
        self.outcomes: list[Outcome] = []
        self.samples: list[Sample] = []
        self.start = time.monotonic()
        self.finished = threading.Event()
        self.health: dict = {}  # the app's own counters once it has settled
        self.until = requests  # the request count at which the current phase ends
        self.baseline: Sample | None = None  # idle, after warm-up
        self.end: Sample | None = None  # idle, after the last request

    # -- bookkeeping -------------------------------------------------------------------------
    def _take(self) -> str | None:
        """The next scenario to run, or None once this phase's requests are spent."""
        with self.lock:
            if self.done >= self.until:
                return None
            kinds, weights = zip(*SCENARIOS.items())
            return self.rng.choices(kinds, weights)[0]

    def _record(self, kind: str, start: float, ok: bool, requests: int) -> None:
        with self.lock:
            self.done += requests
            self.outcomes.append(Outcome(kind, start - self.start, time.monotonic() - start, ok))

    def snapshot(self, client: Client) -> Sample:
        rss, fds, threads = _proc(self.pid)
        saved = client.predict(api_name="/health")["saved_mb"]
        return Sample(
            time.monotonic() - self.start,
            self.done,
            rss,
            fds,
            threads,
            _folder_mb(self.cache),
            saved,
        )

    def sample(self) -> None:
        client = _client(self.url)
        while not self.finished.wait(SAMPLE_EVERY_S):
            self.samples.append(self.snapshot(client))

    # -- one student ---------------------------------------------------------------------------
    def student(self, i: int) -> None:
        client = _client(self.url)
        while (kind := self._take()) is not None:
            start = time.monotonic()
            ok, requests = getattr(self, "_" + kind.replace(" ", "_").replace("-", "_"))(client, i)
            self._record(kind, start, ok, requests)

    def _ask(self, client: Client, question: str, history: list) -> str:
        return client.predict(question, "hint", history, api_name="/ask")

    def _recording(self, i: int) -> Path:
        """The clip at a slightly different volume: every student's recording is a new file
        for Gradio's cache (the same bytes would be stored once)."""
        samples, rate = soundfile.read(self.clip, dtype="float32")
        path = Path(tempfile.gettempdir()) / f"soak-recording-{os.getpid()}-{i}.wav"
        soundfile.write(path, samples * self.rng.uniform(0.8, 1.0), rate)
        return path

    def _voice_and_follow_up(self, client: Client, i: int) -> tuple[bool, int]:
        recording = self._recording(i)
        try:
            question = client.predict(_upload(recording), "en", api_name="/transcribe")
        finally:
            recording.unlink()
        answer = self._ask(client, question, [])
        history = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return bool(self._ask(client, "Can you say that more simply?", history)), 3

    def _typed_question(self, client: Client, i: int) -> tuple[bool, int]:
        return bool(
            self._ask(client, f"Student {i}: what is {self.rng.randint(2, 99)} squared?", [])
        ), 1

    def _stop_mid_answer(self, client: Client, i: int) -> tuple[bool, int]:
        job = client.submit(f"Student {i}: explain long division.", "hint", [], api_name="/ask")
        for _ in job:  # the first update: the answer is streaming
            break
        job.cancel()
        return True, 1

    def _vanish_mid_answer(self, client: Client, i: int) -> tuple[bool, int]:
        import httpx

        with httpx.Client(base_url=self.url, timeout=SETTLE_TIMEOUT_S) as http:
            event = http.post(
                "gradio_api/call/ask", json={"data": [f"Student {i}: what is a prime?", "hint", []]}
            ).json()["event_id"]
            with http.stream("GET", f"gradio_api/call/ask/{event}") as stream:
                for line in stream.iter_lines():
                    if line == "event: generating":
                        break  # the socket closes mid-answer
        return True, 1

    def _bad_input(self, client: Client, i: int) -> tuple[bool, int]:
        from gradio_client.exceptions import AppError

        case = self.rng.randrange(3)
        try:
            if case == 0:
                self._ask(client, "What next?", self.rng.choice(BAD_HISTORIES))
            elif case == 1:
                client.predict("What next?", "../../etc/passwd", [], api_name="/ask")
            else:
                broken = Path(tempfile.gettempdir()) / f"soak-broken-{os.getpid()}-{i}.wav"
                broken.write_bytes(b"RIFF" + os.urandom(2000))
                try:
                    client.predict(_upload(broken), "en", api_name="/transcribe")
                finally:
                    broken.unlink()
        except AppError as e:
            return "Traceback" not in str(e) and "Something went wrong" not in str(e), 1
        return False, 1  # bad input must be refused

    # -- the run -------------------------------------------------------------------------------
    def run(self, students: int) -> None:
        """Warm-up, an idle baseline, the rest of the requests, an idle end."""
        sampler = threading.Thread(target=self.sample, daemon=True)
        sampler.start()
        self._phase(students, int(WARM_UP_FRACTION * self.requests))
        self.baseline = self._idle()
        self._phase(students, self.requests)
        self.end = self._idle(fds_at_most=self.baseline.fds)
        self.finished.set()
        sampler.join()

    def _phase(self, students: int, until: int) -> None:
        self.until = until
        threads = [threading.Thread(target=self.student, args=(i,)) for i in range(students)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _idle(self, fds_at_most: int | None = None) -> Sample:
        """A snapshot once the app reports no answer in flight and (given FDS_AT_MOST) closed
        connections are gone; the waits are hang guards, not pauses."""
        gc.collect()  # the students' clients close their connections
        client = _client(self.url)
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while (health := client.predict(api_name="/health"))["answering"] or health["waiting"]:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the app was still busy {SETTLE_TIMEOUT_S} s after the last request"
                )
            time.sleep(0.2)
        self.health = health
        deadline = time.monotonic() + FD_SETTLE_S
        while (
            fds_at_most is not None
            and _proc(self.pid)[1] > fds_at_most
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        return self.snapshot(client)


def summary(soak: Soak) -> dict:
    """Growth from the idle baseline after warm-up to the idle end, the disk bound, latencies."""
    warm, end = soak.baseline, soak.end
    after_warm = [s for s in soak.samples if s.t_s >= warm.t_s]
    by_kind = {kind: [o for o in soak.outcomes if o.kind == kind] for kind in SCENARIOS}
    return {
        "requests": soak.done,
        "minutes": end.t_s / 60,
        "rss_after_warm_up_mb": warm.rss_mb,
        "rss_end_mb": end.rss_mb,
        "rss_peak_mb": max(s.rss_mb for s in soak.samples),
        "rss_growth_after_warm_up": (end.rss_mb - warm.rss_mb) / warm.rss_mb,
        "fds_after_warm_up": warm.fds,
        "fds_end": end.fds,
        "threads_after_warm_up": warm.threads,
        "threads_end": end.threads,
        "saved_conversations_mb_after_warm_up": warm.saved_conversations_mb,
        "saved_conversations_mb_end": end.saved_conversations_mb,
        "upload_cache_peak_mb": max(s.upload_cache_mb for s in after_warm),
        "upload_cache_end_mb": end.upload_cache_mb,
        "failures": sum(not o.ok for o in soak.outcomes),
        "answers_ended": soak.health["answers_ended"],
        "latency_s": {
            kind: {
                "count": len(outcomes),
                "p50": statistics.median(o.latency_s for o in outcomes),
                "max": max(o.latency_s for o in outcomes),
            }
            for kind, outcomes in by_kind.items()
            if outcomes
        },
    }


def write_report(soak: Soak, result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / "soak.json") as tmp:
        tmp.write_text(
            json.dumps(
                {
                    "summary": result,
                    "samples": [asdict(s) for s in soak.samples],
                    "outcomes": [asdict(o) for o in soak.outcomes],
                },
                indent=1,
            )
        )
    minutes = [s.t_s / 60 for s in soak.samples]
    latency = sorted(
        (o.start_s / 60, o.latency_s) for o in soak.outcomes if o.kind == "typed question"
    )
    plot_lines(
        {
            "memory (MB)": {
                "resident": list(zip(minutes, [s.rss_mb for s in soak.samples])),
                "saved conversations": list(
                    zip(minutes, [s.saved_conversations_mb for s in soak.samples])
                ),
            },
            "open file descriptors / threads": {
                "fds": list(zip(minutes, [s.fds for s in soak.samples])),
                "threads": list(zip(minutes, [s.threads for s in soak.samples])),
            },
            "upload cache on disk (MB)": {
                "Gradio cache": list(zip(minutes, [s.upload_cache_mb for s in soak.samples]))
            },
            "typed question latency (s)": {"answer": latency},
        },
        out / "soak.png",
        title=f"Soak: {result['requests']} requests",
        xlabel="minutes",
        log_x=False,
    )
    with atomic_output(out / "soak.md") as tmp:
        tmp.write_text(markdown(result))


def markdown(r: dict) -> str:
    lines = [
        f"Soak: {r['requests']} requests in {r['minutes']:.1f} min; the app idle after "
        f"a warm-up of {WARM_UP_FRACTION:.0%} of them, and idle at the end.",
        "",
        "| measure | after warm-up | end | |",
        "|---|---|---|---|",
        f"| resident memory (MB) | {r['rss_after_warm_up_mb']:.0f} | {r['rss_end_mb']:.0f} "
        f"| growth {100 * r['rss_growth_after_warm_up']:+.1f} % "
        f"(peak {r['rss_peak_mb']:.0f}) |",
        f"| open file descriptors | {r['fds_after_warm_up']} | {r['fds_end']} | |",
        f"| threads | {r['threads_after_warm_up']} | {r['threads_end']} | |",
        f"| saved conversations (MB, bound {SAVED_CONVERSATIONS_MB}) "
        f"| {r['saved_conversations_mb_after_warm_up']:.1f} "
        f"| {r['saved_conversations_mb_end']:.1f} | |",
        f"| Gradio upload cache (MB) | | {r['upload_cache_end_mb']:.1f} "
        f"| peak {r['upload_cache_peak_mb']:.1f} |",
        "",
        f"Requests that failed (no answer, or bad input not refused clearly): {r['failures']}.",
        f"Answers by how they ended: {r['answers_ended']}.",
        "",
        "| scenario | count | p50 latency (s) | max (s) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {kind} | {v['count']} | {v['p50']:.2f} | {v['max']:.2f} |"
        for kind, v in r["latency_s"].items()
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--students", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/soak"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "gradio"
        prompts = greedy_prompts(Path(tmp) / "prompts", ANSWER_TOKENS)
        with running_app(
            model=standin_llm(),
            whisper=standin_whisper(),
            prompts=prompts,
            upload_max_age_minutes=UPLOAD_MAX_AGE_MINUTES,
            cache_mb=SAVED_CONVERSATIONS_MB,
            env={"GRADIO_TEMP_DIR": str(cache)},
            log=Path(tmp) / "app.log",
        ) as app:
            soak = Soak(app.url, app.pid, cache, clip_near(5.0)[0], args.requests, args.seed)
            soak.run(args.students)
    result = summary(soak)
    write_report(soak, result, args.out)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
