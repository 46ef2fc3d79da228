"""Claims follow the evidence: every figure in a notebook's text is printed by a cell above it, or cited.

A *figure* is a number in a markdown cell written with a decimal point or a percent sign:
``0.914``, ``7.7``, ``-4.4``, ``97.5%``, ``75 %``. Whole numbers without a percent sign are not
figures (counts, steps, sizes, years, section numbers: ``400 sentences``, ``60 steps``); neither
are numbers inside inline code or code blocks (settings such as ```lr=0.003```), LaTeX math
(``$0.5 (1 + \\cos)$``), link targets, HTML comments, version strings (``2.14.1``), numbers glued
to letters (``fp16``, ``x2.6``) or in scientific notation (``1e-3``).

A figure is **backed** when a number in the text outputs (stdout, results, displays; not stderr)
of a code cell *above* its markdown cell rounds to it, as the text wrote it: with d decimals in
the text, the printed x backs v when |c - v| <= 0.5 * 10^-d for c = x, 100 x or x / 100 (so a
printed 0.9143 backs 0.914, 91.4% and 91%; a printed 91.43 backs 0.914). Signs are ignored
("lost 17.2 points" is backed by a printed -17.2). A number computed from the reference results
in a cell is printed too, so the same rule covers it.

A figure is **cited** when its sentence (or list item, or table row) carries a marker
``[cite: source]``, e.g. ``LoRA matched full fine-tuning on GLUE [cite: Hu et al. 2021, Table 2].``
The marker shows in the rendered notebook, so the reader sees where the number comes from.

Everything else is **unbacked**. ``python -m ftlab.claims notebooks/*.ipynb`` lists them.

The rule is a floor, not a proof: a printed table with many numbers can back a figure by chance.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

# a number: optional sign, digits (with thousands separators), optional decimals, optional percent sign;
# not glued to a letter, digit or point before it, and not followed by more digits or ".digit" (versions)
FIGURE = re.compile(r"(?<![\w.])(-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?)(?!\.?\d|[eE][-+]?\d|\w)(\s?%)?")
PRINTED = re.compile(r"(?<![\w.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d])|(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
CITE = re.compile(r"\[cite:[^\]]+\]")
# what is not prose: fenced code, inline code, display and inline math, HTML comments, link targets
NOT_PROSE = re.compile(r"```.*?```|`[^`\n]*`|\$\$.*?\$\$|\$[^$\n]+\$|<!--.*?-->|\]\([^)\s]*\)", re.DOTALL)
# where a sentence ends: after . ! ? and space; at a blank line; before a list item or a table row
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(*_\[`\"])|\n\s*\n|\n(?=\s*(?:[-*+]|\d+\.)\s)|\n(?=\s*\|)")


def _text(source) -> str:
    return "".join(source) if isinstance(source, list) else source


def figures(markdown: str) -> list[dict]:
    """The figures of one markdown text: ``[{"figure": "97.5%", "value": 97.5, "decimals": 1, "cited": bool,
    "context": the sentence}]``, in order."""
    prose = NOT_PROSE.sub(lambda m: " " * len(m.group(0)), markdown)
    found, start = [], 0
    for end in [m.start() for m in SENTENCE_END.finditer(prose)] + [len(prose)]:
        sentence = prose[start:end]
        cited = bool(CITE.search(sentence))
        for match in FIGURE.finditer(CITE.sub(lambda m: " " * len(m.group(0)), sentence)):
            number, percent = match.group(1), match.group(2)
            if "." not in number and not percent:
                continue  # a whole number without % is a count, not a figure
            decimals = len(number.split(".")[1]) if "." in number else 0
            found.append({"figure": match.group(0).strip(), "value": abs(float(number.replace(",", ""))),
                          "decimals": decimals, "cited": cited, "context": " ".join(sentence.split())})
        start = end
    return found


def printed_numbers(cell: dict) -> set[float]:
    """Absolute values of every number in a code cell's text outputs (stdout streams, results, displays)."""
    texts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            if output.get("name") == "stdout":
                texts.append(_text(output.get("text", "")))
        else:
            data = output.get("data", {})
            texts += [_text(data[kind]) for kind in ("text/plain", "text/markdown", "text/latex") if kind in data]
    return {abs(float(m.group(0).replace(",", ""))) for text in texts for m in PRINTED.finditer(text)}


def backs(printed: float, value: float, decimals: int) -> bool:
    """True when ``printed`` (or 100 times it, or a hundredth of it) rounds to ``value`` at ``decimals`` decimals."""
    tolerance = 0.5 * 10.0 ** -decimals + 1e-9
    return any(abs(c - value) <= tolerance for c in (printed, 100 * printed, printed / 100))


def check_notebook(path: str | Path) -> list[dict]:
    """Every figure of a notebook's markdown, each with ``cell`` (index), ``figure``, ``context`` and ``status``:
    ``"backed"``, ``"cited"`` or ``"unbacked"``."""
    cells = json.loads(Path(path).read_text())["cells"]
    printed: set[float] = set()
    results = []
    for index, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            printed |= printed_numbers(cell)
        elif cell["cell_type"] == "markdown":
            for figure in figures(_text(cell["source"])):
                if figure["cited"]:
                    status = "cited"
                elif any(backs(x, figure["value"], figure["decimals"]) for x in printed):
                    status = "backed"
                else:
                    status = "unbacked"
                results.append({"cell": index, "figure": figure["figure"], "context": figure["context"],
                                "status": status})
    return results


def unbacked(path: str | Path) -> list[dict]:
    """The figures of a notebook that no output above them prints and no marker cites."""
    return [result for result in check_notebook(path) if result["status"] == "unbacked"]


def main(argv: list[str] | None = None) -> int:
    """``python -m ftlab.claims NOTEBOOK...``: print each notebook's unbacked figures with their sentence;
    exit status 1 when there is any."""
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m ftlab.claims NOTEBOOK.ipynb [...]", file=sys.stderr)
        return 2
    total = 0
    for path in paths:
        results = check_notebook(path)
        missing = [r for r in results if r["status"] == "unbacked"]
        total += len(missing)
        print(f"{Path(path).name}: {len(results)} figures, {len(missing)} unbacked, "
              f"{sum(r['status'] == 'cited' for r in results)} cited")
        for r in missing:
            print(f"  cell {r['cell']}: {r['figure']}  <- {r['context'][:160]}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
