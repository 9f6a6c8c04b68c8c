"""Student versions: no solution left, every check kept, valid nbformat, and nbgrader agrees."""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from workshop_utils.student import CODE_STUB, nbgrader_meta, strip_solution, student_version

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) + [ROOT / "lessons/templates/notebook_template.ipynb"]


def _solution_lines(source: str) -> list[str]:
    lines, inside = [], False
    for line in source.splitlines():
        if "BEGIN SOLUTION" in line:
            inside = True
        elif "END SOLUTION" in line:
            inside = False
        elif inside and line.strip():
            lines.append(line)
    return lines


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_student_version(path):
    teacher = nbformat.read(path, as_version=4)
    student = student_version(teacher)
    nbformat.validate(student)
    assert len(student.cells) == len(teacher.cells)
    for before, after in zip(teacher.cells, student.cells):
        assert "BEGIN SOLUTION" not in after.source and "END SOLUTION" not in after.source
        meta = nbgrader_meta(before)
        if meta.get("solution"):
            kept_elsewhere = set(after.source.splitlines()) - set(CODE_STUB.splitlines())
            leaked = [line for line in _solution_lines(before.source) if line in kept_elsewhere]
            assert not leaked, f"solution text left in {meta['grade_id']}: {leaked}"
            assert "raise NotImplementedError()" in after.source
        if meta.get("grade"):
            assert after.source == before.source, "check cells stay as they are"
        if meta and after.cell_type == "code":
            assert after.outputs == [] and after.execution_count is None, "exercise outputs are cleared"
        elif after.cell_type == "code":
            assert after.outputs == before.outputs, "the textbook outputs stay"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_nbgrader_clear_solutions_agrees(path):
    from nbgrader.preprocessors import ClearSolutions

    teacher = nbformat.read(path, as_version=4)
    theirs, _ = ClearSolutions().preprocess(nbformat.from_dict(teacher), {})
    ours = student_version(teacher)
    assert [c.source for c in ours.cells] == [c.source for c in theirs.cells]


def test_strip_solution_keeps_indentation_and_surroundings():
    source = "def f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION\n\nprint(f(2))"
    stripped, replaced = strip_solution(source, CODE_STUB)
    assert replaced
    assert stripped == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n\nprint(f(2))"


def test_unterminated_or_unmarked_solutions_are_refused():
    with pytest.raises(ValueError, match="without"):
        strip_solution("### BEGIN SOLUTION\nx = 1", CODE_STUB)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")])
    with pytest.raises(ValueError, match="no nbgrader solution metadata"):
        student_version(nb)


@pytest.mark.slow
def test_student_command_writes_every_notebook(tmp_path):
    done = subprocess.run([sys.executable, "-m", "workshop_utils", "student", str(tmp_path), "--notebooks",
                           str(ROOT / "notebooks")], capture_output=True, text=True, check=True)
    written = sorted(p.name for p in tmp_path.glob("*.ipynb"))
    assert written == sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert len(done.stdout.splitlines()) == len(written)
    for name in written:  # each file is the student version of its notebook, not a copy of the teacher's
        ours = nbformat.read(tmp_path / name, as_version=4)
        expected = student_version(nbformat.read(ROOT / "notebooks" / name, as_version=4))
        assert [(c.cell_type, c.source, c.get("outputs")) for c in ours.cells] == \
            [(c.cell_type, c.source, c.get("outputs")) for c in expected.cells], name
