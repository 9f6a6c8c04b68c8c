"""Every notebook has a lesson plan a teacher can run a session from."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SECTIONS = ["Objectives", "Prerequisites", "Plan", "Talking points", "Likely questions", "Exercises",
            "Take-home assignment", "Further reading"]


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## +", text, flags=re.M)[1:]
    return {p.splitlines()[0].strip(): p for p in parts}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_lesson_file_has_every_section(notebook):
    lesson = ROOT / "lessons" / f"{notebook.stem}.md"
    assert lesson.is_file(), f"{notebook.name} has no lesson file {lesson.relative_to(ROOT)}"
    sections = _sections(lesson.read_text())
    for name in SECTIONS:
        assert any(title.startswith(name) for title in sections), f"{lesson.name} lacks a '## {name}' section"
    plan = next(body for title, body in sections.items() if title.startswith("Plan"))
    slots = re.findall(r"^\|\s*(\d+)\s*[–-]\s*(\d+)\s*\|", plan, flags=re.M)
    assert len(slots) >= 4, "the plan needs a minute-by-minute table (| 0–5 | … |)"
    ends = [int(b) for _, b in slots]
    assert all(int(a) == prev for (a, _), prev in zip(slots[1:], ends)), "plan slots must follow on"
    questions = next(body for title, body in sections.items() if title.startswith("Likely questions"))
    assert questions.count("**Q") >= 3, "give at least three likely questions with answers"


def test_course_map_lists_every_notebook():
    readme = (ROOT / "lessons" / "README.md").read_text()
    for notebook in NOTEBOOKS:
        assert notebook.name in readme, f"lessons/README.md does not mention {notebook.name}"
