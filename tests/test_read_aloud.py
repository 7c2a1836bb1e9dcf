"""The page's read-aloud text (tutor/read_aloud.js, run under Node): Markdown and LaTeX made
speakable, code skipped, sentences cut where a speaker pauses."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from bench.harness import ROOT

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(not NODE, reason="needs Node.js (make test installs npm)")


def _run(function: str, *args) -> object:
    script = (
        f"const m = require({json.dumps(str(ROOT / 'tutor' / 'read_aloud.js'))});"
        f"console.log(JSON.stringify(m.{function}(...{json.dumps(args)})));"
    )
    return json.loads(
        subprocess.run([NODE, "-e", script], capture_output=True, text=True, check=True).stdout
    )


@pytest.mark.parametrize(
    "markdown, words",
    [
        (
            r"First, subtract 5: \(3x = 15\). Then divide: $$x = \frac{15}{3} = 5$$",
            "First, subtract 5: 3x equals 15. Then divide: x equals 15 over 3 equals 5",
        ),
        (
            r"The area is \(\pi r^2\) and \(x^3 - 2x \le 4\).",
            "The area is pi r squared and x cubed minus 2x is less than or equal to 4.",
        ),
        (r"$$\int_0^1 x\,dx = \frac{1}{2}$$", "the integral from 0 to 1 of x dx equals 1 over 2"),
        (
            r"\(\sqrt{x^2 + y^2}\) and \(a_{n+1} = 2 a_n\)",
            "the square root of x squared plus y squared and a sub n plus 1 equals 2 a sub n",
        ),
        (r"\(\sin x \times \cos x\), \(e^{i\pi}\)", "sine x times cosine x, e to the power i pi"),
        ("The book costs $5 and the pen $3.", "The book costs $5 and the pen $3."),
        (
            '<span class="mode-tag">Hints</span>\n\n**Think** about *both* sides.',
            "Think about both sides.",
        ),
        (
            "## Steps\n1. Write `f(x)`.\n- Use [the rule](https://example.org).\n> Note it.",
            "Steps\nWrite f(x).\nUse the rule.\nNote it.",
        ),
        ("Run this:\n```python\nprint(x ** 2)\n```\nDone!", "Run this:\n\nDone!"),
    ],
)
def test_markdown_and_latex_become_words(markdown, words):
    assert _run("speakable", markdown) == words


def test_sentences_end_at_a_stop_followed_by_a_space_or_at_a_line_end():
    result = _run("sentences", "One. Two! Is it 3.5? Three\nFour, e.g. the rest")
    assert result["done"] == ["One.", " Two!", " Is it 3.5?", " Three\n", "Four, e.g."]
    assert "One. Two! Is it 3.5? Three\nFour, e.g. the rest"[result["rest"] :] == " the rest"
