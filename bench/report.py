"""The benchmark report: a Markdown table against the goals, JSON, and a chart."""

from __future__ import annotations

import json
from pathlib import Path

from bench.concurrency import GOALS as CONCURRENCY_GOALS
from bench.goals import at_least, at_most
from bench.remote import markdown as remote_markdown
from bench.voice import markdown as voice_markdown
from bench.voice_server import markdown as voice_server_markdown
from train.plots import plot_bars, plot_lines
from tutor.files import atomic_output

# (label, value path, goal)
GOALS = [
    ("engine / raw generation tokens/s", "llm.engine_vs_raw_tokens_per_s", at_least(0.97)),
    ("app / raw generation tokens/s", "app_vs_raw_tokens_per_s", at_least(0.93)),
    ("3rd-turn first token, cached / fresh", "follow_up.cached_vs_fresh", at_most(0.2)),
    (
        "3rd-turn first token, other student between / fresh",
        "follow_up.interleaved_vs_fresh",
        at_most(0.2),
    ),
    ("Whisper base, ~5 s clip, tutor transcriber (s)", "speech.tutor int8", at_most(0.45)),
    ("voice → first token, first question (s)", "voice.first_question_s", at_most(2.5)),
    ("voice → first token, follow-up (s)", "voice.follow_up_s", at_most(1.0)),
    ("app peak RSS (GB)", "memory_gb", at_most(2.0)),
    ("app tokens/s ÷ bandwidth ceiling", "app_bandwidth_fraction", at_least(0.8)),
]


def _get(results: dict, path: str):
    node = results
    for key in path.split("."):
        node = node[key]
    return node


def markdown(results: dict) -> str:
    ceiling = results["ceiling"]
    lines = [
        f"Memory read bandwidth in this run: {ceiling['read_bandwidth_gb_s']:.1f} GB/s "
        f"({results['threads']} threads); ceiling {ceiling['ceiling_tokens_per_s']:.1f} "
        "tokens/s for one sequence.",
        "",
    ]
    if "llm" in results:
        lines += _base_markdown(results)
    if "concurrency" in results:
        lines += _concurrency_markdown(results)
    if "remote" in results:
        lines += ["", *remote_markdown(results["remote"])]
    if "hands_free_server" in results:
        lines += [
            "",
            "Hands-free on the server (bench.voice_server):",
            "",
            voice_server_markdown(results["hands_free_server"]),
        ]
    if "hands_free" in results:
        lines += [
            "",
            "Hands-free through the page (bench.voice):",
            "",
            voice_markdown(results["hands_free"]),
        ]
    return "\n".join(lines) + "\n"


def _base_markdown(results: dict) -> list[str]:
    llm, speech = results["llm"], results["speech"]
    lines = [
        "| measurement | raw llama-cpp-python | tutor engine | app (gradio_client) |",
        "|---|---|---|---|",
        f"| generation tokens/s | {llm['raw']['tokens_per_s']:.1f} | "
        f"{llm['engine']['tokens_per_s']:.1f} | {results['app']['tokens_per_s']:.1f} |",
        f"| same, with repeat_penalty 1.1 | | "
        f"{llm['engine, repeat_penalty 1.1']['tokens_per_s']:.1f} | |",
        f"| fraction of the bandwidth ceiling ({results['ceiling']['ceiling_tokens_per_s']:.0f} "
        f"tokens/s) | {results['raw_bandwidth_fraction']:.2f} | "
        f"{llm['engine']['tokens_per_s'] / results['ceiling']['ceiling_tokens_per_s']:.2f} | "
        f"{results['app_bandwidth_fraction']:.2f} |",
        f"| first token, fresh {llm['prompt_tokens']}-token prompt (s) | "
        f"{llm['raw']['ttft_s']:.2f} | {llm['engine']['ttft_s']:.2f} | "
        f"{results['app']['ttft_s']:.2f} (mode prompt cached) |",
        "",
        "| measurement | openai-whisper fp32 | tutor int8 | ratio |",
        "|---|---|---|---|",
        f"| {speech['clip']} ({speech['clip_seconds']:.1f} s, {speech['decoded_tokens']} tokens) "
        f"| {speech['openai-whisper fp32']:.2f} s | {speech['tutor int8']:.2f} s | "
        f"{speech['tutor_vs_shipped']:.2f} |",
        "",
        "| goal | measured | target | met |",
        "|---|---|---|---|",
    ]
    for label, path, goal in GOALS:
        value = _get(results, path)
        lines.append(f"| {label} | {value:.3f} | {goal} | {'yes' if goal.met(value) else 'NO'} |")
    return lines + [""]


