"""Training data: read sources, standardize to chat messages, clean, mix, split, report.

Every row that is dropped is counted under a reason, per source; nothing is dropped silently.
Reasons: unparseable, missing_fields, unknown_role, empty_turn, bad_role_order,
not_ending_on_assistant, below_score, held_out, duplicate, near_duplicate, over_token_budget.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from train.config import DataConfig, Source, resolve_path

Message = dict[str, str]
ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
DEFAULT_CHATDOCTOR_SYSTEM = (
    "You are a doctor. Answer the patient's medical question based on their description."
)

log = logging.getLogger(__name__)


@dataclass
class Example:
    messages: list[Message]
    source: str


@dataclass
class SourceReport:
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    token_lengths: list[int] = field(default_factory=list)


class Rejected(ValueError):
    """A row that cannot be used; its message is the reason."""


def read_rows(source: Source) -> Iterable[dict | None]:
    """Raw rows of SOURCE; None stands for a row that could not be parsed."""
    if source.hub is not None:
        import datasets

        yield from datasets.load_dataset(source.hub, split=source.split)
        return
    path = resolve_path(source.path)
    if path.suffix == ".parquet":
        import datasets

        yield from datasets.load_dataset("parquet", data_files=str(path), split="train")
    elif path.suffix == ".jsonl":
        # Line by line, so that one broken line costs one row, not the file.
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        yield None
    else:
        data = json.loads(path.read_text(encoding="utf-8"))
        yield from (data if isinstance(data, list) else data.get("data", []))


def from_sharegpt(row: dict) -> list[Message]:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise Rejected("missing_fields")
    messages = []
    for turn in turns:
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise Rejected("missing_fields")
        role = ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise Rejected("unknown_role")
        messages.append({"role": role, "content": turn["value"]})
    return messages


def from_chatdoctor(row: dict, system_prompt: str | None) -> list[Message]:
    if not all(isinstance(row.get(k), str) for k in ("input", "output")):
        raise Rejected("missing_fields")
    system = system_prompt or row.get("instruction") or DEFAULT_CHATDOCTOR_SYSTEM
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": row["input"]},
        {"role": "assistant", "content": row["output"]},
    ]


def check_messages(messages: list[Message]) -> None:
    """Optional system turn, then user/assistant alternating, ending on the assistant."""
    if any(not isinstance(m["content"], str) or not m["content"].strip() for m in messages):
        raise Rejected("empty_turn")
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    expected = ["user", "assistant"] * (len(turns) // 2 + 1)
    if not turns or [m["role"] for m in turns] != expected[: len(turns)]:
        raise Rejected("bad_role_order")
    if turns[-1]["role"] != "assistant":
        raise Rejected("not_ending_on_assistant")


def standardize(row: dict | None, source: Source) -> list[Message]:
    """Row → checked role/content messages, or Rejected(reason)."""
    if not isinstance(row, dict):
        raise Rejected("unparseable")
    if source.format == "sharegpt":
        messages = from_sharegpt(row)
    else:
        messages = from_chatdoctor(row, source.system_prompt)
    check_messages(messages)
    if source.min_score is not None:
        score = row.get("score")
        if not isinstance(score, (int, float)) or score < source.min_score:
            raise Rejected("below_score")
    return messages


def fingerprint(messages: list[Message]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()


def read_excluded(path: str | None) -> set[str]:
    """Fingerprints of the conversations in an exclusion file (a held-out set)."""
    if path is None:
        return set()
    lines = resolve_path(path).read_text(encoding="utf-8").splitlines()
    return {fingerprint(json.loads(line)["messages"]) for line in lines if line.strip()}


def _normalized(messages: list[Message]) -> str:
    text = " ".join(f"{m['role']}: {m['content']}" for m in messages).lower()
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text)).strip()


class Deduplicator:
    """Exact duplicates by hash; near duplicates by MinHash LSH over word 3-grams."""

    def __init__(self, threshold: float, num_perm: int = 64) -> None:
        from datasketch import MinHashLSH  # here: it brings scipy, which --help need not wait for

        self.seen: set[str] = set()
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.num_perm = num_perm

    def check(self, messages: list[Message]) -> None:
        exact = fingerprint(messages)
        if exact in self.seen:
            raise Rejected("duplicate")
        words = _normalized(messages).split()
        from datasketch import MinHash

        minhash = MinHash(num_perm=self.num_perm, seed=1)
        minhash.update_batch(
            " ".join(words[i : i + 3]).encode() for i in range(max(1, len(words) - 2))
        )
        if self.lsh.query(minhash):
            raise Rejected("near_duplicate")
        self.seen.add(exact)
        self.lsh.insert(exact, minhash)


def clean(
    cfg: DataConfig, count_tokens: Callable[[list[Message]], int], max_tokens: int
) -> tuple[dict[str, list[Example]], dict[str, SourceReport]]:
    """Read, standardize and filter every source; examples and a report per source."""
    dedup = Deduplicator(cfg.near_duplicate_threshold) if cfg.dedup else None
    excluded = read_excluded(cfg.exclude)
    kept: dict[str, list[Example]] = {}
    reports: dict[str, SourceReport] = {}
    for source in cfg.sources:
        report = reports[source.name] = SourceReport()
        examples = kept[source.name] = []
        for row in read_rows(source):
            report.read += 1
            try:
                messages = standardize(row, source)
                if excluded and fingerprint(messages) in excluded:
                    raise Rejected("held_out")
                if dedup is not None:
                    dedup.check(messages)
                n_tokens = count_tokens(messages)
                if n_tokens > max_tokens:
                    raise Rejected("over_token_budget")
            except Rejected as e:
                report.dropped[str(e)] += 1
                continue
            report.token_lengths.append(n_tokens)
            examples.append(Example(messages, source.name))
        report.kept = len(examples)
    return kept, reports


def mix(cfg: DataConfig, kept: dict[str, list[Example]]) -> list[Example]:
    """Apply each source's cap, then its ratio of the mix (the largest mix the ratios allow)."""
    rng = random.Random(cfg.seed)
    pools = {}
    for source in cfg.sources:
        pool = list(kept[source.name])
        rng.shuffle(pool)
        pools[source.name] = pool[: source.max_rows] if source.max_rows else pool
    with_ratio = [s for s in cfg.sources if s.ratio]
    if with_ratio:
        total = min(len(pools[s.name]) / s.ratio for s in with_ratio)
        for s in with_ratio:
            pools[s.name] = pools[s.name][: int(total * s.ratio)]
    mixed = [example for pool in pools.values() for example in pool]
    rng.shuffle(mixed)
    return mixed


