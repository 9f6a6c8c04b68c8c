"""Every notebook (and the template) follows the course skeleton and is committed cleanly executed."""

import re
from pathlib import Path

import nbformat
import pytest

from workshop_utils.student import nbgrader_meta

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TEMPLATE = ROOT / "lessons" / "templates" / "notebook_template.ipynb"
SKELETON = ["## Learning objectives", "## Setup", "## Exercises", "## Recap", "## What's next"]
# Output that must never be stored: progress bars, warnings, library chatter.
NOISE = re.compile(r"it/s\]|s/it\]|Warning:|WARNING|FutureWarning|DeprecationWarning|Converting and de-quantizing")
TIMING_WORDS = re.compile(r"time|second|latenc|memory|mib|gib|bytes|bench|perf_counter|tokens/s|load", re.I)


def _all():
    return [*NOTEBOOKS, TEMPLATE]


def _ids(paths):
    return [p.name for p in paths]


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"
    assert NOTEBOOKS[0].name == "00_setup_check.ipynb"


@pytest.mark.parametrize("path", _all(), ids=_ids(_all()))
def test_skeleton_headings_in_order(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), "first cell must be the title"
    assert len(first.source.split("\n\n")) >= 2, "the title cell needs a one-paragraph promise"
    headings = [line.strip() for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()
                if line.startswith("## ")]
    positions = []
    for heading in SKELETON:
        assert heading in headings, f"missing heading {heading!r}"
        positions.append(headings.index(heading))
    assert positions == sorted(positions), f"headings out of order: {SKELETON}"


@pytest.mark.parametrize("path", _all(), ids=_ids(_all()))
def test_every_code_cell_is_introduced_and_executed(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.kernelspec.name == "python3"
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert index > 0 and nb.cells[index - 1].cell_type == "markdown", (
            f"code cell {index} needs a markdown sentence right before it"
        )
        assert cell.source.strip(), f"code cell {index} is empty"
        assert cell.execution_count is not None, f"code cell {index} was not executed before committing"


@pytest.mark.parametrize("path", _all(), ids=_ids(_all()))
def test_setup_cell_seeds_and_loads(path):
    nb = nbformat.read(path, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert "setup_notebook(" in code[0], "the first code cell must call setup_notebook()"


@pytest.mark.parametrize("path", _all(), ids=_ids(_all()))
def test_stored_outputs_are_clean(path):
    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            assert output.output_type != "error", f"cell {index} stored an error"
            assert not (output.output_type == "stream" and output.name == "stderr"), (
                f"cell {index} stored stderr: {output.text[:200]!r}"
            )
            text = output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
            assert not NOISE.search(text), f"cell {index} stored noise: {NOISE.search(text).group(0)!r}"
        tags = cell.get("metadata", {}).get("tags", [])
        if "nbval-ignore-output" in tags:
            assert TIMING_WORDS.search(cell.source), (
                f"cell {index} ignores its output but measures no time or memory; sanitize instead"
            )
        assert "nbval-skip" not in tags, f"cell {index} is skipped by nbval"


@pytest.mark.parametrize("path", _all(), ids=_ids(_all()))
def test_exercises_have_solutions_and_checks(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    solutions = [i for i, c in enumerate(code) if nbgrader_meta(c).get("solution")]
    minimum = 3 if path.name[:2].isdigit() and path.name[:2] != "00" else 1
    assert len(solutions) >= minimum, f"{len(solutions)} exercises, at least {minimum} expected"
    grade_ids = [nbgrader_meta(c)["grade_id"] for c in code if nbgrader_meta(c)]
    assert len(grade_ids) == len(set(grade_ids)), "nbgrader grade_ids must be unique"
    for i in solutions:
        assert "### BEGIN SOLUTION" in code[i].source and "### END SOLUTION" in code[i].source
        following = code[i + 1] if i + 1 < len(code) else None
        assert following is not None and nbgrader_meta(following).get("grade"), (
            f"exercise {nbgrader_meta(code[i])['grade_id']} must be followed by a check cell"
        )
        assert nbgrader_meta(following).get("locked") and nbgrader_meta(following).get("points", 0) > 0
        assert "check" in following.source, "a check cell calls a workshop_utils.checks function"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_small_enough_to_read_online(path):
    assert path.stat().st_size < 3_000_000, "over 3 MB: GitHub will not render it; store smaller figures"
