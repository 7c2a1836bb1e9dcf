"""The browser tests' marker: they need Debian's Chromium; the page itself is bench.browser.Page."""

from __future__ import annotations

import pytest

from bench.browser import BY, CHROMEDRIVER, CHROMIUM, Page

__all__ = ["BY", "Page", "needs_chromium"]

needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (make test installs them)",
)
