"""Tutor modes: one YAML file per mode in `prompts/`, validated at start-up.

Adding a mode is adding a file: `prompts/NAME.yaml` with a title, a description, the system
prompt and the generation settings. A broken file stops start-up with a message naming the file
and the field, instead of failing on the first student's question.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tutor.defaults import PROMPTS_DIR
from tutor.errors import TutorError

__all__ = [
    "PROMPTS_DIR",
    "Generation",
    "ModeError",
    "TutorMode",
    "get_mode",
    "load_mode",
    "load_modes",
]


class Generation(BaseModel):
    """Sampling settings of a mode."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    min_p: float = Field(0.05, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.0, ge=1.0, le=2.0)  # 1.0 = off (1.1 costs ~2 % speed)
    max_tokens: int = Field(384, ge=16, le=8192)
    seed: int | None = Field(None, ge=0, lt=2**32 - 1)  # None: a fresh random seed per answer


class TutorMode(BaseModel):
    """A mode: how the tutor answers (system prompt) and how it samples."""

    model_config = ConfigDict(extra="forbid")
    name: str
    order: int = 100  # position in the mode selector
    title: str = Field(min_length=1)
    description: str = Field(min_length=1)
    system_prompt: str = Field(min_length=1)
    generation: Generation = Generation()


class ModeError(TutorError):
    """A mode file is missing, unreadable or invalid, or a mode name is unknown."""


def load_mode(path: Path) -> TutorMode:
    """Read and validate one mode file."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as e:  # one line: where, and what went wrong
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ModeError(f"{path}: not valid YAML ({where}{e.problem or e.context})") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ModeError(f"{path}: cannot read mode file: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ModeError(
            f"{path}: expected a mapping of title, description, system_prompt, generation"
        )
    try:
        return TutorMode(name=Path(path).stem, **data)
    except (ValidationError, TypeError) as e:
        problems = (
            "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            if isinstance(e, ValidationError)
            else str(e)
        )
        raise ModeError(f"{path}: {problems}") from None


def load_modes(directory: Path = PROMPTS_DIR) -> dict[str, TutorMode]:
    """All modes in DIRECTORY by name, ordered by their `order` field, then name."""
    files = sorted(Path(directory).glob("*.yaml"))
    if not files:
        raise ModeError(f"no tutor modes found: {directory} has no *.yaml files")
    modes = sorted(map(load_mode, files), key=lambda m: (m.order, m.name))
    return {mode.name: mode for mode in modes}


def get_mode(modes: dict[str, TutorMode], name: str) -> TutorMode:
    """The mode called NAME, or a ModeError listing the known ones."""
    try:
        return modes[name]
    except (KeyError, TypeError):
        raise ModeError(f"unknown mode {name!r}; choose one of: {', '.join(modes)}") from None
