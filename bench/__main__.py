"""Run every benchmark side by side and write the report.

    python -m bench [--out runs/bench] [--repeats 5] [--threads 2]

Models of the real architectures with synthetic weights are built on first use and cached
(`TUTOR_CACHE`/bench). Figures are medians of repeated runs; compared things run alternately in
one process (or against one app process), so that they see the same machine state.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from app_process import running_app
from bench import app, hardware, llm, models, report, speech


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args(argv)

    print("building / loading the benchmark models …", flush=True)
    llama, whisper_ckpt = models.llama_1b_q4(), models.whisper_base()
    results: dict = {"threads": args.threads, "repeats": args.repeats}
    print("language model: raw vs engine …", flush=True)
    engine = llm.TutorLLM(llama, n_ctx=4096, n_threads=args.threads)
    results["llm"] = llm.generation(engine, args.repeats, args.new_tokens)
    print("follow-up turns …", flush=True)
    results["follow_up"] = llm.follow_up(engine, args.repeats, 32)
    counter = engine
    print("speech …", flush=True)
    results["speech"] = speech.transcription(whisper_ckpt, args.repeats, args.threads)
    print("memory bandwidth …", flush=True)
    results["ceiling"] = hardware.ceiling(llama, args.threads)
    print("the app through gradio_client …", flush=True)
    with tempfile.TemporaryDirectory() as tmp, running_app(
            "--model", str(llama), "--whisper", str(whisper_ckpt), "--threads", str(args.threads),
            "--prompts", str(app.greedy_prompts(Path(tmp) / "prompts", args.new_tokens)),
            log=Path(tmp) / "app.log") as served:
        results["app"] = app.generation(served.url, lambda text: len(counter.tokenize(text)),
                                        args.repeats)
        clip, _ = speech.clip_near(5.0)
        results["voice"] = app.voice_to_first_token(served.url, clip, args.repeats)
        results["memory_gb"] = app.peak_rss_bytes(served.pid) / 1e9
    results["app_vs_raw_tokens_per_s"] = (results["app"]["tokens_per_s"]
                                          / results["llm"]["raw"]["tokens_per_s"])
    results["app_bandwidth_fraction"] = (results["app"]["tokens_per_s"]
                                         / results["ceiling"]["ceiling_tokens_per_s"])
    results["raw_bandwidth_fraction"] = (results["llm"]["raw"]["tokens_per_s"]
                                         / results["ceiling"]["ceiling_tokens_per_s"])
    report.write(results, args.out)
    print(report.markdown(results))
    print(f"wrote {args.out}/report.md, report.json, generation.png, speech.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
