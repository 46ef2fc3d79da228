"""Student notebooks are in sync and free of test plumbing, and every checker fails on the stub and passes on the
solution.

Exercise cells are self-contained (they import what they use), so each can be run on its own here.
"""
import contextlib
import importlib.util
import io
from pathlib import Path

import nbformat
import pytest

from ftlab.student import ANSWERS_TAG, has_solution, strip_markers, strip_solution, student_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
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


def make_student_tool():
    spec = importlib.util.spec_from_file_location("make_student", ROOT / "tools" / "make_student.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def notebook(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    return nb


def code(source, outputs=(), tags=()):
    cell = nbformat.v4.new_code_cell(source, execution_count=1)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text) for text in outputs]
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


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


def test_strip_markers_drops_every_nbval_comment_line_and_nothing_else():
    source = "# NBVAL_CHECK_OUTPUT\n\nx = 1  # NBVAL_SKIP is only a word here\n#NBVAL_IGNORE_OUTPUT\nprint(x)"
    assert strip_markers(source) == "x = 1  # NBVAL_SKIP is only a word here\nprint(x)"


def test_student_notebook_clears_answers_and_drops_plumbing_but_keeps_other_outputs():
    nb = notebook(code("# NBVAL_CHECK_OUTPUT\nprint(1)", ["1\n"]),
                  code("measure()", ["0.992\n"], tags=[ANSWERS_TAG, "keep-me"]),
                  code("print(2)", ["2\n"], tags=["nbval-skip"]),
                  code("# NBVAL_CHECK_OUTPUT\ndef f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION", ["x"]))
    first, answer, skipped, exercise = student_notebook(nb).cells
    assert first.source == "print(1)" and first.outputs[0].text == "1\n"
    assert answer.outputs == [] and answer.execution_count is None and answer.metadata["tags"] == ["keep-me"]
    assert skipped.outputs[0].text == "2\n" and "tags" not in skipped.metadata
    assert exercise.outputs == [] and exercise.source.startswith("def f():\n    raise NotImplementedError")
    assert nb.cells[1].outputs, "the main notebook is left as it was"


@pytest.mark.parametrize("path", MAIN, ids=[p.stem for p in MAIN])
def test_student_notebook_is_in_sync_with_the_main_notebook(path):
    expected = nbformat.writes(student_notebook(nbformat.read(path, as_version=4))) + "\n"
    target = NOTEBOOKS / "student" / path.name
    assert target.exists(), "run: python tools/make_student.py"
    assert target.read_text() == expected, "out of date; run: python tools/make_student.py"


@pytest.mark.parametrize("path", MAIN, ids=[p.stem for p in MAIN])
def test_student_notebook_has_no_test_plumbing_and_no_solution(path):
    nb = nbformat.read(NOTEBOOKS / "student" / path.name, as_version=4)
    for cell in nb.cells:
        assert "NBVAL" not in cell.source and "BEGIN SOLUTION" not in cell.source
        assert not any(tag.startswith("nbval-") or tag == ANSWERS_TAG for tag in cell.metadata.get("tags", []))


def test_make_student_check_finds_stale_and_orphaned_copies_and_writing_fixes_them(tmp_path, capsys):
    tool = make_student_tool()
    nbformat.write(notebook(code("# NBVAL_CHECK_OUTPUT\nprint(1)", ["1\n"])), tmp_path / "00_a.ipynb")
    assert tool.main(["--check", "--notebooks", str(tmp_path)]) == 1
    assert tool.main(["--notebooks", str(tmp_path)]) == 0
    assert tool.main(["--check", "--notebooks", str(tmp_path)]) == 0
    (tmp_path / "00_a.ipynb").rename(tmp_path / "01_b.ipynb")
    assert tool.main(["--check", "--notebooks", str(tmp_path)]) == 1
    assert "without a main notebook" in capsys.readouterr().out
    assert tool.main(["--notebooks", str(tmp_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "student").iterdir()) == ["01_b.ipynb"]


def test_every_method_notebook_has_an_exercise():
    assert EXERCISES, "no exercise cells found"


@pytest.mark.parametrize("source", EXERCISES)
def test_checker_passes_on_the_solution_and_fails_on_the_stub(source):
    solved = run_cell(source)
    assert "[PASS]" in solved and "[FAIL]" not in solved, solved
    stubbed = run_cell(strip_solution(source))
    assert "[FAIL]" in stubbed and "NotImplementedError" in stubbed, stubbed
