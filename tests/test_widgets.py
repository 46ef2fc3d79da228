"""ftlab.widgets.explore without a browser: what it sends to the notebook when shown and at each update.

An IPython shell records every display message (``capture_output``); a widget's value is set from Python, which
runs its observers as a click in the browser would. tests/test_browser.py drives the same widgets in JupyterLab.
"""
import json
import re
from pathlib import Path

import ipywidgets
import matplotlib.pyplot as plt
import pandas as pd
import pytest
from IPython.core.pylabtools import select_figure_formats
from IPython.utils.capture import capture_output

from ftlab.widgets import PANEL_CLASS, explore

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture
def shell(ipython_shell):
    """An IPython shell that formats figures as PNG, as a notebook kernel does."""
    shell = ipython_shell
    select_figure_formats(shell, {"png"})
    shell.display_formatter.active_types = ["text/plain", "text/html", "image/png", WIDGET]
    return shell


def line(slope=1.0, label="a"):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, slope])
    ax.set_title(label)
    return fig  # left open: explore must close it


def shown(captured) -> list[tuple[str, str, bool]]:
    """(kind, display id, is an update) for each display message: kind is panel, figure, table or text."""
    kinds = []
    for output in captured.outputs:
        data = output.data
        kind = ("panel" if WIDGET in data else "figure" if "image/png" in data else
                "table" if "text/html" in data else "text")
        kinds.append((kind, (output.transient or {}).get("display_id"), output.update))
    return kinds


def test_explore_shows_the_panel_then_one_figure_and_updates_that_figure_in_place(shell):
    with capture_output() as first:
        explorer = explore(line, slope=(0.5, 2.0, 0.5), label=["a", "b"])
    (panel, _, _), (figure, figure_id, update) = shown(first)
    assert (panel, figure, update) == ("panel", "figure", False) and figure_id
    assert first.outputs[0].data["text/plain"] == "[widget: line(slope, label); run the notebook to use it]"
    png = first.outputs[1].data["image/png"]
    for name, value in [("slope", 1.5), ("label", "b")]:
        with capture_output() as changed:
            explorer.controls[name].value = value
        assert shown(changed) == [("figure", figure_id, True)], f"exactly one figure update after changing {name}"
        assert changed.outputs[0].data["image/png"] != png
        png = changed.outputs[0].data["image/png"]
    assert explorer.updates == 2
    assert plt.get_fignums() == [], "returned figures are closed, so the inline backend never shows them again"


def test_explore_starts_from_the_functions_defaults_and_names_each_control(shell):
    with capture_output():
        explorer = explore(line, slope=(0.5, 2.0, 0.5), label=ipywidgets.ToggleButtons(options=["a", "b"]))
    assert explorer.values() == {"slope": 1.0, "label": "a"}
    assert [w.description for w in explorer.controls.values()] == ["slope", "label"]
    assert explorer.controls["slope"].continuous_update is False  # one update when the slider is released
    assert explorer.controls["slope"].style.description_width == "initial"  # a long name is shown whole
    assert PANEL_CLASS in explorer.panel._dom_classes


def test_a_cell_ending_in_explore_shows_the_panel_once(shell):
    shell.user_ns["line"] = line
    with capture_output() as captured:
        shell.run_cell("from ftlab.widgets import explore\nexplore(line, slope=[1.0, 2.0])")
    assert [kind for kind, _, _ in shown(captured)] == ["panel", "figure"]


def test_manual_explore_updates_only_when_its_button_is_pressed(shell):
    with capture_output():
        explorer = explore(line, manual=True, button="Train", slope=[1.0, 2.0])
    assert explorer.button.description == "Train"
    with capture_output() as changed:
        explorer.controls["slope"].value = 2.0
    assert shown(changed) == [] and explorer.updates == 0
    with capture_output() as pressed:
        explorer.button.click()
    assert [(kind, update) for kind, _, update in shown(pressed)] == [("figure", True)]
    assert explorer.updates == 1 and explorer.button.description == "Train" and not explorer.button.disabled


def test_manual_explore_shows_the_initial_result_without_calling_the_function(shell):
    calls = []

    def train(steps=10):
        calls.append(steps)
        return pd.DataFrame({"steps": [steps]})

    with capture_output() as first:
        explorer = explore(train, manual=True, initial=pd.DataFrame({"steps": [0]}), steps=[10, 20])
    assert calls == [] and [kind for kind, _, _ in shown(first)] == ["panel", "table"]
    explorer.controls["steps"].value = 20
    with capture_output() as pressed:
        explorer.button.click()
    assert calls == [20] and "<td>20</td>" in pressed.outputs[0].data["text/html"]


