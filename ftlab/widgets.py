"""Widgets for the notebooks: controls over a plain plot function, one result per update, and a static copy.

Every widget in the course is made by ``explore``::

    def rank_plot(r=4, alpha=8):               # a plain function: values in, a Figure (or a DataFrame) out
        return plot_rank_sweep(sweep_for(r, alpha))

    explore(rank_plot, r=[1, 2, 4, 8], alpha=[1, 8, 64])

How it shows things, and why:

* The result (a Figure, a DataFrame, or a tuple of them) is an ordinary output of the cell, shown once when
  the cell runs. A saved notebook, GitHub and nbconvert's HTML therefore show the default result, although
  widget state is not saved.
* Each update *replaces* that output in place (a display update), so exactly one figure shows at any time.
  (``ipywidgets.interact`` with a function that returns a Figure shows it twice: ``interact`` displays the
  returned Figure and the inline backend shows the still-open figure again.) Returned figures are closed.
* Whatever the function prints while it runs (progress bars, messages, a traceback) goes to a small
  ``ipywidgets.Output`` under the controls, cleared at each update.
* ``manual=True`` puts the work behind a button (training, several seconds); ``initial=`` gives the result to
  show before the first run, e.g. one drawn from results computed earlier in the notebook.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from itertools import zip_longest

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

# CSS classes on the panel, for tests that drive the widgets in a browser (tests/test_browser.py):
# "ftlab-explore" marks the panel, "ftlab-run" its button, "ftlab-updates-N" the number of finished updates.
PANEL_CLASS = "ftlab-explore"
BUTTON_CLASS = "ftlab-run"
UPDATES_CLASS = "ftlab-updates-"


def explore(plot_fn: Callable, *, manual: bool = False, initial=None, button: str = "Run",
            **controls) -> Explorer:
    """Show controls for the keyword arguments of ``plot_fn`` and, under them, ``plot_fn``'s result.

    ``controls`` name parameters of ``plot_fn``; each is a widget or an abbreviation as in ``ipywidgets.interact``:
    a list (a dropdown), ``(min, max)`` or ``(min, max, step)`` (a slider), a bool (a checkbox), a str (a text
    box). The parameter's default is the control's starting value; parameters without a control keep their
    defaults.

    ``plot_fn`` returns a matplotlib Figure, a pandas DataFrame, anything else IPython can display, a tuple of
    those (shown one under the other), or None (nothing to show: say why with ``print``).
    ``manual=True``: update only when the ``button`` is pressed. ``initial``: the result to show before the
    first update (default: ``plot_fn`` called once with the starting values).

    Returns the ``Explorer`` (its ``controls``, ``update()``, ``output``); it displays as nothing, since the
    panel is already shown.
    """
    if not callable(plot_fn):
        raise TypeError(f"explore needs a function to call, got {type(plot_fn).__name__}")
    if not controls:
        raise ValueError("explore needs at least one control, e.g. explore(plot_fn, r=[1, 2, 4])")
    parameters = inspect.signature(plot_fn).parameters
    unknown = [name for name in controls if name not in parameters]
    if unknown:
        raise ValueError(f"{plot_fn.__name__} has no parameter {', '.join(unknown)}; "
                         f"its parameters are {', '.join(parameters) or '(none)'}")
    missing = [name for name, p in parameters.items()
               if name not in controls and p.default is inspect.Parameter.empty
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if missing:
        raise ValueError(f"{plot_fn.__name__}'s parameter {', '.join(missing)} has no default: "
                         f"give it a control, e.g. explore({plot_fn.__name__}, {missing[0]}=[...])")
    widgets = {name: make_control(name, spec, parameters[name].default) for name, spec in controls.items()}
    explorer = Explorer(plot_fn, widgets, manual=manual, button=button)
    explorer.show(initial)
    return explorer


def make_control(name: str, spec, default=inspect.Parameter.empty):
    """The widget for one control: ``spec`` itself if it is a widget, else ipywidgets' abbreviation rules."""
    import ipywidgets

    widget = ipywidgets.interactive.widget_from_abbrev(spec, default)
    if widget is None:
        raise ValueError(f"cannot make a control for {name} from {spec!r}: give a list of choices, (min, max) or "
                         f"(min, max, step) for a slider, a bool, a str, or an ipywidgets widget")
    if widget is not spec:
        widget.description = name
        widget.style.description_width = "initial"  # the whole name, never cut off (e.g. decompose_factor)
        if hasattr(widget, "continuous_update"):
            widget.continuous_update = False  # update when the slider is released, not at every pixel
    elif not widget.description:
        widget.description = name
    return widget


