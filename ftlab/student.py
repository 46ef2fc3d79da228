"""Student versions of notebooks: solution code replaced by ``raise NotImplementedError``.

In a main notebook, an exercise cell marks its solution lines::

    def bytes_per_parameter(n):
        # BEGIN SOLUTION
        return 16 * n
        # END SOLUTION

    check_adamw_bytes_per_parameter(bytes_per_parameter)

The student version keeps everything else and replaces the marked block, at the same
indentation, with ``raise NotImplementedError("exercise: ...")``; the cell's outputs are
cleared. ``tools/make_student.py`` writes ``notebooks/student/`` with this module.
"""
from __future__ import annotations

import copy
import re

import nbformat

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
STUB = 'raise NotImplementedError("exercise: write your solution here")'


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


def has_solution(source: str) -> bool:
    """True when a code cell's source marks a solution block."""
    return any(line.strip() == BEGIN for line in source.splitlines())


def student_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` whose solution blocks are stubs and whose exercise cells have no outputs."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code" and has_solution(cell.source):
            cell.source = strip_solution(cell.source)
            cell.outputs = []
            cell.execution_count = None
    return nb