def test_tables_and_tuples_update_part_by_part_and_none_blanks_them(shell):
    def both(n=2):
        if n == 0:
            print("nothing to show for n = 0")
            return None
        table = pd.DataFrame({"x": range(n)})
        return table, line(slope=n)

    with capture_output() as first:
        explorer = explore(both, n=[2, 3, 0])
    assert [kind for kind, _, _ in shown(first)] == ["panel", "table", "figure"]
    ids = [display_id for _, display_id, _ in shown(first)][1:]
    with capture_output() as changed:
        explorer.controls["n"].value = 3
    assert shown(changed) == [("table", ids[0], True), ("figure", ids[1], True)]
    with capture_output() as emptied:
        explorer.controls["n"].value = 0
    assert shown(emptied) == [("text", ids[0], True), ("text", ids[1], True)]
    assert "nothing to show for n = 0" in emptied.stdout


def test_an_error_in_an_update_is_shown_and_the_previous_result_stays(shell):
    def fragile(x=1):
        if x == 2:
            raise ValueError("x = 2 is not allowed here")
        return line(slope=x)

    with capture_output():
        explorer = explore(fragile, x=[1, 2, 3])
    with capture_output() as failed:
        explorer.controls["x"].value = 2
    assert shown(failed) == []
    assert "ValueError" in failed.stdout and "x = 2 is not allowed here" in failed.stdout
    assert explorer.updates == 1  # the update finished (a browser test waits for this count)
    with capture_output() as recovered:
        explorer.controls["x"].value = 3
    assert [kind for kind, _, _ in shown(recovered)] == ["figure"]


def test_an_update_that_returns_more_parts_than_the_first_result_is_an_error(shell):
    def growing(n=1):
        return tuple(pd.DataFrame({"x": [i]}) for i in range(n))

    with capture_output():
        explorer = explore(growing, n=[1, 2])
    with capture_output() as grown:
        explorer.controls["n"].value = 2
    assert shown(grown) == []
    assert "growing returned 2 results, the first time 1" in grown.stdout


@pytest.mark.parametrize("call, message", [
    (lambda: explore("line", slope=[1]), "explore needs a function to call, got str"),
    (lambda: explore(line), "explore needs at least one control"),
    (lambda: explore(line, steep=[1, 2]), "line has no parameter steep; its parameters are slope, label"),
    (lambda: explore(lambda a, b=1: None, b=[1, 2]), "parameter a has no default: give it a control"),
    (lambda: explore(line, slope=object()), "cannot make a control for slope"),
])
def test_explore_refuses_bad_arguments_before_showing_anything(shell, call, message):
    with capture_output() as captured, pytest.raises((TypeError, ValueError), match=re.escape(message)):
        call()
    assert captured.outputs == [] and captured.stdout == ""


def notebook_cells(path: Path) -> list[dict]:
    return [cell for cell in json.loads(path.read_text())["cells"] if cell["cell_type"] == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_widgets_are_made_with_explore(path):
    """``ipywidgets.interact`` shows a returned figure twice and stores no static result: use ``explore``."""
    for cell in notebook_cells(path):
        source = "".join(cell["source"])
        assert not re.search(r"\binteract(_manual)?\(", source), f"{path.name}: a widget made with interact:\n{source}"


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if "explore(" in p.read_text()], ids=lambda p: p.stem)
def test_stored_notebook_shows_each_widgets_result(path):
    """The saved notebook (and GitHub) shows each widget's first result under its panel, since widget state
    is not saved. Fails until the notebook is re-run after a widget cell changed."""
    for cell in notebook_cells(path):
        if re.search(r"\bexplore\(", "".join(cell["source"])):
            kinds = [set(output.get("data", {})) for output in cell["outputs"]]
            panel = next((i for i, data in enumerate(kinds) if WIDGET in data), None)
            assert panel is not None, f"{path.name}: a widget cell without its stored panel (re-run the notebook)"
            assert any(data & {"image/png", "text/html"} for data in kinds[panel + 1:]), \
                f"{path.name}: no stored figure or table under the widget (re-run the notebook)"
