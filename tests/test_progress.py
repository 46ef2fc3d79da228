"""ftlab.progress without a browser: the text bar in a terminal and in a log, and what the widget bar sends to a
notebook (tests/test_browser.py shows it in JupyterLab)."""
import io
import re

import pytest
from IPython.utils.capture import capture_output

from ftlab.progress import TextBar, WidgetBar, in_notebook, progress

SUMMARY = re.compile(r"^fit: 5/5 steps in \d+\.\d s, loss 0\.25$")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def bar_options(**changes):
    return {"total": None, "desc": "fit", "unit": "steps", "leave": True, "disable": False, **changes}


def test_a_log_gets_only_the_final_line(capsys):
    assert not in_notebook()
    bar = progress(range(5), desc="fit")
    assert isinstance(bar, TextBar) and len(bar) == 5
    seen = []
    for step in bar:
        seen.append(step)
        bar.set_postfix(loss=0.25)
    assert seen == [0, 1, 2, 3, 4]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and SUMMARY.match(lines[0]), lines


def test_a_terminal_line_is_redrawn_in_place_and_ends_with_the_final_line():
    terminal = Terminal()
    bar = TextBar(range(5), **bar_options(total=5), stream=terminal)
    bar.draw()  # as update() does at most every REDRAW_EVERY seconds
    for _ in bar:
        bar.set_postfix(loss=0.25)
    text = terminal.getvalue()
    assert text.startswith("\r[                    ] fit: 0/5 steps, 0.0 s")
    assert text.count("\n") == 1 and text.endswith("\n")
    assert SUMMARY.match(text.rsplit("\r", 1)[1].strip())
    assert "[####################] fit: 5/5 steps" in text  # the last step is always drawn


def test_leave_false_removes_the_bar_and_disable_shows_nothing(capsys):
    terminal = Terminal()
    bar = TextBar(range(3), **bar_options(total=3, leave=False), stream=terminal)
    list(bar)
    assert terminal.getvalue().endswith("\r") and "steps in" not in terminal.getvalue()
    assert list(progress(range(3), disable=True, desc="fit", leave=False)) == [0, 1, 2]
    assert list(progress(range(3), desc="fit", leave=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_a_loop_that_stops_early_says_so(capsys):
    for step in progress(range(10), desc="fit"):
        if step == 2:
            break
    with pytest.raises(RuntimeError, match="diverged"):
        for step in progress(range(10), desc="fit"):
            if step == 3:
                raise RuntimeError("diverged")
    lines = capsys.readouterr().err.splitlines()
    assert [re.sub(r"\d+\.\d s", "T", line) for line in lines] == [
        "fit: 2/10 steps in T (stopped)", "fit: 3/10 steps in T (stopped)"]


def test_counting_by_hand_with_a_total_and_postfix_values(capsys):
    with progress(total=4, desc="runs", unit="runs") as bar:
        bar.update(3)
        bar.update()
        bar.set_postfix(reward="0.5000", kl=0.0123456)
    bar.close()  # a second close does nothing
    assert re.fullmatch(r"runs: 4/4 runs in \d+\.\d s, reward 0\.5000, kl 0\.01235\n", capsys.readouterr().err)
    assert progress(80).total == 80


def test_drop_in_for_fits_tqdm_call(capsys):
    """The call ftlab.train.fit makes: tqdm(range(n), disable=not progress, desc="fit", leave=False)."""
    for show in (True, False):
        bar = progress(range(3), disable=not show, desc="fit", leave=False)
        for _ in bar:
            bar.set_postfix(loss=f"{0.5:.4f}")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("call, message", [
    (lambda: progress(5, total=6), "progress got 5 steps and total=6"),
    (lambda: progress(total=-1), "total must be a whole number of steps >= 0, got -1"),
    (lambda: progress(total=2.5), "got 2.5"),
    (lambda: iter(progress(total=3)).__next__(), "this bar has no iterable"),
])
def test_bad_arguments_are_refused(call, message):
    with pytest.raises((TypeError, ValueError), match=re.escape(message)):
        call()


def test_the_widget_bar_is_replaced_by_its_final_line_in_the_saved_notebook(ipython_shell):
    with capture_output() as captured:
        bar = WidgetBar(range(5), **bar_options(total=5))
        for _ in bar:
            bar.set_postfix(loss=0.25)
    shown, final = captured.outputs
    display_id = shown.transient["display_id"]
    assert "application/vnd.jupyter.widget-view+json" in shown.data and not shown.update
    assert shown.data["text/plain"] == "fit: running (a live bar; its final line replaces this)"
    assert final.update and final.transient["display_id"] == display_id
    assert SUMMARY.match(final.data["text/plain"])
    assert bar.bar.value == 5 and bar.bar.bar_style == "success" and bar.label.value == final.data["text/plain"]


def test_the_widget_bar_with_leave_false_leaves_nothing(ipython_shell):
    with capture_output() as captured:
        bar = WidgetBar(range(2), **bar_options(total=2, leave=False))
        list(bar)
    assert captured.outputs[-1].update and captured.outputs[-1].data == {"text/plain": ""}
