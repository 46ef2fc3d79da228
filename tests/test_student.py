"""Student notebooks are in sync, and every checker fails on the stub and passes on the solution.

Exercise cells are self-contained (they import what they use), so each can be run on its own here.
"""
import contextlib
import io
from pathlib import Path

import nbformat
import pytest

from ftlab.student import has_solution, strip_solution, student_notebook

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
MAIN = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
EXERCISES = [
    pytest.param(cell.source, id=f"{path.stem}-cell{i}")
    for path in MAIN
    for i, cell in enumerate(nbformat.read(path, as_version=4).cells)
    if cell.cell_type == "code" and has_solution(cell.source)
]


def run_cell(source: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, "<exercise>", "exec"), {})
    return out.getvalue()


def test_strip_solution_keeps_indentation_and_the_rest():
    source = "def f(x):\n    # BEGIN SOLUTION\n    return 2 * x\n    # END SOLUTION\n\ncheck(f)"
    assert strip_solution(source) == (
        'def f(x):\n    raise NotImplementedError("exercise: write your solution here")\n\ncheck(f)'
    )


@pytest.mark.parametrize("source, message", [
    ("# BEGIN SOLUTION\nx = 1", "never closed"),
    ("x = 1\n# END SOLUTION", "without a matching"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION", "inside another"),
])
def test_unbalanced_markers_are_reported_with_the_line(source, message):
    with pytest.raises(ValueError, match=message):
        strip_solution(source)


@pytest.mark.parametrize("path", MAIN, ids=[p.stem for p in MAIN])
def test_student_notebook_is_in_sync_with_the_main_notebook(path):
    expected = nbformat.writes(student_notebook(nbformat.read(path, as_version=4))) + "\n"
    target = NOTEBOOKS / "student" / path.name
    assert target.exists(), "run: python tools/make_student.py"
    assert target.read_text() == expected, "out of date; run: python tools/make_student.py"


def test_every_method_notebook_has_an_exercise():
    assert EXERCISES, "no exercise cells found"


@pytest.mark.parametrize("source", EXERCISES)
def test_checker_passes_on_the_solution_and_fails_on_the_stub(source):
    solved = run_cell(source)
    assert "[PASS]" in solved and "[FAIL]" not in solved, solved
    stubbed = run_cell(strip_solution(source))
    assert "[FAIL]" in stubbed and "NotImplementedError" in stubbed, stubbed