def _concurrency_markdown(results: dict) -> list[str]:
    c = results["concurrency"]
    lines = [
        f"A class at once ({c['mode']} mode, {c['answer_tokens']}-token answers, a question "
        "and a follow-up each, all starting together; small classes repeat in rounds, the "
        "servers taking turns, until each has ≥ 8 first tokens):",
        "",
        "| students | server | rounds | aggregate tokens/s | per-student tokens/s "
        "| p50 first token (s) | p95 first token (s) | slowest student (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(c["rows"], key=lambda r: (r["students"], r["server"])):
        if "error" in r:
            lines.append(f"| {r['students']} | {r['server']} | | failed: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['students']} | {r['server']} | {r['rounds']} | "
            f"{r['aggregate_tokens_per_s']:.1f} | "
            f"{r['per_student_tokens_per_s']:.1f} | {r['p50_first_token_s']:.2f} | "
            f"{r['p95_first_token_s']:.2f} | {r['slowest_student_s']:.1f} |"
        )
    stall = c["transcription_stall"]
    lines += [
        "",
        f"A transcription during an answer took {stall['transcription_s']:.2f} s; the "
        f"stream's longest pause meanwhile was {stall['longest_stall_s']:.2f} s.",
        "",
        "| goal | measured | target | met |",
        "|---|---|---|---|",
    ]
    for key, label, goal in CONCURRENCY_GOALS:
        value = results["concurrency_goals"][key]
        met = "not measured" if value != value else "yes" if goal.met(value) else "NO"
        lines.append(f"| {label} | {value:.3f} | {goal} | {met} |")
    return lines


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / "report.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    with atomic_output(out / "report.md") as tmp:
        tmp.write_text(markdown(results))
    if "llm" in results:
        _base_charts(results, out)
    if "concurrency" in results:
        series: dict[str, dict[str, list[tuple[float, float]]]] = {
            "aggregate tokens/s": {},
            "p95 first token (s)": {},
        }
        for r in (r for r in results["concurrency"]["rows"] if "error" not in r):
            series["aggregate tokens/s"].setdefault(r["server"], []).append(
                (r["students"], r["aggregate_tokens_per_s"])
            )
            series["p95 first token (s)"].setdefault(r["server"], []).append(
                (r["students"], r["p95_first_token_s"])
            )
        plot_lines(
            series,
            out / "concurrency.png",
            xlabel="students at once",
            title=f"A class at once: Llama-3.2-1B shape, Q4_K_M, {results['threads']} "
            f"threads, {results['ceiling']['read_bandwidth_gb_s']:.0f} GB/s",
        )


def _base_charts(results: dict, out: Path) -> None:
    zero = {"std": 0.0}
    llm = results["llm"]
    plot_bars(
        {
            name: {"generation tokens/s": {"mean": value, **zero}}
            for name, value in [
                ("raw llama-cpp-python", llm["raw"]["tokens_per_s"]),
                ("tutor engine", llm["engine"]["tokens_per_s"]),
                ("app", results["app"]["tokens_per_s"]),
                ("bandwidth ceiling", results["ceiling"]["ceiling_tokens_per_s"]),
            ]
        },
        out / "generation.png",
        title="Llama-3.2-1B shape, Q4_K_M, 2 threads (medians)",
        ylabel="tokens/s",
    )
    plot_bars(
        {
            name: {"seconds": {"mean": value, **zero}}
            for name, value in [
                ("openai-whisper fp32", results["speech"]["openai-whisper fp32"]),
                ("tutor int8", results["speech"]["tutor int8"]),
            ]
        },
        out / "speech.png",
        title="Whisper base shape, ~5 s clip, 30 tokens (medians)",
        ylabel="seconds",
    )
