"""Student versions of notebooks: solution code replaced by ``raise NotImplementedError``, no test plumbing.

In a main notebook, an exercise cell marks its solution lines::

    def bytes_per_parameter(n):
        # BEGIN SOLUTION
        return 16 * n
        # END SOLUTION

    check_adamw_bytes_per_parameter(bytes_per_parameter)

The student version keeps everything else and

- replaces each marked block, at the same indentation, with ``raise NotImplementedError("exercise: ...")``, and
  clears the exercise cell's outputs;
- clears the outputs of every cell tagged ``answers-exercise`` (a cell whose output answers an open-ended exercise,
  such as a measurement the exercise asks the student to make);
- drops nbval's markers (``# NBVAL_CHECK_OUTPUT`` and the others, as comment lines or ``nbval-*`` tags), which
  are for the test suite, not for students.

``tools/make_student.py`` writes ``notebooks/student/`` with this module; ``--check`` says when it is stale.
"""
from __future__ import annotations

import copy
import re

import nbformat

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
STUB = 'raise NotImplementedError("exercise: write your solution here")'
ANSWERS_TAG = "answers-exercise"
NBVAL_MARKERS = ("NBVAL_CHECK_OUTPUT", "NBVAL_IGNORE_OUTPUT", "NBVAL_SKIP", "NBVAL_RAISES_EXCEPTION",
                 "PYTEST_VALIDATE_IGNORE_OUTPUT")
MARKER_LINE = re.compile(r"\s*#\s*(" + "|".join(NBVAL_MARKERS) + r")\s*")


def strip_solution(source: str) -> str:
    """Replace each BEGIN/END SOLUTION block of ``source`` by an indented ``raise NotImplementedError``."""
    out, inside = [], False
    for number, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"line {number}: '{BEGIN}' inside another solution block; close it with '{END}' first")
            inside = True
            out.append(re.match(r"\s*", line).group(0) + STUB)
        elif stripped == END:
            if not inside:
                raise ValueError(f"line {number}: '{END}' without a matching '{BEGIN}'")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"a '{BEGIN}' block is never closed with '{END}'")
    return "\n".join(out)


def strip_markers(source: str) -> str:
    """``source`` without nbval's marker comment lines (and without the blank lines they leave at the top)."""
    lines = [line for line in source.splitlines() if not MARKER_LINE.fullmatch(line)]
    while lines and not lines[0].strip():
        lines.pop(0)
    return "\n".join(lines)


def has_solution(source: str) -> bool:
    """True when a code cell's source marks a solution block."""
    return any(line.strip() == BEGIN for line in source.splitlines())


def student_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` with stubs for solutions, no outputs that answer exercises, and no nbval markers."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if tags:
            kept = [tag for tag in tags if not tag.startswith("nbval-") and tag != ANSWERS_TAG]
            if kept:
                cell.metadata["tags"] = kept
            else:
                del cell.metadata["tags"]
        if cell.cell_type != "code":
            continue
        if has_solution(cell.source) or ANSWERS_TAG in tags:
            cell.outputs = []
            cell.execution_count = None
        if has_solution(cell.source):
            cell.source = strip_solution(cell.source)
        cell.source = strip_markers(cell.source)
    return nb
