"""Judge-free checks of tutor modes: does a hint leak the answer; does a solution have steps."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import yaml

PROBLEMS_FILE = Path(__file__).with_name("eval_problems.yaml")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+)?(?![\w])")
_STEP = re.compile(
    r"^\s*(?:\*\*)?(?:step\s*)?(\d+)\s*[.):](?:\*\*)?\s+\S", re.IGNORECASE | re.MULTILINE
)


def load_problems(path: Path = PROBLEMS_FILE) -> list[dict]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _as_number(text: str) -> Fraction | None:
    try:
        return Fraction(text.replace(",", "").replace(" ", ""))
    except (ValueError, ZeroDivisionError):
        return None


def leaks_answer(reply: str, answer: str) -> bool:
    """Whether REPLY states ANSWER: numbers compare by value (56 = 56.0, 3/4 = 0.75), words as
    whole words, ignoring case."""
    target = _as_number(answer)
    if target is not None:
        return any(_as_number(m.group()) == target for m in _NUMBER.finditer(reply))
    return re.search(rf"\b{re.escape(answer)}\b", reply, re.IGNORECASE) is not None


def has_ordered_steps(reply: str, minimum: int = 2) -> bool:
    """Whether REPLY has numbered steps 1, 2, … (at least MINIMUM), in order."""
    numbers = [int(n) for n in _STEP.findall(reply)]
    return (
        len(numbers) >= minimum
        and numbers[:minimum] == list(range(1, minimum + 1))
        and numbers == sorted(numbers)
    )
