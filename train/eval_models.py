"""Models under evaluation: a GGUF through llama.cpp (what the app deploys) or an HF checkpoint.

Both answer the same questions: the loss on assistant tokens of a conversation, and a generated
reply with its time to first token and speed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from threading import Thread

import numpy as np
import torch

from train.encode import IGNORE, Render, assistant_spans, hf_render, mask_labels
from tutor.conversation import Message
from tutor.modes import Generation


@dataclass
class Reply:
    text: str
    n_tokens: int
    time_to_first_token_s: float
    tokens_per_s: float


def _nll(logits: np.ndarray, ids: list[int], labels: list[int]) -> tuple[float, int]:
    """Summed negative log-likelihood of the labelled next tokens, and their count."""
    targets = np.array(labels[1:])
    keep = targets != IGNORE
    if not keep.any():
        return 0.0, 0
    rows = logits[:-1][keep].astype(np.float64)
    log_norm = np.log(np.exp(rows - rows.max(1, keepdims=True)).sum(1)) + rows.max(1)
    return float((log_norm - rows[np.arange(len(rows)), targets[keep]]).sum()), int(keep.sum())


class GGUFModel:
    """A GGUF: the app's engine for replies, a second llama.cpp context for logits."""

    def __init__(self, name: str, path: Path, n_ctx: int = 2048, threads: int | None = None):
        import llama_cpp

        from tutor.llm import TutorLLM

        self.name = name
        self.engine = TutorLLM(path, n_ctx=n_ctx, n_threads=threads)
        # On the engine's llama.cpp thread, like every llama.cpp call (see tutor.threads).
        self.scorer = self.engine.thread.run(
            llama_cpp.Llama,
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=512,
            logits_all=True,
            n_threads=threads,
            verbose=False,
        )
        self.render: Render = self.engine.render

    def count_tokens(self, messages: list[Message]) -> int:
        return len(self.engine.tokenize(self.render(messages, False)))

    def assistant_nll(self, messages: list[Message]) -> tuple[float, int]:
        text, spans = assistant_spans(self.render, messages)
        ids = self.engine.tokenize(text)
        ranges, offset = [], 0
        for token in ids:  # llama.cpp gives bytes; spans are characters
            piece = len(self.engine.piece(token))
            ranges.append((offset, offset + piece))
            offset += piece
        byte_spans = [(len(text[:s].encode()), len(text[:e].encode())) for s, e in spans]
        labels = mask_labels(ids, ranges, byte_spans)
        return _nll(self.engine.thread.run(self._logits, ids), ids, labels)

    def _logits(self, ids: list[int]) -> np.ndarray:
        self.scorer.reset()
        self.scorer.eval(ids)
        return np.array(self.scorer.scores[: len(ids)])

    def reply(self, messages: list[Message], generation: Generation, seed: int) -> Reply:
        from tutor.llm import GenerationStats

        stats = GenerationStats()
        text = self.engine.answer(messages, generation, seed=seed, stats=stats)
        return Reply(text, stats.generated_tokens, stats.time_to_first_token_s, stats.tokens_per_s)


class HFModel:
    """A Hugging Face checkpoint, or a base model with a PEFT adapter (`adapter_config.json`)."""

    def __init__(self, name: str, path: Path, base: Path | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = name
        path = Path(path)
        if (path / "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM

            self.model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.render: Render = hf_render(self.tokenizer)

    def count_tokens(self, messages: list[Message]) -> int:
        prompt = self.render(messages, False)
        return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def assistant_nll(self, messages: list[Message]) -> tuple[float, int]:
        text, spans = assistant_spans(self.render, messages)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        labels = mask_labels(enc["input_ids"], enc["offset_mapping"], spans)
        with torch.no_grad():
            logits = self.model(torch.tensor([enc["input_ids"]])).logits[0].numpy()
        return _nll(logits, enc["input_ids"], labels)

    def reply(self, messages: list[Message], generation: Generation, seed: int) -> Reply:
        from transformers import TextIteratorStreamer

        prompt = self.tokenizer(
            self.render(messages, True), add_special_tokens=False, return_tensors="pt"
        )
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        torch.manual_seed(seed)
        kwargs = dict(
            **prompt,
            max_new_tokens=generation.max_tokens,
            streamer=streamer,
            do_sample=generation.temperature > 0,
            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        )
        if generation.temperature > 0:
            kwargs.update(
                temperature=generation.temperature, top_p=generation.top_p, top_k=generation.top_k
            )
        start = time.perf_counter()
        worker = Thread(target=lambda: self.model.generate(**kwargs), daemon=True)
        worker.start()
        pieces, first = [], None
        for piece in streamer:
            first = first or time.perf_counter() - start
            pieces.append(piece)
        worker.join()
        total = time.perf_counter() - start
        text = "".join(pieces)
        n = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        first = first or total
        return Reply(text, n, first, (n - 1) / (total - first) if total > first and n > 1 else 0.0)


def load_model(name: str, path: Path, n_ctx: int = 2048, threads: int | None = None):
    """GGUF file → GGUFModel; checkpoint or adapter folder → HFModel."""
    path = Path(path)
    if path.suffix == ".gguf":
        return GGUFModel(name, path, n_ctx, threads)
    return HFModel(name, path)
