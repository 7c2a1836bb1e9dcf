"""Where a benchmark's results go: its numbers as JSON and its table as Markdown, side by side in
one folder, each written atomically (a run cut short leaves the previous results whole)."""

from __future__ import annotations

import json
from pathlib import Path

from tutor.files import atomic_output


def save(folder: Path, stem: str, report: dict, table: str) -> None:
    """FOLDER/STEM.json (REPORT) and FOLDER/STEM.md (TABLE)."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_output(folder / f"{stem}.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    with atomic_output(folder / f"{stem}.md") as tmp:
        tmp.write_text(table)
