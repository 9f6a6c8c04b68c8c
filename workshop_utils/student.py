"""Student versions of the notebooks: solutions replaced by stubs, exercise outputs cleared.

The markers are nbgrader's: a solution region is the lines from `### BEGIN SOLUTION` to
`### END SOLUTION`, inside a cell whose metadata says `nbgrader.solution: true`; a check cell
has `nbgrader.grade: true`. A teacher can also hand the notebooks to nbgrader itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

from .paths import output_folder

BEGIN, END = "BEGIN SOLUTION", "END SOLUTION"
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
TEXT_STUB = "YOUR ANSWER HERE"


def nbgrader_meta(cell) -> dict:
    """A cell's nbgrader metadata, or an empty dict."""
    return cell.get("metadata", {}).get("nbgrader", {})


def strip_solution(source: str, stub: str) -> tuple[str, bool]:
    """Replace each BEGIN/END SOLUTION region by the stub, indented like the BEGIN line."""
    lines, inside, replaced = [], False, False
    for line in source.split("\n"):
        if BEGIN in line:
            if inside:
                raise ValueError(f"nested {BEGIN!r}. Fix: close each region with {END!r} before the next one. "
                                 f"In:\n{source}")
            inside = replaced = True
            indent = re.match(r"\s*", line).group(0)
            lines += [indent + s for s in stub.split("\n")]
        elif END in line:
            inside = False
        elif not inside:
            lines.append(line)
    if inside:
        raise ValueError(f"{BEGIN!r} without {END!r}. Fix: end the solution with {END!r}. In:\n{source}")
    return "\n".join(lines), replaced


def student_version(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Return a copy of a notebook with solutions stubbed and exercise outputs cleared."""
    nb = nbformat.from_dict(nb)  # a deep copy
    for index, cell in enumerate(nb.cells):
        meta = nbgrader_meta(cell)
        stub = CODE_STUB if cell.cell_type == "code" else TEXT_STUB
        cell.source, replaced = strip_solution(cell.source, stub)
        if replaced and not meta.get("solution"):
            raise ValueError(f"cell {index} has a solution region but no nbgrader solution metadata. Fix: set "
                             '"solution": true in the cell\'s nbgrader metadata.')
        if meta.get("solution") and not replaced:
            cell.source = stub
        if cell.cell_type == "code" and (meta.get("solution") or meta.get("grade")):
            cell.outputs, cell.execution_count = [], None
    return nb


def write_student_versions(notebooks: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the student version of every notebook in a folder; return the written paths."""
    sources = sorted(Path(notebooks).glob("*.ipynb"))
    if not sources:
        found = "is not a folder" if not Path(notebooks).is_dir() else "holds no .ipynb file"
        raise ValueError(f"The notebooks folder {Path(notebooks).resolve()} {found}. Fix: run from the repository "
                         "root, or pass --notebooks /path/to/notebooks.")
    out = output_folder(out_dir, "student folder")
    if out.resolve() == Path(notebooks).resolve():
        raise ValueError(f"The student folder {out} is the teacher notebooks' own folder: the solutions would be "
                         "overwritten. Fix: choose another folder, for example student/.")
    versions = [student_version(nbformat.read(path, as_version=4)) for path in sources]  # all, before writing any
    written = []
    for path, nb in zip(sources, versions):
        nbformat.validate(nb)
        nbformat.write(nb, out / path.name)
        written.append(out / path.name)
    return written
