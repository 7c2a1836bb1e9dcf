"""Single-dollar maths becomes \\(…\\) only where it cannot be money: real word problems and
real formulas."""

import pytest

from tutor.math_text import dollars_to_parens

WORD_PROBLEMS = [  # prices stay text, exactly as typed
    "The book costs $5 and the pen $3. How much in total?",
    "Sam earns $12.50 an hour and works 8 hours. Does he make more than $100?",
    "A house sold for $250,000 and then for $310,000. What is the percentage increase?",
    "Tickets are $8 for adults and $5 for children; 3 adults and 4 children pay how much?",
    "I have $ 20 and spend $ 7.",
    "Costs rose from $5 to $7 (a 40% rise), then fell by $2.",
    "Lunch costs $5-$10, or $5+$3 with a drink.",
]


@pytest.mark.parametrize("problem", WORD_PROBLEMS)
def test_prices_in_word_problems_stay_text(problem):
    assert dollars_to_parens(problem) == problem


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Solve $x^2 - 5x + 6 = 0$.", r"Solve \(x^2 - 5x + 6 = 0\)."),
        (r"so $\frac{a}{b} + c$ is the sum", r"so \(\frac{a}{b} + c\) is the sum"),
        (
            "Let $a$ and $b$ be the legs, then $c^2 = a^2 + b^2$.",
            r"Let \(a\) and \(b\) be the legs, then \(c^2 = a^2 + b^2\).",
        ),
        (
            r"The derivative of $x^2 \sin x$ is $2x \sin x + x^2 \cos x$.",
            r"The derivative of \(x^2 \sin x\) is \(2x \sin x + x^2 \cos x\).",
        ),
    ],
)
def test_formulas_between_single_dollars_become_inline_maths(text, expected):
    assert dollars_to_parens(text) == expected


def test_a_formula_and_a_price_in_one_sentence():
    assert (
        dollars_to_parens("If $n$ pens cost $3 each, the total is $3n$ dollars.")
        == r"If \(n\) pens cost $3 each, the total is \(3n\) dollars."
    )


@pytest.mark.parametrize(
    "text",
    [
        r"$$\int_0^1 x\,dx = \frac{1}{2}$$",
        r"\(x^2\) and \[E = mc^2\]",
        r"an escaped \$x$ is text",
    ],
)
def test_other_delimiters_and_escapes_are_left_as_they_are(text):
    assert dollars_to_parens(text) == text


def test_code_is_left_alone():
    text = "Run `echo $HOME$` then:\n```bash\nprintf '$x$'\n```\nand $y$ is maths."
    assert dollars_to_parens(text) == text.replace("$y$", r"\(y\)")
