"""Tutor modes are files in prompts/, validated at start-up with errors that name the problem."""

from __future__ import annotations

import shutil

import pytest

from tutor.modes import PROMPTS_DIR, ModeError, get_mode, load_modes


def test_shipped_modes():
    modes = load_modes()
    assert {"hint", "step_by_step", "explain", "medical_school"} <= set(modes)
    assert modes["step_by_step"].generation.temperature < modes["hint"].generation.temperature
    assert "never" in modes["hint"].system_prompt.lower()


def test_adding_a_mode_is_adding_a_file(tmp_path):
    shutil.copytree(PROMPTS_DIR, tmp_path, dirs_exist_ok=True)
    (tmp_path / "socratic.yaml").write_text(
        "title: Socratic\ndescription: Only questions.\nsystem_prompt: Answer with questions.\n"
        "generation:\n  temperature: 0.3\n  max_tokens: 100\n"
    )
    mode = get_mode(load_modes(tmp_path), "socratic")
    assert mode.generation.max_tokens == 100 and mode.generation.top_p == 0.9


@pytest.mark.parametrize(
    "content, words",
    [
        ("title: X\ndescription: Y\n", "system_prompt: Field required"),
        (
            "title: X\ndescription: Y\nsystem_prompt: Z\ngeneration:\n  temperature: 9\n",
            "generation.temperature",
        ),
        (
            "title: X\ndescription: Y\nsystem_prompt: Z\ngeneration:\n  temprature: 0.5\n",
            "generation.temprature: Extra inputs are not permitted",
        ),
        ("- just\n- a list\n", "expected a mapping"),
        ("title: [unclosed\n", "not valid YAML (line 2"),
    ],
)
def test_invalid_mode_files_name_file_and_field(content, words, tmp_path):
    (tmp_path / "broken.yaml").write_text(content)
    with pytest.raises(ModeError) as error:
        load_modes(tmp_path)
    assert "broken.yaml" in str(error.value) and words in str(error.value)


def test_empty_prompts_folder_and_unknown_mode(tmp_path):
    with pytest.raises(ModeError, match="no tutor modes"):
        load_modes(tmp_path)
    with pytest.raises(ModeError, match="unknown mode 'nope'; choose one of: "):
        get_mode(load_modes(), "nope")
