"""Checks for options, and the one way to run a model in eval mode for a while.

Every public function of ftlab validates its options before it changes anything, with a
message that says what was wrong and what would be right. The checks that many modules
need live here once; each returns the value it checked, so a call reads as an assignment:

    r = check_positive_int("r", r)

``bool`` is refused where a number is asked for: ``True`` is an ``int`` in Python, but
``r=True`` is always a mistake.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(name: str, value, *, minimum: int | None = None) -> int:
    """``value`` as an int (not a bool, not a float such as 2.5), at least ``minimum`` if given."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a whole number, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def check_positive_int(name: str, value) -> int:
    """``value`` as an int >= 1 (a count, a rank, a number of steps)."""
    return check_int(name, value, minimum=1)


def check_number(name: str, value, *, minimum: float | None = None, maximum: float | None = None,
                 strict_minimum: bool = False) -> float:
    """``value`` as a finite float (not a string such as "1e-3", not NaN or infinite), within the bounds given.

    ``strict_minimum=True`` excludes ``minimum`` itself (e.g. a learning rate must be > 0).
    """
    if not _is_number(value):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if minimum is not None and (value <= minimum if strict_minimum else value < minimum):
        relation = "greater than" if strict_minimum else "at least"
        raise ValueError(f"{name} must be {relation} {minimum:g}, got {value:g}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum:g}, got {value:g}")
    return value


def check_probability(name: str, value) -> float:
    """``value`` as a dropout-style probability in [0, 1)."""
    value = check_number(name, value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), got {value:g}")
    return value


def check_bool(name: str, value) -> bool:
    """``value`` if it is True or False (not 1, 0 or "yes")."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def check_choice(name: str, value, choices, hint: str = "") -> object:
    """``value`` if it is one of ``choices`` (True is not taken for 1); otherwise a ValueError that lists them,
    followed by ``hint`` (say what the other values would need)."""
    if not any(value == choice and type(value) is type(choice) for choice in choices):
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}"
                         + (f". {hint}" if hint else ""))
    return value


@contextlib.contextmanager
def eval_mode(*models: torch.nn.Module) -> Iterator[None]:
    """Put ``models`` in eval mode for the ``with`` block, then give each back the mode it had.

        with eval_mode(model):
            logits = model(x)    # dropout off, BatchNorm uses its running statistics
    """
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for model, training in zip(models, modes):
            model.train(training)