class Explorer:
    """The panel made by ``explore``: ``controls`` (name -> widget), a ``button`` when manual, ``output``
    (what the function prints), and ``handles``, the display handles of the result's parts."""

    def __init__(self, plot_fn: Callable, controls: dict, *, manual: bool, button: str):
        import ipywidgets

        self.plot_fn = plot_fn
        self.controls = controls
        self.output = ipywidgets.Output()
        self.button_text = button
        self.button = ipywidgets.Button(description=button, button_style="primary", icon="play") if manual else None
        self.updates = 0
        self.handles = []
        children = [*controls.values(), *([self.button] if manual else []), self.output]
        self.panel = ipywidgets.VBox(children)
        self.panel.add_class(PANEL_CLASS)
        self.panel.add_class(f"{UPDATES_CLASS}0")
        if manual:
            self.button.add_class(BUTTON_CLASS)
            self.button.on_click(self.update)
        else:
            for widget in controls.values():
                widget.observe(self.update, names="value")

    def values(self) -> dict:
        return {name: widget.value for name, widget in self.controls.items()}

    def show(self, initial=None) -> None:
        """Display the panel and, under it, the first result as ordinary outputs (the copy a saved notebook keeps).

        The first result is computed before anything is displayed, so what it prints (progress lines) comes
        above the panel, and an error leaves no half-drawn panel.
        """
        from IPython.display import display

        first = result_parts(self.plot_fn(**self.values()) if initial is None else initial)
        bundle = self.panel._repr_mimebundle_()
        names = ", ".join(self.controls)
        bundle["text/plain"] = f"[widget: {self.plot_fn.__name__}({names}); run the notebook to use it]"
        display(bundle, raw=True)
        self.handles = [display(part, display_id=True) for part in first]

    def update(self, *_) -> None:
        """Call the function with the controls' values and replace the shown result with its result.

        In a notebook a traceback appears in ``output`` and the previous result stays.
        """
        if self.button is not None:
            self.button.disabled, self.button.description = True, "Running..."
        parts = None
        try:
            self.output.clear_output()
            with self.output:
                result = result_parts(self.plot_fn(**self.values()))
                if len(result) > len(self.handles):
                    raise ValueError(f"{self.plot_fn.__name__} returned {len(result)} results, the first time "
                                     f"{len(self.handles)}: return the same number every time")
                parts = result
            if parts is not None:
                for handle, part in zip_longest(self.handles, parts):
                    if part is None:
                        handle.update({"text/plain": ""}, raw=True)
                    else:
                        handle.update(part)
        finally:
            self.panel.remove_class(f"{UPDATES_CLASS}{self.updates}")
            self.updates += 1
            self.panel.add_class(f"{UPDATES_CLASS}{self.updates}")
            if self.button is not None:
                self.button.disabled, self.button.description = False, self.button_text

    def _ipython_display_(self) -> None:
        """Nothing: ``explore`` has already shown the panel (so a cell ending in ``explore(...)`` shows it once)."""


def result_parts(result) -> tuple:
    """A result as a tuple of parts to display; figures are closed so the inline backend never shows them again."""
    parts = () if result is None else tuple(result) if isinstance(result, tuple) else (result,)
    for part in parts:
        if isinstance(part, Figure):
            plt.close(part)
    return parts
