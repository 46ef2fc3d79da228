"""Exercise checkers: each prints ``[PASS]`` or ``[FAIL]`` with a hint, and returns a bool.

A checker calls the student's function on small inputs and compares the result with
ftlab's own implementation. Hints are graduated: first *what* is wrong, then *where to
look*. A function that still raises ``NotImplementedError`` fails with a reminder.
"""
from __future__ import annotations

from typing import Callable

import torch


def _report(name: str, problems: list[tuple[str, str]]) -> bool:
    """Print the verdict for exercise ``name``; ``problems`` holds (what is wrong, where to look)."""
    if not problems:
        print(f"[PASS] {name}")
        return True
    what, where = problems[0]
    print(f"[FAIL] {name}: {what}")
    print(f"       hint: {where}")
    return False


def _call(name: str, fn: Callable, *args):
    """Call the student's ``fn``; return (result, problems) with a friendly problem on failure."""
    try:
        return fn(*args), []
    except NotImplementedError:
        return None, [("the function is not written yet (it raises NotImplementedError)",
                       "replace the `raise NotImplementedError` line with your code")]
    except Exception as err:  # the student's code may fail in any way; say how
        return None, [(f"calling it raised {type(err).__name__}: {err}", "run it on a small input and read the traceback")]


def check_adamw_bytes_per_parameter(fn: Callable[[int], int]) -> bool:
    """Exercise (notebook 00): ``fn(n)`` returns the bytes that full fine-tuning with AdamW in
    float32 keeps for ``n`` trainable parameters: weights + gradients + two moments."""
    name = "AdamW bytes per parameter"
    result, problems = _call(name, fn, 1000)
    if not problems:
        if not isinstance(result, int):
            problems.append((f"expected an int number of bytes, got {type(result).__name__}",
                             "multiply whole numbers; do not divide"))
        elif result == 4 * 1000:
            problems.append(("that counts the weights only", "training also keeps a gradient per weight, and AdamW two moments"))
        elif result == 12 * 1000:
            problems.append(("one of AdamW's two moments is missing", "AdamW keeps exp_avg and exp_avg_sq per parameter"))
        elif result != 16 * 1000:
            problems.append((f"fn(1000) gave {result}, expected a different number of bytes",
                             "float32 is 4 bytes; count weight, gradient, exp_avg and exp_avg_sq"))
    return _report(name, problems)

