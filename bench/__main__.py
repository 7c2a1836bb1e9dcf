"""Run every benchmark side by side and write the report.

    python -m bench [--out runs/bench] [--repeats 5] [--threads 2]
                    [--parts base concurrency remote hands-free]

Models of the real architectures with synthetic weights are built on first use and cached
(`TUTOR_CACHE`/bench), and so is llama.cpp's `llama-server` (the concurrency anchor). Figures
are medians of repeated runs; compared things run alternately in one process (or against one
app process), so that they see the same machine state; the memory bandwidth is measured in
the same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.harness import running_app
from bench import (
    app,
    concurrency,
    hardware,
    llm,
    models,
    remote,
    report,
    speech,
    voice,
    voice_server,
)
from tutor.defaults import DEFAULT_PARALLEL
from tutor.live import END_OF_QUESTION_S

PARTS = ["base", "concurrency", "remote", "hands-free"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument(
        "--parallel",
        type=int,
        default=DEFAULT_PARALLEL,
        help="the batched app's --parallel in the concurrency table",
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=PARTS,
    )
    parser.add_argument(
        "--voice-repeats",
        type=int,
        default=3,
        help="spoken follow-ups per path and load in the hands-free part (bench.voice_server, "
        "bench.voice)",
    )
    parser.add_argument(
        "--remote-rounds",
        type=int,
        default=3,
        help="rounds of the remote part (embedded app, app on llama-server, "
        "llama-server alone, taking turns)",
    )
    parser.add_argument(
        "--students",
        type=int,
        nargs="+",
        default=list(concurrency.STUDENT_COUNTS),
        help="class sizes in the concurrency table",
    )
    parser.add_argument(
        "--one-at-a-time-max",
        type=int,
        default=max(concurrency.STUDENT_COUNTS),
        help="largest class sent to --parallel 1 (the slowest sweep)",
    )
    parser.add_argument(
        "--no-half-parallel", action="store_true", help="skip the --parallel P/2 rows"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    print("building / loading the benchmark models …", flush=True)
    llama, whisper_ckpt = models.llama_1b_q4(), models.whisper_base()
    results: dict = {"threads": args.threads, "repeats": args.repeats}
    print("memory bandwidth …", flush=True)
    results["ceiling"] = hardware.ceiling(llama, args.threads)
    if "base" in args.parts:
        base(results, llama, whisper_ckpt, args)
    if "concurrency" in args.parts:
        print("a class at once: the app (batched, one at a time) and llama-server …", flush=True)
        results["concurrency"] = concurrency.run(
            llama,
            whisper_ckpt,
            args.threads,
            args.parallel,
            speech.clip_near(5.0)[0],
            tuple(args.students),
            args.one_at_a_time_max,
            not args.no_half_parallel,
        )
        results["concurrency_goals"] = concurrency.goals(results["concurrency"])
    if "remote" in args.parts:
        print("scaling out: the app on llama-server beside the embedded engine …", flush=True)
        results["remote"] = remote.run(
            llama, whisper_ckpt, args.threads, args.remote_rounds, args.repeats, args.new_tokens
        )
    if "hands-free" in args.parts:
        print("a spoken follow-up, hands-free and one-shot, on the server …", flush=True)
        results["hands_free_server"] = voice_server.run(
            args.voice_repeats, 4, args.threads, END_OF_QUESTION_S
        )
        print("a spoken follow-up, hands-free and one-shot, through the page …", flush=True)
        results["hands_free"] = voice.run(
            args.voice_repeats, 4, args.threads, END_OF_QUESTION_S, args.out / "voice-app.log"
        )
    report.write(results, args.out)
    print(report.markdown(results))
    print(f"wrote {args.out}/report.md, report.json and charts")
    return 0


def base(results: dict, llama: Path, whisper_ckpt: Path, args: argparse.Namespace) -> None:
    """One student: raw vs engine vs app, follow-ups, Whisper, voice to first token, memory."""
    from tutor.llm import TutorLLM

    print("language model: raw vs engine …", flush=True)
    engine = TutorLLM(llama, n_ctx=4096, n_threads=args.threads)
    results["llm"] = llm.generation(engine, args.repeats, args.new_tokens)
    print("follow-up turns …", flush=True)
    results["follow_up"] = llm.follow_up(engine, args.repeats, 32)
    print("speech …", flush=True)
    results["speech"] = speech.transcription(whisper_ckpt, args.repeats, args.threads)
    print("the app through gradio_client …", flush=True)
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_app(
            model=llama,
            whisper=whisper_ckpt,
            threads=args.threads,
            prompts=app.greedy_prompts(Path(tmp) / "prompts", args.new_tokens),
            log=Path(tmp) / "app.log",
        ) as served,
    ):
        results["app"] = app.generation(
            served.url, lambda text: len(engine.tokenize(text)), args.repeats
        )
        clip, _ = speech.clip_near(5.0)
        results["voice"] = app.voice_to_first_token(served.url, clip, args.repeats)
        results["memory_gb"] = app.peak_rss_bytes(served.pid) / 1e9
    ceiling = results["ceiling"]["ceiling_tokens_per_s"]
    results["app_vs_raw_tokens_per_s"] = (
        results["app"]["tokens_per_s"] / results["llm"]["raw"]["tokens_per_s"]
    )
    results["app_bandwidth_fraction"] = results["app"]["tokens_per_s"] / ceiling
    results["raw_bandwidth_fraction"] = results["llm"]["raw"]["tokens_per_s"] / ceiling


if __name__ == "__main__":
    sys.exit(main())
