"""Progress bars that read well while they run and after the notebook is saved.

``progress`` is used like tqdm: loop over it, or call ``update``, ``set_postfix`` and ``close``::

    bar = progress(range(num_steps), desc="fit", unit="steps")
    for step in bar:
        ...
        bar.set_postfix(loss=loss.item())

* In a Jupyter kernel it shows a live widget bar. When it closes, its output is replaced by one line of plain
  text, ``fit: 80/80 steps in 12.3 s, loss 0.1234``, so a saved notebook (and GitHub) shows the final state.
  (tqdm's widget bar stores the text it had when it was first displayed, "0%| 0/80", and keeps it.)
* In a terminal it redraws one text line; when the output is not a terminal (a log file, pytest) it prints only
  the final line.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable

# Redraw at most this often (seconds): a bar that redraws at every step slows a fast loop down.
REDRAW_EVERY = 0.1


def progress(iterable: Iterable | int | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "steps", leave: bool = True, disable: bool = False) -> Bar:
    """A progress bar over ``iterable`` (or over ``total`` steps counted with ``update``).

    ``progress(range(80), desc="fit")``, ``progress(80)`` and ``progress(total=80)`` all count to 80.
    ``leave=False`` removes the bar when it closes (as tqdm does); ``disable=True`` shows nothing.
    The bar is a widget in a Jupyter kernel (``WidgetBar``) and text elsewhere (``TextBar``).
    """
    if isinstance(iterable, int) and not isinstance(iterable, bool):
        if total is not None and total != iterable:
            raise ValueError(f"progress got {iterable} steps and total={total}: give the count once")
        iterable, total = None, iterable
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
        raise ValueError(f"total must be a whole number of steps >= 0, got {total!r}")
    kind = WidgetBar if in_notebook() and not disable else TextBar
    return kind(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=disable)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where a widget can be shown), False in a terminal or a script."""
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


class Bar:
    """Counts steps and time and formats them; ``TextBar`` and ``WidgetBar`` draw them."""

    def __init__(self, iterable: Iterable | None, *, total: int | None, desc: str, unit: str, leave: bool,
                 disable: bool):
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.leave = leave
        self.disable = disable
        self.n = 0
        self.postfix: dict[str, str] = {}
        self.closed = False
        self.start = time.perf_counter()
        self.last_draw = self.start

    def __iter__(self):
        if self.iterable is None:
            raise TypeError("this bar has no iterable to loop over: call update() instead, or pass one")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("this bar has no total")
        return self.total

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more steps."""
        self.n += n
        now = time.perf_counter()
        if not self.disable and (now - self.last_draw >= REDRAW_EVERY or self.n == self.total):
            self.last_draw = now
            self.draw()

    def set_postfix(self, **values) -> None:
        """Show ``name value`` pairs after the count, e.g. ``set_postfix(loss=0.123)``; floats get 4 digits."""
        self.postfix = {name: f"{value:.4g}" if isinstance(value, float) else str(value)
                        for name, value in values.items()}

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def close(self) -> None:
        """Show the final line (or remove the bar when ``leave=False``); a second close does nothing."""
        if self.closed:
            return
        self.closed = True
        if not self.disable:
            self.finish()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def count(self) -> str:
        """``"36/80 steps"``, or ``"36 steps"`` without a total."""
        return f"{self.n}/{self.total} {self.unit}" if self.total is not None else f"{self.n} {self.unit}"

    def extras(self) -> str:
        return "".join(f", {name} {value}" for name, value in self.postfix.items())

    def live_text(self) -> str:
        """The count, the time so far and the time left, e.g. ``fit: 36/80 steps, 4.1 s (5.0 s left), loss 0.2``."""
        elapsed = self.elapsed
        left = ""
        if self.total and 0 < self.n < self.total:
            left = f" ({elapsed / self.n * (self.total - self.n):.1f} s left)"
        prefix = f"{self.desc}: " if self.desc else ""
        return f"{prefix}{self.count()}, {elapsed:.1f} s{left}{self.extras()}"

    def summary(self) -> str:
        """The final line, e.g. ``fit: 80/80 steps in 12.3 s, loss 0.1234`` (``stopped`` when it ended early)."""
        stopped = " (stopped)" if self.total is not None and self.n < self.total else ""
        prefix = f"{self.desc}: " if self.desc else ""
        return f"{prefix}{self.count()} in {self.elapsed:.1f} s{self.extras()}{stopped}"

    def draw(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError


class TextBar(Bar):
    """One line on stderr, redrawn in place on a terminal; elsewhere only the final line is printed."""

    width = 20

    def __init__(self, *args, stream=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.drawn = 0

    def draw(self) -> None:
        if not self.live:
            return
        text = self.live_text()
        if self.total:
            filled = self.width * min(self.n, self.total) // self.total
            text = f"[{'#' * filled}{' ' * (self.width - filled)}] {text}"
        self.write(text)

    def write(self, text: str) -> None:
        self.stream.write("\r" + text.ljust(self.drawn))
        self.drawn = len(text)
        self.stream.flush()

    def finish(self) -> None:
        if self.leave and self.live:
            self.write(self.summary())
            self.stream.write("\n")
        elif self.leave:
            self.stream.write(self.summary() + "\n")
        elif self.drawn:
            self.write("")
            self.stream.write("\r")
        self.stream.flush()


class WidgetBar(Bar):
    """A live ipywidgets bar whose output becomes the plain-text final line when it closes.

    The bar is displayed with a display id; ``close`` updates that output to the final line
    (``update_display_data``), which both JupyterLab and nbconvert apply to the saved notebook.
    Inside an ``ipywidgets.Output`` (a widget's callback) that update does not reach the page, so the
    widget itself also shows the final line.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import ipywidgets
        from IPython.display import display

        self.bar = ipywidgets.IntProgress(value=0, min=0, max=max(self.total or 1, 1), bar_style="info")
        self.bar.layout.display = None if self.total else "none"
        self.label = ipywidgets.Label(value=self.live_text())
        self.box = ipywidgets.HBox([self.bar, self.label])
        bundle = self.box._repr_mimebundle_()
        bundle["text/plain"] = f"{self.desc or 'progress'}: running (a live bar; its final line replaces this)"
        self.handle = display(bundle, raw=True, display_id=True)

    def draw(self) -> None:
        self.bar.value = min(self.n, self.bar.max)
        self.label.value = self.live_text()

    def finish(self) -> None:
        self.draw()
        stopped = self.total is not None and self.n < self.total
        self.bar.bar_style = "warning" if stopped else "success"
        self.label.value = self.summary()
        if self.leave:
            self.handle.update({"text/plain": self.summary()}, raw=True)
        else:
            self.handle.update({"text/plain": ""}, raw=True)
            self.box.close()
