"""The hint-leak and ordered-steps checks on hand-written replies."""

from __future__ import annotations

import pytest

from train.mode_checks import has_ordered_steps, leaks_answer, load_problems


@pytest.mark.parametrize(
    "reply, answer, leaked",
    [
        ("The answer is 56.", "56", True),
        ("So 7 x 8 = 56.0 exactly", "56", True),
        ("Try 7 x 4 first, then double it. What do you get?", "56", False),
        ("Think about 560 divided by 10.", "56", False),  # 560 and 10 are not 56
        ("That gives 3/4 of the whole.", "3/4", True),
        ("As a decimal that is 0.75.", "3/4", True),
        ("Divide top and bottom by 6.", "3/4", False),
        ("Its symbol is Na, from natrium.", "Na", True),
        ("Look for the element's Latin name, natrium.", "Na", False),
        ("Plants absorb Carbon Dioxide from the air.", "carbon dioxide", True),
        ("Which gas do we breathe out?", "carbon dioxide", False),
        ("1,024 is the result", "1024", True),
    ],
)
def test_hint_leak(reply, answer, leaked):
    assert leaks_answer(reply, answer) is leaked


@pytest.mark.parametrize(
    "reply, ordered",
    [
        ("1. Subtract 5: 3x = 15.\n2. Divide by 3: x = 5.\nAnswer: 5", True),
        ("Step 1: Subtract 5.\nStep 2: Divide by 3.\nStep 3: Check.", True),
        ("**1.** Expand.\n**2.** Collect terms.", True),
        ("1) Expand\n2) Simplify", True),
        ("Subtract 5 from both sides, then divide by 3.", False),
        ("1. Only one step here.", False),
        ("2. Divide by 3.\n1. Subtract 5.", False),
        ("1. First.\n3. Third.\n2. Second.", False),
        ("The year 1990. was good\nIn 2000. too", False),
    ],
)
def test_ordered_steps(reply, ordered):
    assert has_ordered_steps(reply) is ordered


def test_shipped_problems_are_well_formed():
    problems = load_problems()
    assert len(problems) >= 20
    assert all(p["question"].strip() and str(p["answer"]).strip() for p in problems)
