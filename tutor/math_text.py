"""Chat text → the same text with single-dollar maths as `\\(…\\)`, so that money stays text.

The page renders `$$…$$`, `\\(…\\)` and `\\[…\\]` as maths, never a lone `$`: "$5 and $3" is a
price, not the formula "5 and 3". A `$…$` pair becomes `\\(…\\)` only where Pandoc's
`tex_math_dollars` rule says it is maths: the opening `$` has a non-space on its right, the
closing `$` a non-space on its left and no digit after it. Prices fail it ("$5 and $3": the
second `$` has a space on its left; "$20 to $30": a digit follows it). Code (fenced blocks and
`inline spans`) is left alone.
"""

from __future__ import annotations

import re

# `$` not escaped and not part of `$$`; then a non-space; the shortest run without a
# `$` or a line break; a non-space before the closing `$`, with no digit or `$` after it.
SINGLE_DOLLAR_MATH = re.compile(r"(?<![\\$])\$(?![\s$])([^$\n]*?[^\s\\$])\$(?![\d$])")
# Fenced code blocks (``` or ~~~, to the closing fence or the end) and inline code spans.
CODE = re.compile(r"(^|\n)(```|~~~)[^\n]*\n.*?(\n\2[^\n]*(?=\n|$)|$)|(`+)[^`]*?\4", re.DOTALL)


def dollars_to_parens(text: str) -> str:
    """TEXT with each single-dollar formula written `\\(…\\)`; code and prices untouched."""
    out, start = [], 0
    for code in CODE.finditer(text):
        out.append(_convert(text[start : code.start()]))
        out.append(code.group(0))
        start = code.end()
    out.append(_convert(text[start:]))
    return "".join(out)


def _convert(prose: str) -> str:
    return SINGLE_DOLLAR_MATH.sub(lambda m: f"\\({m.group(1)}\\)", prose)
