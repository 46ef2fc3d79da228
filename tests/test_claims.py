"""The claims check (ftlab.claims): which numbers of a notebook's text count as figures, when a printed output above
backs one (the usual roundings, fractions and percents), the cite marker, a planted unbacked figure caught, and every
shipped notebook checked (those not fixed yet are listed as expected failures, strictly)."""
import json
from pathlib import Path

import pytest

from ftlab.claims import backs, check_notebook, figures, main, unbacked

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
# Notebooks whose text still quotes figures that no cell above prints and no marker cites (issue 14).
# Strict: a notebook that passes while listed fails the test, so that it leaves this list.
KNOWN_UNBACKED: set[str] = set()  # none left: every notebook passes


def _notebook(tmp_path, cells) -> Path:
    """A notebook of ``cells``: ("md", text) or ("code", stdout text) or ("stderr", text)."""
    made = []
    for kind, text in cells:
        if kind == "md":
            made.append({"cell_type": "markdown", "metadata": {}, "source": text.splitlines(keepends=True)})
        else:
            name = "stderr" if kind == "stderr" else "stdout"
            made.append({"cell_type": "code", "metadata": {}, "source": ["print(...)"], "execution_count": 1,
                         "outputs": [{"output_type": "stream", "name": name, "text": [text]}]})
    path = tmp_path / "planted.ipynb"
    path.write_text(json.dumps({"cells": made, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_figures_are_decimals_and_percentages_outside_code_math_and_versions():
    text = ("We trained 400 sentences for 60 steps (22,713,986 parameters) with `lr=0.003` and $\\alpha = 0.5$; "
            "torch 2.14.1 in fp16 at 1e-3. LoRA reached 0.914, that is 91.4% or 91 %, and lost -4.4 points; "
            "a batch of 1,234.5 tokens.")
    assert [f["figure"] for f in figures(text)] == ["0.914", "91.4%", "91 %", "-4.4", "1,234.5"]
    values = [(f["value"], f["decimals"]) for f in figures(text)]
    assert values == [(0.914, 3), (91.4, 1), (91.0, 0), (4.4, 1), (1234.5, 1)]


def test_a_printed_number_backs_a_figure_it_rounds_to_as_fraction_or_percent():
    assert backs(0.9143, 0.914, 3) and backs(0.9143, 91.4, 1) and backs(0.9143, 91, 0) and backs(91.43, 0.914, 3)
    assert not backs(0.9143, 0.915, 3) and not backs(0.9, 0.91, 2) and not backs(0.5, 0.52, 2)


def test_the_cite_marker_covers_the_figures_of_its_sentence_only():
    found = figures("LoRA matched full fine-tuning at 0.912 [cite: Hu et al. 2021, Table 2]. Ours reached 0.871.")
    assert [(f["figure"], f["cited"]) for f in found] == [("0.912", True), ("0.871", False)]
    rows = figures("| method | accuracy |\n|---|---|\n| lora | 0.93 [cite: run log] |\n| ia3 | 0.88 |")
    assert [(f["figure"], f["cited"]) for f in rows] == [("0.93", True), ("0.88", False)]


def test_a_planted_unbacked_figure_fails_and_printed_cited_and_later_figures_are_told_apart(tmp_path, capsys):
    path = _notebook(tmp_path, [
        ("md", "Below, LoRA will reach 0.914."),  # above the output that prints it: not backed
        ("code", "method  test accuracy\nlora    0.9143\nia3     0.8800\n"),
        ("stderr", "100%|##########| 80/80 [00:12<00:00, 6.54it/s]\n"),
        ("md", "LoRA reached 0.914 (91.4%), IA3 0.88. The paper reports 0.912 [cite: Hu et al. 2021, Table 2].\n"
               "Planted: IA3 reached 0.871, at 6.54 steps per second."),
    ])
    statuses = [(r["cell"], r["figure"], r["status"]) for r in check_notebook(path)]
    assert statuses == [(0, "0.914", "unbacked"), (3, "0.914", "backed"), (3, "91.4%", "backed"),
                        (3, "0.88", "backed"), (3, "0.912", "cited"), (3, "0.871", "unbacked"),
                        (3, "6.54", "unbacked")]  # stderr (progress bars) backs nothing
    assert [r["figure"] for r in unbacked(path)] == ["0.914", "0.871", "6.54"]
    assert main([str(path)]) == 1
    printed = capsys.readouterr().out
    assert "planted.ipynb: 7 figures, 3 unbacked, 1 cited" in printed and "0.871  <- Planted: IA3 reached" in printed


def test_a_notebook_whose_figures_are_all_printed_or_cited_passes(tmp_path):
    path = _notebook(tmp_path, [("code", "accuracy 0.9143\n"), ("md", "It reached 91.4%.")])
    assert unbacked(path) == [] and main([str(path)]) == 0


@pytest.mark.parametrize("path", [
    pytest.param(p, marks=pytest.mark.xfail(strict=True, reason="figures not yet printed or cited (issue 14)"))
    if p.name in KNOWN_UNBACKED else p for p in NOTEBOOKS], ids=lambda p: p.name)
def test_every_figure_in_a_notebook_is_printed_above_it_or_cited(path):
    missing = unbacked(path)
    assert missing == [], "\n".join(f"cell {r['cell']}: {r['figure']} <- {r['context'][:120]}" for r in missing)


def test_the_expected_failures_name_notebooks_that_exist():
    assert {p.name for p in NOTEBOOKS} >= KNOWN_UNBACKED
