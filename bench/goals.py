"""A goal of the benchmarks: a measured value (a ratio, seconds, GB) at most or at least a bound."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bound:
    """VALUE ≤ LIMIT (at_most) or VALUE ≥ LIMIT (at_least); printed as the goal reads."""

    sign: str  # "≤" or "≥"
    limit: float

    def __str__(self) -> str:
        return f"{self.sign} {self.limit:g}"

    def met(self, value: float) -> bool:
        return value <= self.limit if self.sign == "≤" else value >= self.limit


def at_most(limit: float) -> Bound:
    return Bound("≤", limit)


def at_least(limit: float) -> Bound:
    return Bound("≥", limit)