def split(examples: list[Example], val_fraction: float) -> tuple[list[Example], list[Example]]:
    """Deterministic train/validation split of already shuffled examples (≥ 1 validation row)."""
    n_val = max(1, round(len(examples) * val_fraction))
    if len(examples) < 2:
        raise ValueError(f"only {len(examples)} usable rows: too few to train and validate")
    return examples[n_val:], examples[:n_val]


def data_report(reports: dict[str, SourceReport], train: list[Example], val: list[Example]) -> dict:
    """What went in, per source: rows read, kept by cleaning, used by the mix, dropped and why;
    a warning for each source that contributes nothing (also logged)."""
    report = {
        "sources": {
            name: {
                "read": r.read,
                "kept": r.kept,
                "dropped": dict(r.dropped),
                "max_tokens": max(r.token_lengths, default=0),
            }
            for name, r in reports.items()
        },
        "train": len(train),
        "validation": len(val),
        "train_by_source": dict(Counter(e.source for e in train)),
    }
    used = Counter(e.source for e in train + val)
    report["warnings"] = []
    for name, entry in report["sources"].items():  # what the caps and ratios left out
        entry["used"] = used[name]
        entry["left_out_by_mix"] = entry["kept"] - used[name]
        if not used[name]:  # say so: a source that vanishes silently skews the mix
            why = ", ".join(f"{n} {reason}" for reason, n in entry["dropped"].items()) or (
                "left out by the mix" if entry["kept"] else "no rows"
            )
            warning = (
                f"source {name!r} contributes nothing: {entry['read']} rows read, none used ({why})"
            )
            report["warnings"].append(warning)
            log.warning(warning)
    return report


def write_report(report: dict, reports: dict[str, SourceReport], out_dir: Path) -> None:
    """data_report.json and token_lengths.png (REPORTS' token lengths) in OUT_DIR."""
    from train.plots import plot_token_lengths
    from tutor.files import atomic_output

    with atomic_output(out_dir / "data_report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    plot_token_lengths(
        {
            f"{name} ({entry['used']} used of {entry['kept']} cleaned)": reports[name].token_lengths
            for name, entry in report["sources"].items()
        },
        out_dir / "token_lengths.png",
    )
