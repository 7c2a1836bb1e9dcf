"""Where the shared real-world assets live: one setting for tests, benchmarks and configs.

`TUTOR_ASSETS` overrides the default `../shared/assets` (relative to the project root).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def assets_dir() -> Path:
    """The shared assets folder (it may not exist: callers skip or explain)."""
    return Path(os.environ.get("TUTOR_ASSETS", PROJECT_ROOT.parent / "shared" / "assets"))
