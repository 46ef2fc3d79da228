"""Exercise checkers: each prints ``[PASS]`` or ``[FAIL]`` with a hint, and returns a bool.

How every checker works:

- **Several random cases.** It calls your function on several cases drawn at random (sizes, dtypes and the
  edge cases the exercise is about), and checks the properties the exercise is about, not just one value: for
  LoRA's forward pass, that the (out, in) matrix B A is never built and that gradients reach A and B.
- **The reference is refused.** While your function runs, the ftlab function the exercise asks you to write is
  replaced, in its module, in every ftlab module that imported it and in your notebook's globals, by a stub that
  raises "write it yourself"; everything is put back afterwards, even when your function raises.
- **Graduated hints.** The first failure says what is wrong (which case, expected against got); the second adds
  where to look (the equation or the notebook's section); the third and later add a sketch of the solution with
  blanks to fill, never the solution itself. The count is per exercise (``check_x.exercise.attempts``) and goes
  back to 0 on success.

A checker is written as ``@exercise(...)`` on a function of ``call``, which calls the student's function
(``call(*args, case="...")``, or another of the student's callables with ``fn=``) and returns the first
:class:`Problem` found, or None. The decorated name takes the student's function and returns True or False.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import math
import numbers
import random
import re
import string
import sys
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

# ---- the framework --------------------------------------------------------------------------------------------


class Problem(NamedTuple):
    """What is wrong (attempt 1), where to look (attempt 2) and a sketch (attempt 3+); empty: the exercise's own."""

    what: str
    where: str = ""
    sketch: str = ""


class Refused(RuntimeError):
    """Raised by the stub that stands in for a reference function while a checker runs."""


class StudentFailed(Exception):
    """Raised by ``call`` when the student's function raises: it carries the Problem to report."""

    def __init__(self, problem: Problem):
        super().__init__(problem.what)
        self.problem = problem


def stub(name: str, task: str) -> Callable:
    """A function that raises ``Refused`` with "write it yourself" for the reference ``name``."""

    def refused(*args, **kwargs):
        raise Refused(f"write it yourself: this exercise asks you to implement {task} (ftlab's `{name}` is "
                      f"switched off while the checker runs)")

    return refused


@contextlib.contextmanager
def refusing(references: dict[str, object], task: str, namespaces: list[dict]):
    """Within the block, every binding of each reference (``{name: object}``) in ftlab's modules and in
    ``namespaces`` (the student's globals) is a stub that raises ``Refused``; all are restored afterwards."""
    swaps = []  # (namespace, key, original), in the order they were made
    try:
        spaces = [vars(m) for name, m in list(sys.modules.items())
                  if references and (name == "ftlab" or name.startswith("ftlab."))]
        for name, original in references.items():
            replacement = stub(name, task)
            for space in spaces + namespaces:
                for key, value in list(space.items()):
                    if value is original:
                        swaps.append((space, key, original))
                        space[key] = replacement
        yield
    finally:
        for space, key, original in reversed(swaps):
            space[key] = original


def resolve(reference: str) -> tuple[str, object]:
    """``"ftlab.align.dpo:dpo_loss"`` -> (``"dpo_loss"``, the function), importing the module."""
    module, _, attribute = reference.partition(":")
    return attribute, getattr(importlib.import_module(module), attribute)


def student_globals(fn) -> list[dict]:
    """The global namespaces the student's function reads names from (its own, or a partial's function's)."""
    target = fn.func if isinstance(fn, functools.partial) else fn
    space = getattr(target, "__globals__", None)
    return [space] if isinstance(space, dict) else []


def holds_reference(fn, originals: list) -> bool:
    """True when ``fn`` is a reference, wraps one, or keeps one in its defaults or closure."""
    if isinstance(fn, functools.partial):
        return holds_reference(fn.func, originals)
    held = [fn, getattr(fn, "__wrapped__", None), getattr(fn, "__self__", None)]
    held += list(getattr(fn, "__defaults__", None) or ()) + list((getattr(fn, "__kwdefaults__", None) or {}).values())
    for cell in getattr(fn, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            held.append(cell.cell_contents)
    return any(h is o for h in held for o in originals)


class Exercise:
    """One checked exercise: its name, hints and refused references, and the attempts since the last success."""

    def __init__(self, name: str, *, task: str, where: str, sketch: str, refuse: tuple[str, ...] = ()):
        self.name, self.task, self.where, self.sketch, self.refuse = name, task, where, sketch, refuse
        self.attempts = 0

    def report(self, problem: Problem | None) -> bool:
        """Print the verdict with the hints this attempt has earned; count the attempt, or reset on success."""
        if problem is None:
            self.attempts = 0
            print(f"[PASS] {self.name}")
            return True
        self.attempts += 1
        print(f"[FAIL] {self.name} (attempt {self.attempts}): {problem.what}")
        if self.attempts >= 2:
            print(f"       where to look: {problem.where or self.where}")
        if self.attempts >= 3:
            print(f"       sketch: {problem.sketch or self.sketch}")
        return False

    def check(self, fn: Callable, find_problem: Callable) -> bool:
        """Run ``find_problem(call)`` on the student's ``fn`` and report the first problem."""
        references = dict(resolve(r) for r in self.refuse)
        if not callable(fn):
            return self.report(Problem(f"expected a function, got {type(fn).__name__}",
                                       "pass the function itself: check_x(my_function), without calling it"))
        if holds_reference(fn, list(references.values())):
            return self.report(Problem(f"that is ftlab's own function: write it yourself, this exercise asks you "
                                       f"to implement {self.task}"))
        namespaces = student_globals(fn)

        def call(*args, case: str, fn=fn):
            with refusing(references, self.task, namespaces):
                try:
                    return fn(*args)
                except NotImplementedError:
                    raise StudentFailed(Problem(
                        "the function is not written yet (it raises NotImplementedError)",
                        "replace the `raise NotImplementedError` line with your code")) from None
                except Refused as err:
                    raise StudentFailed(Problem(f"{case}: your function calls ftlab's own code. {err}")) from None
                except Exception as err:  # the student's code may fail in any way; say how and where
                    raise StudentFailed(Problem(
                        f"{case}: calling it raised {type(err).__name__}: {err}",
                        "run it on a small input of that shape and read the traceback")) from None

        try:
            problem = find_problem(call)
        except StudentFailed as failed:
            problem = failed.problem
        return self.report(problem)


def exercise(name: str, *, task: str, where: str, sketch: str, refuse: tuple[str, ...] = ()):
    """Make ``find_problem(call) -> Problem | None`` into the checker ``check(fn) -> bool`` of one exercise.

    ``task``: what the student implements (said when a refused reference is called); ``where``: the equation or
    notebook section (hint of attempt 2); ``sketch``: the solution with blanks (attempt 3+); ``refuse``:
    ``"module:name"`` of each ftlab function the student's code may not call while the checker runs.
    """

    def wrap(find_problem: Callable) -> Callable[[Callable], bool]:
        state = Exercise(name, task=task, where=where, sketch=sketch, refuse=refuse)

        @functools.wraps(find_problem, assigned=("__module__", "__name__", "__qualname__", "__doc__"))
        def check(fn: Callable) -> bool:
            return state.check(fn, find_problem)

        del check.__wrapped__  # help() and inspect show check(fn), not the inner find_problem(call)
        check.exercise = state
        return check

    return wrap


# ---- helpers shared by the checkers ---------------------------------------------------------------------------


def shape(t) -> str:
    """``(3, 4) float64`` for a tensor, the type name otherwise: how a case names its inputs."""
    if isinstance(t, torch.Tensor):
        return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
    return type(t).__name__


def as_tensor(result, name: str = "the result") -> tuple[torch.Tensor | None, Problem | None]:
    """The student's result as a plain tensor, or a Problem saying it is not one."""
    if isinstance(result, torch.Tensor):
        return result.as_subclass(torch.Tensor), None
    return None, Problem(f"{name} should be a torch tensor, got {type(result).__name__}",
                         "build it from the input tensors with torch operations, and return it")


def tolerance(dtype: torch.dtype) -> dict:
    """rtol/atol for comparing results computed in ``dtype``."""
    return {"rtol": 1e-9, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 1e-5}


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Same shape and values within ``want``'s dtype tolerance (compared in float64)."""
    return (tuple(got.shape) == tuple(want.shape)
            and torch.allclose(got.double(), want.double(), **tolerance(want.dtype)))


def is_whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def rounded(values, digits: int = 4) -> list:
    return [round(float(v), digits) for v in values]


def untouched(before: dict, after: dict) -> str | None:
    """The name of the first input the student's function changed in place, or None."""
    for name, t in before.items():
        if not torch.equal(t, after[name]):
            return name
    return None


# ---- notebook 00: what full fine-tuning costs -------------------------------------------------------------------


@exercise("AdamW bytes per parameter", task="the bytes AdamW training keeps per parameter",
          where="what one training step keeps for every trainable parameter: the weight itself, its gradient "
                "(p.grad, p's shape) and AdamW's state (print optimizer.state[p].keys() after one step); each is a "
                "float32 number",
          sketch="bytes = n * (bytes of the weight + bytes of its gradient + bytes of ____ + bytes of ____), "
                 "with 4 bytes per float32 number")
def check_adamw_bytes_per_parameter(call) -> Problem | None:
    """Exercise (notebook 00): ``fn(n)`` returns the bytes that full fine-tuning with AdamW in float32 keeps for
    ``n`` trainable parameters (weights, gradients and optimizer state; activations aside). Tested on random n."""
    rng = random.Random(0)
    cases = [1000, 1, 0, 7, rng.randint(2, 10_000), rng.randint(10**6, 10**8), 22_713_986, 7 * 10**9]
    first = None
    for n in cases:
        got = call(n, case=f"n={n:,}")
        want = 16 * n
        if not is_whole(got):
            return Problem(f"fn({n:,}) gave {got!r} ({type(got).__name__}); expected a whole number of bytes (int)",
                           "count bytes with whole numbers: multiply, do not divide or use floats")
        if first is None:
            first = (n, got)
        elif n and got == first[1] and first[0] != n:
            return Problem(f"fn({first[0]:,}) and fn({n:,}) both give {got:,}: the bytes must grow with n")
        if got == want:
            continue
        if n and got == 16:
            return Problem(f"fn({n:,}) gave 16: that is per parameter, the function must give the bytes of all n")
        named = {4 * n: "only the weights", 8 * n: "two of the four float32 numbers per parameter",
                 12 * n: "three of the four float32 numbers per parameter", 32 * n: "twice too much",
                 128 * n: "bits, not bytes"}
        if n and got in named:
            return Problem(f"fn({n:,}) gave {got:,}: that counts {named[got]}")
        return Problem(f"fn({n:,}) gave {got:,}, expected {want:,}")
    return None


DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
OPTIMIZER_STATES = {"sgd": 0, "momentum": 1, "adamw": 2}  # float numbers the optimizer keeps per parameter


@exercise("training bytes for any dtype and optimizer", task="the bytes of a training step from n, dtype and optimizer",
          where="notebook 00, section 2 (what a step keeps per parameter) and the torch.optim docs: plain SGD keeps no "
                "state, SGD with momentum one buffer (momentum_buffer), AdamW two (exp_avg, exp_avg_sq); the bytes of "
                "one number of a dtype: torch.tensor([], dtype=dtype).element_size()",
          sketch="size = bytes of one number in dtype; states = {'sgd': ___, 'momentum': ___, 'adamw': ___}; "
                 "return n * size * (weight + gradient + states[optimizer])")
def check_training_bytes(call) -> Problem | None:
    """Exercise (notebook 00): ``fn(n, dtype, optimizer)`` returns the bytes that training ``n`` parameters keeps
    when weights, gradients and optimizer state are all stored in ``dtype``; ``optimizer`` is "sgd" (no momentum),
    "momentum" (SGD with momentum) or "adamw". Tested on random n, every dtype and every optimizer."""
    rng = random.Random(1)
    cases = [(1000, torch.float32, "adamw"), (1000, torch.bfloat16, "adamw"), (1, torch.float64, "sgd")]
    cases += [(rng.randint(2, 10**9), rng.choice(DTYPES), rng.choice(list(OPTIMIZER_STATES))) for _ in range(12)]
    cases += [(rng.randint(2, 10**6), dtype, opt) for dtype in DTYPES for opt in OPTIMIZER_STATES]
    for n, dtype, optimizer in cases:
        size = torch.tensor([], dtype=dtype).element_size()
        got = call(n, dtype, optimizer, case=f"n={n:,}, {dtype}, {optimizer!r}")
        want = n * size * (2 + OPTIMIZER_STATES[optimizer])
        case = f"fn({n:,}, {dtype}, {optimizer!r}) gave {got!r}"
        if not is_whole(got):
            return Problem(f"{case}; expected a whole number of bytes (int)",
                           "multiply whole numbers: element_size() is an int")
        if got == want:
            continue
        if got == n * 4 * (2 + OPTIMIZER_STATES[optimizer]) and size != 4:
            return Problem(f"{case}, expected {want:,}: that is the float32 figure; a {dtype} number is not 4 bytes")
        if got == n * size * 4 and optimizer != "adamw":
            return Problem(f"{case}, expected {want:,}: that is AdamW's figure; {optimizer!r} keeps "
                           f"{OPTIMIZER_STATES[optimizer]} state number(s) per parameter, not 2")
        if got == 8 * want:
            return Problem(f"{case}, expected {want:,}: that counts bits, not bytes")
        if got == n * size * (1 + OPTIMIZER_STATES[optimizer]):
            return Problem(f"{case}, expected {want:,}: one number per parameter is missing (the gradient?)")
        return Problem(f"{case}, expected {want:,}")
    return None


# ---- notebook 01: a new head -----------------------------------------------------------------------------------


class StandIn(torch.nn.Module):
    """Stands in for a pretrained classifier: a small convolutional body with ``width`` features, then ``fc``."""

    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                        torch.nn.Flatten())
        self.fc = torch.nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


@exercise("a new head for a pretrained ResNet", task="the head swap",
          where="notebook 01, section 2: load_resnet replaces the 52-letter head `fc` by a new Linear; the backbone's "
                "output width is the old head's `in_features`",
          sketch="model.fc = torch.nn.Linear(model.fc.________, ____); return model",
          refuse=("ftlab.zoo:load_resnet",))
def check_new_head(call) -> Problem | None:
    """Exercise (notebook 01): ``fn(model, num_classes)`` gives a pretrained classifier a new, trainable head
    ``fc = Linear(in_features, num_classes)`` and returns the model, every backbone weight and flag as it was.
    Tested on torchvision's ResNet-18 and on stand-in models of other widths (one of them frozen)."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    rng = random.Random(2)
    cases = [("ResNet-18", resnet18(num_classes=52).eval(), 10)]
    for width in (64, 96, 32):
        cases.append((f"a model whose backbone gives {width} features", StandIn(width, 52).eval(), rng.randint(2, 100)))
    cases[-1][1].requires_grad_(False)  # a frozen model: the new head must still train
    for label, model, num_classes in cases:
        width = model.fc.in_features
        old_head = model.fc.weight.detach().clone()
        backbone = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
        flags = {k: p.requires_grad for k, p in model.named_parameters() if not k.startswith("fc.")}
        case = f"{label}, num_classes={num_classes}"
        result = call(model, num_classes, case=case)
        head = getattr(result, "fc", None)
        if not isinstance(result, torch.nn.Module):
            return Problem(f"{case}: expected the model back, got {type(result).__name__}",
                           "end the function with `return model`")
        if not isinstance(head, torch.nn.Linear):
            return Problem(f"{case}: model.fc should be a torch.nn.Linear, got {type(head).__name__}",
                           "assign a new torch.nn.Linear to model.fc")
        if head.out_features != num_classes:
            return Problem(f"{case}: the head has {head.out_features} outputs, expected one per class ({num_classes})",
                           "the second argument of torch.nn.Linear is the number of outputs")
        if head.in_features != width:
            return Problem(f"{case}: the head takes {head.in_features} features, but this backbone gives {width}",
                           "read the width from the model instead of writing a number: the old head knows it")
        if not all(p.requires_grad for p in head.parameters()):
            return Problem(f"{case}: the new head is frozen", "a new head must train: leave requires_grad=True")
        if num_classes <= old_head.shape[0] and torch.equal(head.weight.detach(), old_head[:num_classes]):
            return Problem(f"{case}: the new head reuses rows of the old head's weights",
                           "a new task needs a new head, with fresh random weights")
        state = result.state_dict()
        if any(k not in state or not torch.equal(state[k], v) for k, v in backbone.items()):
            return Problem(f"{case}: the backbone's weights changed", "replace only model.fc; keep the rest as loaded")
        if any(p.requires_grad != flags[k] for k, p in result.named_parameters() if k in flags):
            return Problem(f"{case}: the backbone's requires_grad flags changed",
                           "the swap should not decide what else trains: leave the backbone's flags alone")
        logits = call(torch.zeros(2, 3, 32, 32), case=f"{case}, the returned model on 2 images", fn=result)
        if tuple(logits.shape) != (2, num_classes):
            return Problem(f"{case}: the model gives logits of shape {tuple(logits.shape)}, "
                           f"expected (2, {num_classes})", "the head must be the model's last layer")
    return None


# ---- notebook 02: discriminative learning rates ----------------------------------------------------------------


@exercise("discriminative learning rates", task="the learning rate of each layer group",
          where="notebook 02, section 2: the head trains at lr, and each group below it `factor` times slower than "
                "the group above (ULMFiT, Howard & Ruder 2018)",
          sketch="[lr / factor ** (number of groups between group k and the head) for k in range(num_groups)]",
          refuse=("ftlab.methods.freeze:discriminative_param_groups",))
def check_discriminative_lrs(call) -> Problem | None:
    """Exercise (notebook 02): ``fn(lr, num_groups, factor)`` returns the learning rate of each layer group, input
    side first: the head (last group) at ``lr``, each group below ``factor`` times slower. Random lr, G, factor."""
    rng = random.Random(3)
    cases = [(1e-3, 6, 2.6), (1e-3, 4, 2.6), (3e-3, 6, 2.0), (5e-4, 1, 2.6), (1e-3, 3, 1.0)]
    cases += [(10 ** rng.uniform(-5, -2), rng.randint(2, 12), rng.uniform(1.2, 10)) for _ in range(6)]

    def same(a: list, b: list) -> bool:
        return len(a) == len(b) and all(math.isclose(u, v, rel_tol=1e-9) for u, v in zip(a, b))

    for lr, G, factor in cases:
        want = [lr / factor ** (G - 1 - k) for k in range(G)]
        case = f"lr={lr:.3g}, num_groups={G}, factor={factor:.3g}"
        got = call(lr, G, factor, case=case)
        try:
            got = [float(v) for v in got]
        except (TypeError, ValueError):
            return Problem(f"{case}: expected a list of numbers, got {type(got).__name__}",
                           "return one learning rate per group, e.g. a list comprehension over range(num_groups)")
        if same(got, want):
            continue
        if len(got) != G:
            return Problem(f"{case}: got {len(got)} rates for {G} groups", "return one rate per layer group")
        if same(got, want[::-1]):
            return Problem(f"{case}: the order is reversed: the input side gets the largest rate",
                           "list the groups input side first; the last group (the head) trains at lr")
        if same(got, [lr / factor ** (G - k) for k in range(G)]):
            return Problem(f"{case}: every rate is `factor` times too small: the head should train at exactly lr")
        if same(got, [lr / (factor * (G - 1 - k) or 1) for k in range(G)]):
            return Problem(f"{case}: the rates fall linearly, not geometrically",
                           "each group is `factor` times slower than the one above: powers of factor")
        return Problem(f"{case}: expected {[f'{v:.3g}' for v in want]}, got {[f'{v:.3g}' for v in got]}")
    return None


@exercise("the factor for a given spread of rates", task="the discriminative factor from the ratio of rates",
          where="notebook 02, section 2: group k of G trains at lr / factor^(G-1-k); write the stem's rate (k = 0) "
                "as lr / ratio and solve for factor",
          sketch="the stem is ____ groups below the head, so ratio = factor ** ____; undo the power")
def check_discriminative_factor(call) -> Problem | None:
    """Exercise (notebook 02): ``fn(ratio, num_groups)`` returns the discriminative factor that makes the stem
    (group 0) train ``ratio`` times slower than the head (group G-1). Random ratio and G."""
    rng = random.Random(4)
    cases = [(2.6 ** 5, 6), (100.0, 6), (8.0, 4), (50.0, 2)]
    cases += [(rng.uniform(1.5, 2000), rng.randint(2, 12)) for _ in range(8)]
    for ratio, G in cases:
        want = ratio ** (1 / (G - 1))
        case = f"ratio={ratio:.4g}, num_groups={G}"
        got = call(ratio, G, case=case)
        if not isinstance(got, numbers.Real) or isinstance(got, bool):
            return Problem(f"{case}: expected a number, got {type(got).__name__}", "return the factor as a float")
        if math.isclose(got, want, rel_tol=1e-9):
            continue
        if G > 2 and math.isclose(got, ratio ** (1 / G), rel_tol=1e-9):
            return Problem(f"{case}: gave {got:.4g}, expected {want:.4g}: with G groups the stem is G-1 steps "
                           f"below the head, not G")
        if math.isclose(got, ratio / (G - 1), rel_tol=1e-9):
            return Problem(f"{case}: gave {got:.4g}, expected {want:.4g}: the rates fall by a factor per group "
                           f"(multiplied), so the spread is a power of the factor, not a multiple")
        return Problem(f"{case}: gave {got:.4g}, expected {want:.4g}")
    return None


# ---- notebook 03: bottleneck adapters --------------------------------------------------------------------------


def adapter_reference(h, W_down, b_down, W_up, b_up, act=torch.relu):
    """h + act(h W_down^T + b_down) W_up^T + b_up for h (..., d): the reference the checkers compare with."""
    return h + act(h @ W_down.T + b_down) @ W_up.T + b_up


@exercise("bottleneck adapter forward pass", task="the adapter's forward pass",
          where="notebook 03, introduction: adapter(h) = h + W_up f(W_down h + b_down) + b_up, here with f = ReLU; a "
                "batch h is (..., d), so each matrix product multiplies by the transpose",
          sketch="z = relu(h @ ______ + ______)   # (..., b); return h + z @ ______ + ______   # (..., d)",
          refuse=("ftlab.methods.adapter:BottleneckMLP",))
def check_adapter_forward(call) -> Problem | None:
    """Exercise (notebook 03): ``fn(h, W_down, b_down, W_up, b_up)`` returns a ReLU bottleneck adapter's output
    h + relu(h W_down^T + b_down) W_up^T + b_up for h (..., d); W_down (b, d), W_up (d, b). Random sizes and
    dtypes, a non-zero W_up; gradients must reach every input."""
    gen = torch.Generator().manual_seed(5)
    rng = random.Random(5)
    cases = [((5, 8), 2, torch.float32), ((3, 7, 16), 4, torch.float64)]
    cases += [((rng.randint(1, 9), d := rng.randint(4, 40)), rng.randint(1, d // 2), rng.choice([torch.float32,
              torch.float64])) for _ in range(4)]
    for h_shape, b, dtype in cases:
        d = h_shape[-1]
        inputs = {"h": torch.randn(h_shape, generator=gen, dtype=dtype),
                  "W_down": torch.randn(b, d, generator=gen, dtype=dtype) / math.sqrt(d),
                  "b_down": torch.randn(b, generator=gen, dtype=dtype),
                  "W_up": torch.randn(d, b, generator=gen, dtype=dtype),
                  "b_up": torch.randn(d, generator=gen, dtype=dtype)}
        before = {k: v.clone() for k, v in inputs.items()}
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        want = adapter_reference(*leaves.values())
        grad_out = torch.randn(want.shape, generator=gen, dtype=dtype)
        want_grads = torch.autograd.grad(want, list(leaves.values()), grad_out)
        case = f"h {shape(inputs['h'])}, bottleneck b={b}"
        args = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        got, problem = as_tensor(call(*args.values(), case=case))
        if problem:
            return problem._replace(what=f"{case}: {problem.what}")
        h, Wd, bd, Wu, bu = (v.detach() for v in args.values())
        z = h @ Wd.T + bd
        if tuple(got.shape) != tuple(want.shape):
            return Problem(f"{case}: the output has shape {tuple(got.shape)}, expected {tuple(want.shape)} (h's shape)",
                           "h @ W_down.T is (..., b) and multiplying that by W_up.T gives (..., d) again")
        if not close(got.detach(), want.detach()):
            named = [(torch.relu(z) @ Wu.T + bu, "the residual connection is missing: that is the MLP alone"),
                     (h + z @ Wu.T + bu, "the non-linearity is missing: two linear maps in a row are one low-rank map"),
                     (h + torch.relu(z) @ Wu.T, "the up projection's bias b_up is missing"),
                     (h + torch.relu(h @ Wd.T) @ Wu.T + bu, "the down projection's bias b_down is missing"),
                     (h + F.silu(z) @ Wu.T + bu, "that is a swish (SiLU) adapter; this exercise asks for ReLU")]
            for value, message in named:
                if close(got.detach(), value):
                    return Problem(f"{case}: {message}")
            return Problem(f"{case}: the values differ from adapter(h) (largest difference "
                           f"{(got.detach() - want.detach()).abs().max().item():.3g})")
        changed = untouched(before, {k: v.detach() for k, v in args.items()})
        if changed:
            return Problem(f"{case}: your function changed its input `{changed}` in place",
                           "compute new tensors; never modify the inputs (no +=, no in-place methods)")
        if not got.requires_grad:
            return Problem(f"{case}: the output carries no gradient: something was detached",
                           "do not use .detach(), .data, .item() or torch.no_grad() in the forward pass")
        got_grads = torch.autograd.grad(got, list(args.values()), grad_out, allow_unused=True)
        for name, g, w in zip(args, got_grads, want_grads):
            if g is None or not close(g, w):
                return Problem(f"{case}: the gradient of {name} is {'missing' if g is None else 'wrong'}",
                               "compute the output with torch operations on the inputs themselves, nothing detached")
    return None


@exercise("an adapter that can learn", task="the adapter's initialisation",
          where="notebook 03, introduction: the adapter must start as the identity, and every factor must receive a "
                "gradient within the first steps; write out d adapter / d W_down and d adapter / d W_up at the start",
          sketch="W_down = small random (b, d); b_down = zeros(b); W_up = ______; b_up = ______: one factor random, "
                 "the other one zero, so the output starts at h and the zero factor still gets a gradient",
          refuse=("ftlab.methods.adapter:BottleneckMLP",))
def check_adapter_init(call) -> Problem | None:
    """Exercise (notebook 03, find the bug): ``fn(d, b)`` returns ``(W_down, b_down, W_up, b_up)`` of a ReLU adapter,
    shapes (b, d), (b,), (d, b), (d,), such that the adapter starts as the identity AND every parameter moves within
    two SGD steps (checked by training it on a random regression problem)."""
    rng = random.Random(6)
    cases = [(16, 4), (384, 24)] + [(rng.randint(8, 64), rng.randint(2, 8)) for _ in range(3)]
    for d, b in cases:
        case = f"d={d}, b={b}"
        torch.manual_seed(rng.randint(0, 10**6))
        got = call(d, b, case=case)
        if not isinstance(got, (tuple, list)) or len(got) != 4 or not all(isinstance(t, torch.Tensor) for t in got):
            return Problem(f"{case}: expected four tensors (W_down, b_down, W_up, b_up), got {type(got).__name__}",
                           "end with `return W_down, b_down, W_up, b_up`")
        params = [t.detach().as_subclass(torch.Tensor).clone().double() for t in got]
        names = ("W_down", "b_down", "W_up", "b_up")
        for name, t, want in zip(names, params, [(b, d), (b,), (d, b), (d,)]):
            if tuple(t.shape) != want:
                return Problem(f"{case}: {name} has shape {tuple(t.shape)}, expected {want}",
                               "W_down maps d to b: (b, d); W_up maps b back to d: (d, b)")
        if not all(torch.isfinite(t).all() for t in params):
            return Problem(f"{case}: the parameters hold NaN or infinite values")
        h = torch.randn(32, d, dtype=torch.float64)
        start = adapter_reference(h, *params)
        if not torch.allclose(start, h):
            return Problem(f"{case}: the adapter does not start as the identity (adapter(h) - h is up to "
                           f"{(start - h).abs().max().item():.3g})",
                           "whatever the down projection does, a zero up projection (weight and bias) adds exactly 0")
        leaves = [t.clone().requires_grad_() for t in params]
        target = torch.randn(32, d, dtype=torch.float64)
        for _ in range(2):  # two SGD steps on a random regression
            loss = (adapter_reference(h, *leaves) - target).square().mean()
            grads = torch.autograd.grad(loss, leaves)
            with torch.no_grad():
                for p, g in zip(leaves, grads):
                    p -= 0.5 * g
        stuck = [n for n, p, p0 in zip(names, leaves, params) if torch.equal(p.detach(), p0)]
        if stuck:
            return Problem(f"{case}: it starts as the identity, but after two training steps {', '.join(stuck)} "
                           "have not moved: no gradient reaches them, so the adapter can only learn a bias",
                           "at the start, the gradient of W_up is relu(z)^T (dL/dy) and the gradient of W_down goes "
                           "through W_up and through relu'(z): which of them are zero with your start?")
        rank = torch.linalg.matrix_rank(params[0]).item()
        if rank < b:
            return Problem(f"{case}: W_down has rank {rank} < b={b}: its rows are copies of each other, so the b "
                           "bottleneck units compute (and learn) the same thing",
                           "draw W_down at random, e.g. torch.randn(b, d) scaled by 1 / sqrt(d)")
    return None


# ---- notebook 04: LoRA ------------------------------------------------------------------------------------------


class Tracked(torch.Tensor):
    """A tensor that remembers the largest tensor computed from it: shows whether LoRA's (out, in) B A is built."""

    largest = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        out = super().__torch_function__(func, types, args, kwargs or {})
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                Tracked.largest = max(Tracked.largest, t.numel())
        return out


@exercise("LoRA forward pass", task="LoRA's forward pass",
          where="notebook 04, introduction: h = W x + b + (alpha / r) B A x; for a batch x (..., in) each product "
                "multiplies by the transpose, and multiplying x by A first keeps every intermediate r wide",
          sketch="base = x @ ___ + ___   # (..., out); low = (x @ ___) @ ___   # (..., r), then (..., out); "
                 "return base + ____ * low",
          refuse=("ftlab.methods.lora:LoraLayer",))
def check_lora_forward(call) -> Problem | None:
    """Exercise (notebook 04): ``fn(x, W, b, A, B, alpha, r)`` returns LoRA's output x W^T + b + (alpha/r) x A^T B^T
    for x (..., in), W (out, in), b (out,), A (r, in), B (out, r). Random sizes and dtypes, a non-zero B. It must
    never build the (out, in) matrix B A (A and B are tracked tensors), must leave W and b as they are, and must
    pass gradients to x, A and B."""
    gen = torch.Generator().manual_seed(7)
    rng = random.Random(7)
    cases = [((4, 30), 40, 3, 12, torch.float32), ((2, 3, 24), 28, 1, 4, torch.float64)]
    cases += [((rng.randint(1, 5), rng.randint(24, 48)), rng.randint(24, 48), rng.randint(1, 4), rng.choice([1, 8, 16]),
               rng.choice([torch.float32, torch.float64])) for _ in range(4)]
    for x_shape, out, r, alpha, dtype in cases:
        n_in = x_shape[-1]
        inputs = {"x": torch.randn(x_shape, generator=gen, dtype=dtype),
                  "W": torch.randn(out, n_in, generator=gen, dtype=dtype) / math.sqrt(n_in),
                  "b": torch.randn(out, generator=gen, dtype=dtype),
                  "A": torch.randn(r, n_in, generator=gen, dtype=dtype) / math.sqrt(n_in),
                  "B": torch.randn(out, r, generator=gen, dtype=dtype)}
        x, W, b, A, B = inputs.values()
        scaling = alpha / r
        want = x @ W.T + b + scaling * (x @ A.T) @ B.T
        grad_out = torch.randn(want.shape, generator=gen, dtype=dtype)
        leaves = [t.clone().requires_grad_() for t in (x, A, B)]
        want_grads = torch.autograd.grad(leaves[0] @ W.T + b + scaling * (leaves[0] @ leaves[1].T) @ leaves[2].T,
                                         leaves, grad_out)
        case = f"x {shape(x)}, W ({out}, {n_in}), r={r}, alpha={alpha}"
        x_in, A_in, B_in = (t.clone().requires_grad_() for t in (x, A, B))
        W_in, b_in = W.clone(), b.clone()
        Tracked.largest = 0
        result = call(x_in, W_in, b_in, A_in.as_subclass(Tracked), B_in.as_subclass(Tracked), alpha, r, case=case)
        built = Tracked.largest
        got, problem = as_tensor(result)
        if problem:
            return problem._replace(what=f"{case}: {problem.what}")
        if not torch.equal(W_in, W) or not torch.equal(b_in, b):
            return Problem(f"{case}: your function changed W or b in place: every call would add the change again",
                           "the frozen weight stays as it is; compute the low-rank term as a separate output")
        if W_in.requires_grad or b_in.requires_grad:
            return Problem(f"{case}: your function switched on requires_grad of the frozen W or b",
                           "LoRA trains A and B only; W and b stay frozen")
        if tuple(got.shape) != tuple(want.shape):
            return Problem(f"{case}: the output has shape {tuple(got.shape)}, expected {tuple(want.shape)}",
                           "x is (..., in); W.T is (in, out), A.T is (in, r) and B.T is (r, out)")
        if not close(got.detach(), want):
            low = (x @ A.T) @ B.T
            named = [(x @ W.T + b, "that is the base layer alone: the low-rank term is missing"),
                     (x @ W.T + b + low, "the scaling alpha / r is missing"),
                     (x @ W.T + b + (r / alpha) * low, "the scaling is upside down: r / alpha instead of alpha / r"),
                     (x @ W.T + scaling * low, "the bias b is missing"),
                     (x @ W.T + b + alpha * low, "the scaling is alpha, not alpha / r")]
            for value, message in named:
                if close(got.detach(), value):
                    return Problem(f"{case}: {message}")
            return Problem(f"{case}: the values differ from LoRA's output (largest difference "
                           f"{(got.detach() - want).abs().max().item():.3g})")
        if built >= out * n_in:
            return Problem(f"{case}: right values, but your function builds a tensor of {built:,} numbers, the size of "
                           f"the (out, in) matrix B A ({out} x {n_in}); on a 4096 x 4096 layer that is 16.8M numbers "
                           "per layer and per step",
                           "multiply x by A.T first: (..., in) @ (in, r) is only r wide; then by B.T")
        if not got.requires_grad:
            return Problem(f"{case}: the output carries no gradient, so A and B would never train",
                           "do not detach anything (.detach(), .data, .item(), torch.no_grad())")
        got_grads = torch.autograd.grad(got, [x_in, A_in, B_in], grad_out, allow_unused=True)
        for name, g, w in zip(("x", "A", "B"), got_grads, want_grads):
            if g is None or not close(g, w):
                return Problem(f"{case}: the gradient of {name} is {'missing' if g is None else 'wrong'}",
                               "compute the output from x, A and B themselves, with nothing detached")
    return None


@exercise("LoRA's initialisation", task="LoRA's initialisation",
          where="notebook 04, introduction: the model must start exactly equal to the pretrained one (which factor "
                "makes B A x = 0?), and both factors must be able to train (Hu et al. 2021, section 4.1)",
          sketch="A = random (r, in), e.g. kaiming-uniform or randn scaled by 1 / sqrt(in); B = ______ (out, r)",
          refuse=("ftlab.methods.lora:LoraLayer",))
def check_lora_init(call) -> Problem | None:
    """Exercise (notebook 04, find the bug): ``fn(in_features, out_features, r)`` returns LoRA's starting factors
    ``(A, B)``, A (r, in) random of full rank r, B (out, r) zero, as in Hu et al. 2021 and peft. Random sizes."""
    rng = random.Random(8)
    cases = [(384, 384, 8), (768, 64, 1)] + [(rng.randint(16, 300), rng.randint(16, 300), rng.randint(1, 16))
                                             for _ in range(4)]
    A_first = None  # the first case's A, against a second draw under another seed
    for n_in, out, r in cases:
        case = f"in={n_in}, out={out}, r={r}"
        torch.manual_seed(rng.randint(0, 10**6))
        got = call(n_in, out, r, case=case)
        if not isinstance(got, (tuple, list)) or len(got) != 2 or not all(isinstance(t, torch.Tensor) for t in got):
            return Problem(f"{case}: expected two tensors (A, B), got {type(got).__name__}", "end with `return A, B`")
        if not all(t.is_floating_point() for t in got):
            return Problem(f"{case}: A is {got[0].dtype} and B {got[1].dtype}: integer tensors never receive a "
                           "gradient", "make both factors floating point")
        A, B = (t.detach().as_subclass(torch.Tensor).double() for t in got)
        if tuple(A.shape) != (r, n_in) or tuple(B.shape) != (out, r):
            return Problem(f"{case}: A is {tuple(A.shape)} and B {tuple(B.shape)}, expected A ({r}, {n_in}) and "
                           f"B ({out}, {r})", "A maps the input down to r numbers, B maps them up to out")
        if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
            return Problem(f"{case}: A or B holds NaN or infinite values")
        if B.abs().max() > 0:
            starts_equal = A.abs().max() == 0
            return Problem(f"{case}: B is not zero" + (", and A is: this starts equal too, but LoRA (and peft) put "
                                                       "the zero in B and the random values in A" if starts_equal else
                                                       ": B A x is not 0, so the model does not start equal to the "
                                                       "pretrained one"))
        rank = torch.linalg.matrix_rank(A).item()
        if rank < r:
            return Problem(f"{case}: A has rank {rank} < r={r} (zero or repeated rows): with B = 0 as well, "
                           "B receives the gradient (dL/dy)(A x)^T, which then has rank < r, and A no gradient at all"
                           if rank == 0 else f"{case}: A has rank {rank} < r={r}: its rows repeat, so the r directions "
                           "of the adapter collapse into fewer", "draw A at random")
        A_first = A if A_first is None else A_first
    torch.manual_seed(rng.randint(0, 10**6))
    again = call(*cases[0], case=f"in={cases[0][0]}, out={cases[0][1]}, r={cases[0][2]}, another random seed")
    if torch.equal(again[0].detach().as_subclass(torch.Tensor).double(), A_first):
        return Problem("A is the same whatever the random seed: a fixed matrix (such as an identity) has full rank, "
                       "but every adapter then starts from the same directions", "draw A at random")
    return None


# ---- notebook 05: 4-bit quantisation ----------------------------------------------------------------------------


def away_from_midpoints(n: int, code: torch.Tensor, gen: torch.Generator, margin: float = 1e-3) -> torch.Tensor:
    """``n`` values in [-1, 1] at least ``margin`` from every midpoint between neighbouring code values (so the
    nearest code is unambiguous, whatever the rounding), plus the code values themselves and the ends."""
    levels = code.sort().values
    midpoints = (levels[:-1] + levels[1:]) / 2  # (K-1,)
    x = torch.rand(4 * n, generator=gen) * 2 - 1
    x = x[(x[:, None] - midpoints[None, :]).abs().amin(dim=1) > margin][:n]  # (n,)
    return torch.cat([x, code.clamp(-1, 1), torch.tensor([-1.0, 1.0])])


def nearest_index(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """The reference lookup: index of the nearest value of ``code`` (K,) for each value of ``x`` (n,)."""
    return (x[:, None] - code[None, :]).abs().argmin(dim=1)  # (n,)


NF4_LEVELS = (-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
              0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0)  # rounded NF4, for the checkers' tables


def code_tables(gen: torch.Generator) -> list[tuple[str, torch.Tensor]]:
    """Code tables for the lookup checkers: NF4-like, uniform int4-like, a random sorted one and a shuffled one."""
    random_sorted = torch.cat([torch.tensor([-1.0, 1.0]), torch.rand(14, generator=gen) * 2 - 1]).sort().values
    return [("NF4", torch.tensor(NF4_LEVELS)), ("uniform int4", torch.arange(-8, 8) / 7),
            ("a random table", random_sorted), ("an unsorted table", random_sorted[torch.randperm(16, generator=gen)])]


@exercise("nearest 4-bit code", task="the nearest-code lookup",
          where="notebook 05, section 3, step 2: each normalised value becomes the index (0..15) of the nearest value "
                "of the code table; nearest means the smallest absolute difference",
          sketch="distance = (x[:, None] - code[None, :]).____()   # (n, 16); return distance.______(dim=1)",
          refuse=("ftlab.methods.nf4:nearest_code", "ftlab.methods.nf4:encode", "ftlab.methods.nf4:quantize"))
def check_nf4_lookup(call) -> Problem | None:
    """Exercise (notebook 05): ``fn(x, code)`` returns, for each value of ``x`` (n,), the index (int64) of the
    nearest value in ``code`` (16,). Tested on NF4, int4, a random and an unsorted table, random x (values within
    rounding of a midpoint left out: they could honestly go either way)."""
    gen = torch.Generator().manual_seed(9)
    for k, (label, code) in enumerate(code_tables(gen)):
        x = away_from_midpoints(1 + 700 * k, code, gen)
        want = nearest_index(x, code)
        case = f"{label}, x {shape(x)}"
        got, problem = as_tensor(call(x.clone(), code.clone(), case=case))
        if problem:
            return problem._replace(what=f"{case}: {problem.what}")
        if tuple(got.shape) != tuple(x.shape):
            return Problem(f"{case}: the result has shape {tuple(got.shape)}, expected one index per value "
                           f"{tuple(x.shape)}", "reduce over the code dimension only (dim=1 of an (n, 16) table)")
        if got.is_floating_point():
            if torch.allclose(got, code[want]):
                return Problem(f"{case}: it returns the code values, not their indices",
                               "return the position k of the nearest value, not code[k]")
            return Problem(f"{case}: expected integer indices, got {got.dtype}")
        if torch.equal(got.long(), want):
            continue
        wrong = (got.long() != want).float().mean().item()
        if label == "an unsorted table":
            return Problem(f"{case}: right on sorted tables but {wrong:.0%} wrong on an unsorted one (FP4's table is "
                           "not sorted)", "do not assume the table is sorted: compare with every value")
        if label != "NF4" and torch.equal(got.long(), nearest_index(x, torch.tensor(NF4_LEVELS))):
            return Problem(f"{case}: that is the NF4 lookup: your function ignores the `code` argument")
        if torch.equal(got.long(), (x[:, None] - code[None, :]).argmin(dim=1)):
            return Problem(f"{case}: the distance has a sign, so argmin picks the largest code value below... or any "
                           "value far above x", "nearest means the smallest |x - code_k|")
        return Problem(f"{case}: {wrong:.1%} of the indices are not those of the nearest code value")
    return None


@exercise("quantise one block", task="block quantisation",
          where="notebook 05, section 3, step 1 and 2: divide the block by its absmax, the largest |value|, so that it "
                "lies in [-1, 1], then look up the nearest code; an all-zero block has absmax 0 and must not give NaN",
          sketch="absmax = block.___().___(); scaled = block / absmax (guard absmax == 0); "
                 "return your_lookup(scaled, code), absmax",
          refuse=("ftlab.methods.nf4:nearest_code", "ftlab.methods.nf4:encode", "ftlab.methods.nf4:quantize",
                  "ftlab.methods.nf4:blockwise_absmax"))
def check_quantize_block(call) -> Problem | None:
    """Exercise (notebook 05): ``fn(block, code)`` returns ``(indices, absmax)`` for one block of weights (n,):
    absmax = max |block| and indices (int, (n,)) of the nearest code value to block / absmax. Random blocks of
    16-256 values (one whose largest magnitude is negative), float32 and float64, and an all-zero block."""
    gen = torch.Generator().manual_seed(10)
    code = torch.tensor(NF4_LEVELS)
    cases = []
    for n in (64, 16, 256, 64, 64):
        u = away_from_midpoints(4 * n, code, gen)[:n]  # (n,) in [-1, 1], unambiguous
        u[torch.randint(0, n, (1,), generator=gen)] = -1.0  # the largest magnitude: a negative value
        scale = 10 ** (torch.rand(1, generator=gen).item() * 3 - 3)
        cases.append((u * scale, u))
    cases[1] = (cases[1][0].double(), cases[1][1])
    cases[3] = (-cases[3][0], -cases[3][1])  # the largest magnitude positive
    cases.append((torch.zeros(64), torch.zeros(64)))
    cases = [(block, u, code) for block, u in cases]
    uniform = torch.linspace(-1, 1, 16)  # another code table: the function must use the one it is given
    u = away_from_midpoints(128, uniform, gen)[:32]
    u[0] = 1.0
    cases.append((u * 0.05, u, uniform))
    for block, u, table in cases:
        want_absmax = block.abs().max().item()
        want = nearest_index(u.float(), table)
        case = f"block {shape(block)}" + (", all zeros" if want_absmax == 0 else f", absmax {want_absmax:.3g}")
        if table is uniform:
            case += ", code: 16 evenly spaced levels instead of NF4"
        got = call(block.clone(), table.clone(), case=case)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            return Problem(f"{case}: expected a pair (indices, absmax), got {type(got).__name__}",
                           "end with `return indices, absmax`")
        indices, absmax = got
        try:
            absmax = float(absmax)
        except (TypeError, ValueError, RuntimeError):
            return Problem(f"{case}: absmax should be one number, got {type(absmax).__name__} "
                           f"{tuple(getattr(absmax, 'shape', ()))}", "reduce the whole block to one number")
        if not math.isclose(absmax, want_absmax, rel_tol=1e-6, abs_tol=0):
            if math.isclose(absmax, block.max().item(), rel_tol=1e-6):
                return Problem(f"{case}: absmax {absmax:.4g} is the largest value, but this block's largest "
                               f"magnitude is negative ({-want_absmax:.4g}): the scaled block leaves [-1, 1]",
                               "absmax is the largest absolute value")
            return Problem(f"{case}: absmax {absmax:.4g}, expected {want_absmax:.4g}")
        indices, problem = as_tensor(indices, "indices")
        if problem:
            return problem._replace(what=f"{case}: {problem.what}")
        if tuple(indices.shape) != tuple(block.shape) or indices.is_floating_point():
            return Problem(f"{case}: expected integer indices of shape {tuple(block.shape)}, got {shape(indices)}",
                           "one code index per value of the block")
        if not torch.equal(indices.long(), want):
            if want_absmax == 0:
                return Problem(f"{case}: the all-zero block should give the index of the code value 0 everywhere; "
                               "0 / 0 is NaN, and the nearest code to NaN is meaningless",
                               "when absmax is 0, every value is 0 already: scale by 1 instead (or clamp absmax)")
            wrong = (indices.long() != want).float().mean().item()
            return Problem(f"{case}: {wrong:.1%} of the indices differ from the nearest code of block / absmax")
    return None


# ---- notebook 06: prompt tuning --------------------------------------------------------------------------------


@exercise("prepend virtual tokens", task="prompt tuning's input",
          where="notebook 06, introduction and section 5: inputs = [prompt ; embeddings] for every sequence; the "
                "attention mask and the labels must line up with the longer input, position for position",
          sketch="embeds = torch.cat([prompt.______(B, -1, -1), inputs_embeds], dim=1); mask: cat a (B, P) block of "
                 "____ in front; labels: cat a (B, P) block of ____ in front",
          refuse=("ftlab.methods.prompt:PromptTuning",))
def check_prepend_virtual_tokens(call) -> Problem | None:
    """Exercise (notebook 06): ``fn(inputs_embeds, prompt, attention_mask, labels)`` prepends a learned prompt
    (P, d) to every sequence of ``inputs_embeds`` (B, T, d) and returns ``(inputs_embeds, attention_mask, labels)``:
    (B, P + T, d), P ones in front of the mask, P times -100 in front of the labels. Random B, T, P, d, padded rows;
    the gradient must reach the prompt, and the inputs must not change."""
    gen = torch.Generator().manual_seed(11)
    rng = random.Random(11)
    cases = [(3, 5, 4, 6, torch.float32), (1, 7, 1, 8, torch.float64)]
    cases += [(rng.randint(1, 5), rng.randint(1, 9), rng.randint(1, 20), rng.randint(2, 16),
               rng.choice([torch.float32, torch.float64])) for _ in range(4)]
    for B, T, P, d, dtype in cases:
        embeds, prompt = torch.randn(B, T, d, generator=gen, dtype=dtype), torch.randn(P, d, generator=gen, dtype=dtype)
        mask = torch.ones(B, T, dtype=torch.long)
        if T > 1:
            mask[-1, rng.randint(1, T - 1):] = 0  # a right-padded row
        labels = torch.randint(0, 50, (B, T), generator=gen).masked_fill(mask == 0, -100)
        want_embeds = torch.cat([prompt.expand(B, -1, -1), embeds], dim=1)  # (B, P + T, d)
        want_mask = torch.cat([mask.new_ones(B, P), mask], dim=1)  # (B, P + T)
        want_labels = torch.cat([labels.new_full((B, P), -100), labels], dim=1)  # (B, P + T)
        inputs = {"inputs_embeds": embeds.clone(), "prompt": prompt.clone().requires_grad_(),
                  "attention_mask": mask.clone(), "labels": labels.clone()}
        case = f"B={B}, T={T}, P={P}, d={d}"
        result = call(*inputs.values(), case=case)
        if not isinstance(result, (tuple, list)) or len(result) != 3:
            return Problem(f"{case}: expected three tensors back: (inputs_embeds, attention_mask, labels)",
                           "end with `return inputs_embeds, attention_mask, labels`")
        got = []
        for name, t in zip(("inputs_embeds", "attention_mask", "labels"), result):
            t, problem = as_tensor(t, name)
            if problem:
                return problem._replace(what=f"{case}: {problem.what}")
            got.append(t)
        out_embeds, out_mask, out_labels = got
        changed = untouched({"inputs_embeds": embeds, "prompt": prompt, "attention_mask": mask, "labels": labels},
                            {k: v.detach() for k, v in inputs.items()})
        if changed:
            return Problem(f"{case}: your function changed its input `{changed}` in place", "build new tensors")
        if tuple(out_embeds.shape) != (B, P + T, d):
            return Problem(f"{case}: inputs_embeds has shape {tuple(out_embeds.shape)}, expected (B, P + T, d) = "
                           f"{(B, P + T, d)}", "the same prompt goes in front of every one of the B sequences")
        if close(out_embeds.detach(), torch.cat([embeds, prompt.expand(B, -1, -1)], dim=1)) and T != P:
            return Problem(f"{case}: the prompt comes after the tokens", "the virtual tokens go first")
        if not close(out_embeds.detach(), want_embeds):
            return Problem(f"{case}: inputs_embeds differ from [prompt ; embeddings] for some sequence")
        if tuple(out_mask.shape) != (B, P + T):
            return Problem(f"{case}: attention_mask has shape {tuple(out_mask.shape)}, expected {(B, P + T)}",
                           "the mask needs one entry per position, virtual ones included")
        if not torch.equal(out_mask.long(), want_mask):
            if torch.equal(out_mask[:, :P].long(), torch.zeros(B, P, dtype=torch.long)):
                return Problem(f"{case}: the mask hides the virtual tokens (zeros in front)",
                               "every real token must be able to attend to the prompt")
            return Problem(f"{case}: the attention mask differs from [ones (B, P) ; attention_mask]")
        if tuple(out_labels.shape) != (B, P + T):
            return Problem(f"{case}: labels have shape {tuple(out_labels.shape)}, expected {(B, P + T)}",
                           "labels must line up with the longer input")
        if not torch.equal(out_labels.long(), want_labels):
            if not torch.equal(out_labels[:, :P].long(), want_labels[:, :P]):
                return Problem(f"{case}: the virtual positions get labels {out_labels[0, :P].tolist()[:5]}...: "
                               "the loss would ask the model to predict something there",
                               "-100 is the label cross-entropy ignores")
            return Problem(f"{case}: the real tokens' labels changed: keep them after the P virtual positions")
        if not out_embeds.requires_grad:
            return Problem(f"{case}: no gradient reaches the prompt, so it would never train",
                           "use the prompt tensor itself (expand or repeat it), do not detach or copy its values")
        (grad,) = torch.autograd.grad(out_embeds, inputs["prompt"], torch.ones_like(out_embeds), allow_unused=True)
        if grad is None or not torch.allclose(grad, torch.full_like(prompt, float(B))):
            return Problem(f"{case}: the gradient of the prompt is {'missing' if grad is None else 'wrong'}: it "
                           "should collect one contribution from each of the B sequences")
    return None


# ---- notebook 07: LoHa, LoKr and the rank of an update ----------------------------------------------------------


@exercise("LoHa's Hadamard-product change", task="LoHa's weight change",
          where="notebook 07, the table of the introduction: LoHa's change is scaling * (W1a W1b) * (W2a W2b), where "
                "the two matrix products are (out, in) and `*` multiplies element by element",
          sketch="return scaling * (w1_a @ ____) * (____ @ ____)",
          refuse=("ftlab.methods.loha:LoHaLayer",))
def check_loha_delta(call) -> Problem | None:
    """Exercise (notebook 07): ``fn(w1_a, w1_b, w2_a, w2_b, scaling)`` returns LoHa's weight change
    scaling * (w1_a w1_b) * (w2_a w2_b), ``*`` element-wise; w1_a, w2_a (out, r), w1_b, w2_b (r, in). Random sizes
    (one square), float32 and float64."""
    gen = torch.Generator().manual_seed(12)
    rng = random.Random(12)
    cases = [(10, 12, 3, 2.0, torch.float32), (16, 16, 2, 0.5, torch.float64)]
    cases += [(rng.randint(2, 40), rng.randint(2, 40), rng.randint(1, 6), rng.uniform(0.1, 4),
               rng.choice([torch.float32, torch.float64])) for _ in range(4)]
    for out, n_in, r, scaling, dtype in cases:
        w1_a, w2_a = (torch.randn(out, r, generator=gen, dtype=dtype) for _ in range(2))
        w1_b, w2_b = (torch.randn(r, n_in, generator=gen, dtype=dtype) for _ in range(2))
        want = scaling * (w1_a @ w1_b) * (w2_a @ w2_b)
        case = f"out={out}, in={n_in}, r={r}, scaling={scaling:.3g}, {str(dtype).removeprefix('torch.')}"
        got, problem = as_tensor(call(w1_a, w1_b, w2_a, w2_b, scaling, case=case))
        if problem:
            return problem._replace(what=f"{case}: {problem.what}")
        if tuple(got.shape) != (out, n_in):
            return Problem(f"{case}: the change has shape {tuple(got.shape)}, expected (out, in) = {(out, n_in)}",
                           "w1_a @ w1_b is (out, in); so is w2_a @ w2_b")
        if close(got, want):
            continue
        if close(got, want / scaling):
            return Problem(f"{case}: the scaling is missing")
        if close(got, scaling * (w1_a @ w1_b + w2_a @ w2_b)):
            return Problem(f"{case}: that adds the two products; LoHa multiplies them element by element")
        if out == n_in and close(got, scaling * (w1_a @ w1_b) @ (w2_a @ w2_b)):
            return Problem(f"{case}: that is a matrix product of the two (out, in) matrices; "
                           "LoHa's `*` is element-wise")
        return Problem(f"{case}: the values differ from LoHa's change")
    return None


def max_rank(method: str, out: int, n_in: int, r: int, factor: int) -> int:
    """The rank of a random update: LoRA min(r, out, in); LoHa min(r^2, out, in); LoKr with W1 (f, f) full rank and
    W2 (out/f, in/f) of rank r: f * min(r, out/f, in/f) (the rank of a Kronecker product is the product of ranks)."""
    if method == "lora":
        return min(r, out, n_in)
    if method == "loha":
        return min(r * r, out, n_in)
    return factor * min(r, out // factor, n_in // factor)


@exercise("the rank of an update", task="the rank each method's update can reach",
          where="notebook 07, section 1: the rank of B A is at most r; the rank of an element-wise product is at most "
                "the product of the ranks; the rank of a Kronecker product is exactly the product of the ranks; and "
                "no matrix has a rank above min(out, in)",
          sketch="lora: min(r, ___, ___); loha: min(___, ___, ___); lokr: factor * min(r, ___, ___)")
def check_max_rank(call) -> Problem | None:
    """Exercise (notebook 07): ``fn(method, out_features, in_features, r, factor)`` returns the rank of a random
    update of ``method`` ("lora", "loha", "lokr"; LoKr: W1 (factor, factor) in full, W2 (out/factor, in/factor) of
    rank r); for random factors that is the largest rank the method can reach. Random sizes, small and large r."""
    rng = random.Random(13)
    cases = [("lora", 384, 384, 8, 4), ("loha", 384, 384, 4, 4), ("lokr", 384, 384, 32, 4), ("loha", 12, 40, 5, 2),
             ("lora", 6, 50, 8, 2), ("lokr", 24, 96, 16, 4), ("loha", 30, 30, 2, 3)]
    for _ in range(9):
        f = rng.choice([2, 3, 4, 8])
        cases.append((rng.choice(["lora", "loha", "lokr"]), f * rng.randint(1, 24), f * rng.randint(1, 24),
                      rng.randint(1, 12), f))
    for method, out, n_in, r, f in cases:
        want = max_rank(method, out, n_in, r, f)
        case = f"fn({method!r}, out={out}, in={n_in}, r={r}, factor={f})"
        got = call(method, out, n_in, r, f, case=case)
        if not is_whole(got):
            return Problem(f"{case} gave {got!r}; a rank is a whole number (int)")
        if got == want:
            continue
        uncapped = {"lora": r, "loha": r * r, "lokr": f * r}[method]
        if got == uncapped:
            return Problem(f"{case} gave {got}, expected {want}: a matrix of {out} x {n_in} cannot have a rank above "
                           f"{min(out, n_in)}")
        if method == "loha" and got == min(2 * r, out, n_in):
            return Problem(f"{case} gave {got}, expected {want}: 2r is the rank of a sum of two rank-r matrices; "
                           "LoHa multiplies them element by element")
        return Problem(f"{case} gave {got}, expected {want}")
    return None


# ---- notebook 08: task sampling ---------------------------------------------------------------------------------


@exercise("temperature sampling probabilities", task="temperature sampling",
          where="notebook 08, section 1, the samplers' table: weight each task by its size to the power 1/T, then "
                "normalise so that the probabilities sum to 1",
          sketch="weights = {task: n ** ______ for task, n in sizes.items()}; divide each by sum(weights.values())",
          refuse=("ftlab.multitask:task_probabilities",))
def check_temperature_sampling(call) -> Problem | None:
    """Exercise (notebook 08): ``fn(sizes, T)`` returns ``{task: p}`` with p_i = n_i^(1/T) / sum_j n_j^(1/T) for
    ``sizes = {task: n_i}``. Random numbers of tasks and sizes, T from 0.5 to 100; ``sizes`` must not change."""
    rng = random.Random(14)
    cases = [({"small": 100, "medium": 900, "big": 10000}, T) for T in (1.0, 2.0, 5.0)]
    cases += [({f"task{i}": rng.randint(1, 10**5) for i in range(rng.randint(2, 6))},
               rng.choice([0.5, 1.5, 3, 10, 100])) for _ in range(5)]
    for sizes, T in cases:
        weights = {t: n ** (1 / T) for t, n in sizes.items()}
        want = {t: w / sum(weights.values()) for t, w in weights.items()}
        case = f"{len(sizes)} tasks of sizes {list(sizes.values())}, T={T:g}"
        given = dict(sizes)
        got = call(given, T, case=case)
        if given != sizes:
            return Problem(f"{case}: your function changed `sizes`", "build a new dict; leave the argument as it is")
        if not isinstance(got, dict) or set(got) != set(sizes):
            return Problem(f"{case}: expected a dict with one probability per task {sorted(sizes)}, got {got!r:.80}",
                           "return {task: probability} with the same keys as sizes")
        try:
            got = {t: float(p) for t, p in got.items()}
        except (TypeError, ValueError):
            return Problem(f"{case}: the probabilities should be numbers")
        if all(math.isclose(got[t], want[t], rel_tol=1e-6) for t in sizes):
            continue
        proportional = {t: n / sum(sizes.values()) for t, n in sizes.items()}
        total = sum(got.values())
        smallest = min(sizes, key=sizes.get)
        if not math.isclose(total, 1.0, rel_tol=1e-6):
            return Problem(f"{case}: the probabilities sum to {total:.4g}, not 1")
        if T != 1 and all(math.isclose(got[t], proportional[t], rel_tol=1e-6) for t in sizes):
            return Problem(f"{case}: these are the proportional probabilities n_i / sum n: T is ignored")
        if all(math.isclose(got[t], 1 / len(sizes), rel_tol=1e-6) for t in sizes):
            return Problem(f"{case}: every task gets 1/N: that is the limit T -> infinity (round-robin)")
        if T > 1 and got[smallest] < proportional[smallest] - 1e-12:
            return Problem(f"{case}: the smallest task gets {got[smallest]:.4f}, even less than proportional sampling "
                           f"gives it ({proportional[smallest]:.4f}): a temperature above 1 must flatten the mixture "
                           "(is the exponent upside down?)")
        return Problem(f"{case}: you give { {t: round(p, 4) for t, p in got.items()} }, expected "
                       f"{ {t: round(p, 4) for t, p in want.items()} }")
    return None


@exercise("the temperature for a given share", task="the temperature from the share of the small task",
          where="notebook 08, section 1: with two tasks, p_small = n_s^(1/T) / (n_s^(1/T) + n_b^(1/T)); divide "
                "p_small by 1 - p_small and take logarithms",
          sketch="p / (1 - p) = (n_small / n_big) ** (1 / T), so T = log(______) / log(______)")
def check_temperature_for_share(call) -> Problem | None:
    """Exercise (notebook 08): ``fn(n_small, n_big, share)`` returns the temperature T at which temperature sampling
    gives the smaller of two tasks the probability ``share``: T = log(n_small / n_big) / log(share / (1 - share)).
    Random sizes and shares between the proportional share and 1/2."""
    rng = random.Random(15)
    cases = [(100, 1000, 100 ** (1 / 3) / (100 ** (1 / 3) + 1000 ** (1 / 3))), (100, 1000, 0.25)]
    for _ in range(8):
        n_small = rng.randint(1, 5000)
        n_big = n_small * rng.uniform(1.5, 200)
        proportional = n_small / (n_small + n_big)
        cases.append((n_small, round(n_big), rng.uniform(proportional + 0.02 * (0.5 - proportional), 0.49)))
    for n_small, n_big, share in cases:
        want = math.log(n_small / n_big) / math.log(share / (1 - share))
        case = f"n_small={n_small}, n_big={n_big}, share={share:.4f}"
        got = call(n_small, n_big, share, case=case)
        if not isinstance(got, numbers.Real) or isinstance(got, bool):
            return Problem(f"{case}: expected a number, got {type(got).__name__}")
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        if math.isclose(got, -want, rel_tol=1e-6):
            return Problem(f"{case}: gave {got:.4g}, a negative temperature: one of the two ratios is upside down")
        if math.isclose(got, 1 / want, rel_tol=1e-6):
            return Problem(f"{case}: gave {got:.4g}, that is 1/T (the exponent), not T")
        check = n_small ** (1 / got) / (n_small ** (1 / got) + n_big ** (1 / got)) if got > 0 else float("nan")
        return Problem(f"{case}: gave T={got:.4g}, expected {want:.4g} (at your T the small task would get "
                       f"{check:.4f}, not {share:.4f})")
    return None


# ---- notebook 09: continual learning ----------------------------------------------------------------------------


def forgetting_reference(R: torch.Tensor) -> list[float]:
    """f_j = max_{l < T-1} R[l, j] - R[T-1, j] for j < T-1 (Chaudhry et al. 2018)."""
    return [(R[:-1, j].max() - R[-1, j]).item() for j in range(R.shape[0] - 1)]


@exercise("forgetting from an accuracy matrix", task="the forgetting measure",
          where="notebook 09, section 1: f_j is the best accuracy on task j before the last task (rows l < T-1, not "
                "only the row right after task j) minus the accuracy on task j at the end (row T-1)",
          sketch="best = R[____, ____].max(axis=0)   # one per earlier task; return best - R[-1, ____]",
          refuse=("ftlab.continual:forgetting",))
def check_forgetting(call) -> Problem | None:
    """Exercise (notebook 09): ``fn(R)`` returns the forgetting of each earlier task of an accuracy matrix R (T, T)
    (a NumPy array): f_j = max_{l<T-1} R[l, j] - R[T-1, j], j < T-1. Random T from 2 to 6, matrices where a later
    task helped an earlier one first, and where the final accuracy is the best (negative forgetting)."""
    import numpy as np

    rng = np.random.default_rng(16)
    cases = [np.array([[0.90, 0.10, 0.20], [0.95, 0.80, 0.30], [0.50, 0.70, 0.90]]),
             np.array([[0.80, 0.10], [0.85, 0.90]])]  # the final accuracy is the best: forgetting -0.05
    cases += [rng.uniform(0, 1, (T, T)).round(3) for T in (2, 3, 4, 5, 6)]
    for R in cases:
        want = forgetting_reference(torch.tensor(R))
        case = f"R of {R.shape[0]} tasks {R.round(2).tolist()}"
        got = call(R.copy(), case=case)
        try:
            got = np.asarray(got, dtype=float).reshape(-1)
        except (TypeError, ValueError):
            return Problem(f"{case}: expected a sequence of numbers, got {type(got).__name__}",
                           "return a list or a NumPy array with one number per earlier task")
        if got.shape != (len(want),):
            return Problem(f"{case}: expected {len(want)} numbers (one per task except the last), got {got.size}",
                           "the last task cannot have been forgotten yet")
        if np.allclose(got, want):
            continue
        if np.allclose(got, -np.array(want)):
            return Problem(f"{case}: the sign is flipped: forgetting is the best earlier accuracy minus the final one")
        if np.allclose(got, [R[j, j] - R[-1, j] for j in range(len(R) - 1)]):
            return Problem(f"{case}: you start from R[j, j], the accuracy right after task j, but a later task made "
                           "task j even better first", "take the maximum over all rows before the last")
        if np.allclose(got, [R[:, j].max() - R[-1, j] for j in range(len(R) - 1)]):
            return Problem(f"{case}: your maximum includes the last row, so forgetting can never be negative; here "
                           "the final accuracy is the best, so the model did not forget: it improved",
                           "take the maximum over the rows l < T-1 only")
        return Problem(f"{case}: you give {rounded(got)}, expected {rounded(want)}")
    return None


def ewc_reference(params: dict, anchors: dict, fisher: dict, ewc_lambda: float) -> torch.Tensor:
    """ewc_lambda * sum_i F_i (theta_i - theta*_i)^2 over every tensor of ``params`` (no 1/2: ftlab's convention)."""
    return ewc_lambda * sum((fisher[k] * (p - anchors[k]) ** 2).sum() for k, p in params.items())


@exercise("the EWC penalty", task="the EWC penalty",
          where="notebook 09, section 2, EWC: lambda * sum_i F_i (theta_i - theta*_i)^2; each weight's squared move "
                "is weighted by its Fisher value, how much it mattered for the old task",
          sketch="total = sum over names k of (______ * (params[k] - anchors[k]) ** 2).sum(); "
                 "return ewc_lambda * total",
          refuse=("ftlab.continual:EWC",))
def check_ewc_penalty(call) -> Problem | None:
    """Exercise (notebook 09, find the bug): ``fn(params, anchors, fisher, ewc_lambda)`` returns EWC's penalty, a
    scalar tensor lambda * sum_i F_i (theta_i - theta*_i)^2 over every tensor of the dicts (same keys and shapes).
    Random parameter sets and Fisher values spread over orders of magnitude; the gradient must reach the parameters
    (and only them), and anchors and Fisher must not change."""
    gen = torch.Generator().manual_seed(17)
    rng = random.Random(17)
    for k in range(5):
        shapes = [tuple(rng.randint(1, 6) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 4))]
        names = [f"layer{i}.weight" for i in range(len(shapes))]
        dtype = torch.float64 if k % 2 else torch.float32
        anchors = {n: torch.randn(s, generator=gen, dtype=dtype) for n, s in zip(names, shapes)}
        params = {n: (a + 0.1 * torch.randn(a.shape, generator=gen, dtype=dtype)) for n, a in anchors.items()}
        fisher = {n: 10 ** (torch.rand(a.shape, generator=gen, dtype=dtype) * 6 - 7) for n, a in anchors.items()}
        lam = 10 ** rng.uniform(2, 7)
        want = ewc_reference(params, anchors, fisher, lam)
        leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
        given_anchors, given_fisher = ({n: t.clone() for n, t in d.items()} for d in (anchors, fisher))
        case = f"{len(names)} parameter tensors of shapes {shapes}, lambda={lam:.3g}"
        got, problem = as_tensor(call(leaves, given_anchors, given_fisher, lam, case=case))
        if problem:
            return problem._replace(what=f"{case}: {problem.what}")
        if got.numel() != 1:
            return Problem(f"{case}: expected one number (a scalar tensor), got shape {tuple(got.shape)}",
                           "sum over every element of every tensor")
        if any(not torch.equal(given_anchors[n], anchors[n]) or not torch.equal(given_fisher[n], fisher[n])
               for n in names):
            return Problem(f"{case}: your function changed the anchors or the Fisher values in place")
        value = got.detach().reshape(())
        if not close(value, want):
            moved = sum(((p - anchors[n]) ** 2).sum() for n, p in params.items())
            named = [(lam * moved, "the Fisher weighting is missing: every weight is held back equally hard, whether "
                                   "it mattered for the old task or not"),
                     (lam * sum((fisher[n] ** 2 * (p - anchors[n]) ** 2).sum() for n, p in params.items()),
                      "the Fisher values are squared: F already is a mean of squared gradients"),
                     (lam * sum((fisher[n].sqrt() * (p - anchors[n]) ** 2).sum() for n, p in params.items()),
                      "the square root of the Fisher values is used, not F itself"),
                     (want / 2, "half the expected value: ftlab's lambda has no 1/2 (it is Kirkpatrick's lambda / 2)"),
                     (lam * sum((fisher[n] * (p - anchors[n]).abs()).sum() for n, p in params.items()),
                      "the move is not squared")]
            for value_named, message in named:
                if close(value, value_named):
                    return Problem(f"{case}: {message}")
            if close(value, lam * sum((fisher[n] * (p - anchors[n]) ** 2).mean() for n, p in params.items())):
                return Problem(f"{case}: that averages within each tensor; the penalty sums over every weight")
            return Problem(f"{case}: you give {value.item():.6g}, expected {want.item():.6g}")
        if not got.requires_grad:
            return Problem(f"{case}: the penalty carries no gradient, so it could not hold the weights back",
                           "do not use .item(), .detach() or torch.no_grad(): it must be a tensor computed from params")
        grads = torch.autograd.grad(got.reshape(()), list(leaves.values()), allow_unused=True)
        for (n, p), g in zip(params.items(), grads):
            if g is None or not close(g, 2 * lam * fisher[n] * (p - anchors[n])):
                return Problem(f"{case}: the gradient with respect to {n} is {'missing' if g is None else 'wrong'}")
    return None


# ---- notebook 10: SFT labels ------------------------------------------------------------------------------------


@exercise("SFT labels with the prompt masked", task="the SFT labels",
          where="notebook 10, section 2: the label of a position is decided by where it is (prompt, response or "
                "padding), not by which token it holds: the response may contain tokens of the prompt (GPT-2's "
                "<|endoftext|> starts every prompt and ends every response)",
          sketch="[-100] * ______ + list(response_ids) + [-100] * ______ (the number of padding positions)",
          refuse=("ftlab.align.common:collate",))
def check_sft_labels(call) -> Problem | None:
    """Exercise (notebook 10): ``fn(prompt_ids, response_ids, width)`` returns the SFT labels of one example padded to
    ``width``: -100 on every prompt and padding position, the response ids (not shifted) on the response positions.
    Random prompts and responses of random lengths that share tokens (the end-of-text id ends every response and
    starts every prompt), with and without padding."""
    rng = random.Random(18)
    cases = [([0, 17, 5, 9, 2], [11, 4, 0], 10), ([0, 7], [7, 0], 4)]
    for _ in range(8):
        prompt = [0] + [rng.randint(1, 30) for _ in range(rng.randint(0, 10))]
        response = [rng.choice(prompt[1:] or [3]) if rng.random() < 0.4 else rng.randint(1, 30)
                    for _ in range(rng.randint(0, 6))] + [0]
        cases.append((prompt, response, len(prompt) + len(response) + rng.choice([0, 0, 1, 5])))
    for prompt, response, width in cases:
        want = [-100] * len(prompt) + response + [-100] * (width - len(prompt) - len(response))
        case = f"prompt_ids={prompt}, response_ids={response}, width={width}"
        got = call(list(prompt), list(response), width, case=case)
        labels = got.tolist() if isinstance(got, torch.Tensor) else got
        if not isinstance(labels, (list, tuple)) or not all(is_whole(v) for v in labels):
            return Problem(f"{case}: expected a list (or 1-D tensor) of ints, got {type(got).__name__}",
                           "build a list of -100s and token ids")
        labels = list(labels)
        if labels == want:
            continue
        ids = prompt + response
        n = len(ids)
        if len(labels) != width:
            return Problem(f"{case}: the labels have length {len(labels)}, expected width={width}",
                           "one label per position, padding included")
        if labels[:n] == ids:
            return Problem(f"{case}: the prompt tokens are labelled, so the model would also learn to write prompts")
        if labels[:n - 1] == [-100] * (len(prompt) - 1) + response:
            return Problem(f"{case}: the labels are shifted one position to the left",
                           "do not shift: the model compares the logits at t with the label at t + 1 itself")
        if labels[:n] == want[:n]:
            return Problem(f"{case}: the padding positions are not -100, so the model would learn to predict padding")
        if labels == [-100 if (i < len(prompt) or t in prompt) else t for i, t in enumerate(ids)] + want[n:]:
            return Problem(f"{case}: response tokens that also occur in the prompt are masked (you give {labels}, "
                           f"expected {want}): the final <|endoftext|> would never be learned, and the model would "
                           "not learn to stop")
        return Problem(f"{case}: you give {labels}, expected {want}")
    return None


# ---- notebook 11: generalised advantage estimation --------------------------------------------------------------


def gae_reference(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float):
    """(advantages, returns) of one response (T,), with V_T = 0 after the last token (Schulman et al. 2016, eq. 16)."""
    advantages = torch.zeros_like(rewards)
    next_value = next_advantage = 0.0
    for t in reversed(range(len(rewards))):
        next_advantage = rewards[t] + gamma * next_value - values[t] + gamma * lam * next_advantage
        advantages[t] = next_advantage
        next_value = values[t]
    return advantages, advantages + values


@exercise("generalised advantage estimation", task="generalised advantage estimation",
          where="notebook 11, your turn: delta_t = r_t + gamma V_{t+1} - V_t with V_T = 0, and A_t = delta_t + "
                "gamma lam A_{t+1} with A_T = 0, so it runs backwards from the last token; R_t = A_t + V_t "
                "(Schulman et al. 2016, eq. 16)",
          sketch="for t in reversed(range(T)): delta = r[t] + gamma * ______ - v[t]; A[t] = delta + ______ * A_next; "
                 "then A_next, V_next = A[t], v[t]; returns = ______",
          refuse=("ftlab.align.rlhf:gae",))
def check_gae(call) -> Problem | None:
    """Exercise (notebook 11): ``fn(rewards, values, gamma, lam)`` returns ``(advantages, returns)`` of one response,
    each (T,), by GAE with the value after the last token 0. Random T from 1 to 12, gamma and lam including 0 and 1,
    float32 and float64; the inputs must not change."""
    gen = torch.Generator().manual_seed(19)
    rng = random.Random(19)
    cases = [(4, 0.9, 0.8, torch.float64), (1, 0.99, 0.95, torch.float64), (6, 1.0, 1.0, torch.float64),
             (5, 0.9, 0.0, torch.float32)]
    cases += [(rng.randint(2, 12), rng.uniform(0.5, 1), rng.uniform(0.1, 0.99), rng.choice([torch.float32,
              torch.float64])) for _ in range(4)]
    for T, gamma, lam, dtype in cases:
        rewards = torch.randn(T, generator=gen, dtype=dtype) * 0.1
        rewards[-1] += 1.5  # the reward model's score on the last token
        values = torch.randn(T, generator=gen, dtype=dtype)
        want_adv, want_ret = gae_reference(rewards, values, gamma, lam)
        case = f"T={T}, gamma={gamma:.3g}, lam={lam:.3g}, {str(dtype).removeprefix('torch.')}"
        given_r, given_v = rewards.clone(), values.clone()
        got = call(given_r, given_v, gamma, lam, case=case)
        if not torch.equal(given_r, rewards) or not torch.equal(given_v, values):
            return Problem(f"{case}: your function changed rewards or values in place")
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            return Problem(f"{case}: expected a pair (advantages, returns), got {type(got).__name__}",
                           "end with `return advantages, returns`")
        try:
            adv, ret = (torch.as_tensor(t).double().reshape(-1) for t in got)
        except (TypeError, ValueError, RuntimeError) as err:
            return Problem(f"{case}: the pair does not hold two tensors ({type(err).__name__}: {err})",
                           "return two tensors of shape (T,)")
        if adv.shape != (T,) or ret.shape != (T,):
            return Problem(f"{case}: shapes {tuple(adv.shape)} and {tuple(ret.shape)}, expected ({T},) each",
                           "one advantage and one return per token")
        next_values = torch.cat([values[1:], values.new_zeros(1)])
        deltas = rewards + gamma * next_values - values
        forwards = torch.zeros_like(deltas)  # the same recursion run from the first token on: a common slip
        for t in range(T):
            forwards[t] = deltas[t] + gamma * lam * (forwards[t - 1] if t else 0.0)
        if not close(adv, want_adv.double()):
            named = [(deltas, "those are the one-step TD errors delta_t, not yet accumulated"),
                     (rewards - values, "the next state's value gamma V_{t+1} is missing from delta_t"),
                     (gae_reference(rewards, values, gamma, 1.0)[0], "lam is missing: that is gamma alone"),
                     (forwards, "it runs forwards: A_t must collect the TD errors of the tokens AFTER t")]
            for value, message in named:
                if close(adv, value.double()) and not close(value.double(), want_adv.double()):
                    return Problem(f"{case}: {message}")
            return Problem(f"{case}: advantages {rounded(adv)} differ from {rounded(want_adv)}")
        if not close(ret, want_ret.double()):
            if close(ret, want_adv.double()):
                return Problem(f"{case}: the returns equal the advantages", "returns are advantages plus values")
            return Problem(f"{case}: returns {rounded(ret)} differ from {rounded(want_ret)}")
    return None


# ---- notebook 12: the DPO loss ----------------------------------------------------------------------------------


@exercise("the DPO loss", task="the DPO loss",
          where="notebook 12, section 1 (Rafailov et al. 2023, eq. 7): each response's log-ratio is its policy "
                "log-probability minus its OWN reference log-probability; the loss is -log sigmoid of beta times "
                "(chosen log-ratio - rejected log-ratio), averaged over pairs; F.logsigmoid stays finite where "
                "torch.log(torch.sigmoid(...)) gives -inf",
          sketch="chosen_logratio = policy_chosen - ______; rejected_logratio = ______ - ______; "
                 "return -F.logsigmoid(______).mean()",
          refuse=("ftlab.align.dpo:dpo_loss",))
def check_dpo_loss(call) -> Problem | None:
    """Exercise (notebook 12): ``fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)`` returns the DPO
    loss (Rafailov et al. 2023, eq. 7), a scalar tensor: the mean over pairs of -log sigmoid(beta [(policy_chosen -
    ref_chosen) - (policy_rejected - ref_rejected)]). Random batches and beta, float32 and float64, a batch with
    margins so large that log(sigmoid(.)) underflows; gradients must reach the policy's log-probabilities."""
    gen = torch.Generator().manual_seed(20)
    rng = random.Random(20)
    cases = [(3, 0.5, 1.0, torch.float64), (1, 0.1, 1.0, torch.float32), (8, 0.1, 2000.0, torch.float32)]
    cases += [(rng.randint(2, 16), rng.uniform(0.01, 1.0), 5.0, rng.choice([torch.float32, torch.float64]))
              for _ in range(4)]
    for B, beta, spread, dtype in cases:
        logps = [-(torch.rand(B, generator=gen, dtype=dtype) * 20 + 1) for _ in range(4)]  # (B,) each, negative
        logps[0] = logps[0] + spread * torch.randn(B, generator=gen, dtype=dtype).sign()  # big margins when spread big
        pc, pr, rc, rr = logps
        leaves = [pc.clone().requires_grad_(), pr.clone().requires_grad_()]
        want = -F.logsigmoid(beta * ((leaves[0] - rc) - (leaves[1] - rr))).mean()
        want_grads = torch.autograd.grad(want, leaves)
        case = f"{B} pairs, beta={beta:.3g}, {str(dtype).removeprefix('torch.')}" + \
               (", margins of thousands of nats" if spread > 100 else "")
        inputs = [pc.clone().requires_grad_(), pr.clone().requires_grad_(), rc.clone(), rr.clone()]
        got, problem = as_tensor(call(*inputs, beta, case=case))
        if problem:
            return problem._replace(what=f"{case}: {problem.what}")
        if got.numel() != 1:
            return Problem(f"{case}: expected one number, got shape {tuple(got.shape)}", "average over the pairs")
        value = got.detach().reshape(()).double()
        if not torch.isfinite(value):
            return Problem(f"{case}: the loss is {value.item()}: log(sigmoid(x)) underflows to log(0) for very "
                           "negative x", "use F.logsigmoid, which computes log sigmoid without forming sigmoid")
        if not close(value, want.detach()):
            margin = (pc - rc) - (pr - rr)
            named = [(-F.logsigmoid(beta * margin).sum(), "that is the sum over pairs: take the mean, so the loss "
                                                          "does not grow with the batch"),
                     (-F.logsigmoid(beta * (pc - pr)).mean(), "the reference model is missing"),
                     (-F.logsigmoid(margin).mean(), "beta is missing"),
                     (-F.logsigmoid(-beta * margin).mean(), "the sign is flipped: this loss prefers the rejected "
                                                            "response"),
                     (-F.logsigmoid(beta * ((pc - rr) - (pr - rc))).mean(), "the reference log-probabilities are "
                                                                            "swapped between chosen and rejected"),
                     (-torch.sigmoid(beta * margin).mean(), "the log is missing")]
            for value_named, message in named:
                if close(value, value_named.double()):
                    return Problem(f"{case}: {message}")
            return Problem(f"{case}: you give {value.item():.6f}, expected {want.item():.6f}")
        if not got.requires_grad:
            return Problem(f"{case}: the loss carries no gradient, so the policy could not learn from it",
                           "compute it with torch operations on the inputs, without .item() or .detach()")
        grads = torch.autograd.grad(got.reshape(()), inputs[:2], allow_unused=True)
        for name, g, w in zip(("policy_chosen", "policy_rejected"), grads, want_grads):
            if g is None or not close(g, w):
                return Problem(f"{case}: the gradient with respect to {name} is {'missing' if g is None else 'wrong'}")
    return None


# ---- notebook 13: memory of a step from two counts --------------------------------------------------------------


@exercise("memory of a training step from parameter counts", task="the memory of a training step",
          where="notebook 13, section 5: every parameter is stored, trainable or not; only trainable ones get a "
                "gradient and AdamW's moments; float32 is 4 bytes",
          sketch="{'weights': ___ * total, 'gradients': ___ * trainable, 'optimizer_state': ___ * trainable}")
def check_step_memory(call) -> Problem | None:
    """Exercise (notebook 13): ``fn(trainable, total)`` returns the bytes of one float32 AdamW training step that do
    not depend on the batch: ``{"weights": ..., "gradients": ..., "optimizer_state": ...}``, as ``ftlab.measure``
    measures them. Random counts, including nothing trainable and everything trainable."""
    rng = random.Random(21)
    cases = [(74_498, 22_788_484), (22_713_986, 22_713_986), (1_026, 11_177_538), (0, 4_011_520)]
    for _ in range(6):
        total = rng.randint(10, 10**10)
        cases.append((rng.randint(1, total), total))
    for trainable, total in cases:
        want = {"weights": 4 * total, "gradients": 4 * trainable, "optimizer_state": 8 * trainable}
        case = f"trainable={trainable:,}, total={total:,}"
        got = call(trainable, total, case=case)
        if not isinstance(got, dict) or set(got) != set(want):
            return Problem(f"{case}: expected a dict with keys {sorted(want)}, got {got!r:.100}",
                           "return {'weights': ..., 'gradients': ..., 'optimizer_state': ...}")
        if any(not isinstance(v, numbers.Real) or isinstance(v, bool) or v != int(v) for v in got.values()):
            return Problem(f"{case}: the byte counts should be whole numbers, got {got}")  # 4.0 * total is fine
        got = {key: int(value) for key, value in got.items()}
        if got == want:
            continue
        if got["weights"] != want["weights"]:
            hint = "frozen weights are stored too" if got["weights"] == 4 * trainable else ""
            return Problem(f"{case}: weights {got['weights']:,}, expected {want['weights']:,}" +
                           (f": {hint}" if hint else ""))
        if got["gradients"] != want["gradients"]:
            hint = ": frozen parameters get no gradient" if got["gradients"] == 4 * total else ""
            return Problem(f"{case}: gradients {got['gradients']:,}, expected {want['gradients']:,}{hint}")
        hint = {4 * trainable: ": AdamW keeps two moments, not one", 8 * total: ": the optimizer only tracks "
                                                                                 "trainable parameters"}
        return Problem(f"{case}: optimizer state {got['optimizer_state']:,}, expected {want['optimizer_state']:,}"
                       f"{hint.get(got['optimizer_state'], '')}")
    return None


# ---- notebook 14: training well ---------------------------------------------------------------------------------
# Notebooks 14-17 compare with references written here, so that the checkers do not depend on library code.


@exercise("the learning rates of an LR range test", task="the LR range test's schedule",
          where="notebook 14, the learning-rate range test: the rate grows by the same factor at every step, from "
                "start_lr at the first step to exactly end_lr at the last; num_steps rates make num_steps - 1 steps",
          sketch="factor = (end_lr / start_lr) ** (1 / ______); "
                 "return [start_lr * factor ** ____ for i in range(num_steps)]")
def check_lr_range(call) -> Problem | None:
    """Exercise (notebook 14): ``fn(num_steps, start_lr, end_lr)`` returns the ``num_steps`` learning rates of an LR
    range test: exponential (each a constant factor above the one before) from ``start_lr`` to exactly ``end_lr``.
    Random lengths from 2 to 300 and ranges over 2 to 9 orders of magnitude."""
    rng = random.Random(22)
    cases = [(100, 1e-7, 10.0), (2, 1e-5, 1e-1), (3, 1e-3, 1.0)]
    cases += [(rng.randint(4, 300), 10 ** rng.uniform(-8, -4), 10 ** rng.uniform(-2, 1)) for _ in range(5)]
    for num_steps, start, end in cases:
        want = [start * (end / start) ** (i / (num_steps - 1)) for i in range(num_steps)]
        case = f"num_steps={num_steps}, start_lr={start:.3g}, end_lr={end:.3g}"
        got = call(num_steps, start, end, case=case)
        try:
            got = [float(v) for v in got]
        except (TypeError, ValueError):
            return Problem(f"{case}: expected a list of numbers, got {type(got).__name__}")
        if len(got) != num_steps:
            return Problem(f"{case}: got {len(got)} rates, expected one per step ({num_steps})")
        if all(math.isclose(g, w, rel_tol=1e-7) for g, w in zip(got, want)):
            continue
        if math.isclose(got[0], end, rel_tol=1e-7):
            return Problem(f"{case}: the rates run from end_lr down to start_lr: a range test starts low")
        if not math.isclose(got[-1], end, rel_tol=1e-7):
            return Problem(f"{case}: the last rate is {got[-1]:.4g}, expected end_lr = {end:.4g}",
                           "num_steps rates are num_steps - 1 steps apart")
        if num_steps > 2 and math.isclose(got[1] - got[0], got[2] - got[1], rel_tol=1e-6):
            return Problem(f"{case}: the rates grow by a constant amount (linearly); a range test spans several "
                           "orders of magnitude, so the rate must grow by a constant factor",
                           "linear steps spend almost every step near end_lr")
        worst = max(range(num_steps), key=lambda i: abs(got[i] / want[i] - 1))
        return Problem(f"{case}: rate {worst} is {got[worst]:.4g}, expected {want[worst]:.4g}")
    return None


def early_stopping_reference(val_losses: list[float], patience: int) -> tuple[int, int]:
    """(stop, best): the evaluation at which training stops (``patience`` evaluations in a row without a strictly
    lower loss than the best so far; the last one if that never happens) and the best evaluation up to then."""
    best, wait = 0, 0
    for i in range(1, len(val_losses)):
        if val_losses[i] < val_losses[best]:
            best, wait = i, 0
        else:
            wait += 1
            if wait == patience:
                return i, best
    return len(val_losses) - 1, best


@exercise("when early stopping stops", task="early stopping",
          where="notebook 14, early stopping: after each evaluation, a strictly lower loss than the best so far "
                "resets the count; any other evaluation adds one; training stops when the count reaches patience, and "
                "keeps the best evaluation seen up to then (it cannot see the future)",
          sketch="best, wait = 0, 0; for i from 1: if loss[i] < loss[best]: best, wait = i, 0; else: wait += 1 and "
                 "stop at i when ______; if it never stops: (last index, best)")
def check_early_stopping(call) -> Problem | None:
    """Exercise (notebook 14): ``fn(val_losses, patience)`` returns ``(stop, best)``: the index of the evaluation at
    which early stopping stops (``patience`` evaluations in a row without a strictly lower validation loss than the
    best so far; the last index if never) and the index of the best evaluation up to ``stop``. Random noisy
    validation curves, ties, curves that never stop, patience from 1 to 6."""
    rng = random.Random(23)
    cases = [([1.0, 0.8, 0.7, 0.72, 0.75, 0.71, 0.9, 0.6], 3), ([1.0, 0.9, 0.9, 0.9, 1.0], 3),
             ([3.0, 2.0, 1.5, 1.2, 1.0], 2), ([1.0, 1.1, 0.5], 1), ([0.7], 2)]
    for _ in range(8):
        n, turn = rng.randint(6, 40), rng.uniform(0.2, 0.9)
        curve = [round((i / n - turn) ** 2 + rng.gauss(0, 0.02), 2) for i in range(n)]  # a noisy U, ties from rounding
        cases.append((curve, rng.randint(1, 6)))
    for losses, patience in cases:
        want = early_stopping_reference(losses, patience)
        case = f"val_losses={losses}, patience={patience}"
        got = call(list(losses), patience, case=case)
        if not (isinstance(got, (tuple, list)) and len(got) == 2 and all(is_whole(v) for v in got)):
            return Problem(f"{case}: expected a pair of indices (stop, best), got {got!r:.60}",
                           "end with `return stop, best`")
        got = tuple(got)
        if got == want:
            continue
        if got[1] == min(range(len(losses)), key=losses.__getitem__) and got[1] > want[0]:
            return Problem(f"{case}: best={got[1]} comes after training stopped at {want[0]}: early stopping cannot "
                           "know the losses of evaluations it never ran")
        if got[0] != want[0]:
            return Problem(f"{case}: stops at evaluation {got[0]}, expected {want[0]}")
        if losses[got[1]] == losses[want[1]]:
            return Problem(f"{case}: best={got[1]}, expected {want[1]}: equal losses are not an improvement, so the "
                           "first of them stays the best")
        return Problem(f"{case}: best={got[1]}, expected {want[1]}")
    return None


# ---- notebook 15: choosing a method ------------------------------------------------------------------------------


@exercise("bytes per parameter in mixed precision", task="the memory of mixed-precision training",
          where="notebook 15 and ZeRO (Rajbhandari et al. 2020, section 3.1): a trainable parameter keeps a 16-bit "
                "weight and a 16-bit gradient, plus a float32 master weight and AdamW's two float32 moments; a frozen "
                "one only its 16-bit weight",
          sketch="trainable * (2 + 2 + ____ + ____ + ____) + frozen * ____")
def check_mixed_precision_bytes(call) -> Problem | None:
    """Exercise (notebook 15): ``fn(trainable, frozen)`` returns the bytes that mixed-precision AdamW training keeps
    for ``trainable`` trained and ``frozen`` frozen parameters (activations aside): 16 per trainable parameter
    (ZeRO's count) and 2 per frozen one. Random counts from a LoRA on a large model to full fine-tuning."""
    rng = random.Random(24)
    cases = [(1000, 0), (0, 1000), (4_194_304, 6_738_415_616), (7 * 10**9, 0)]
    cases += [(rng.randint(1, 10**8), rng.randint(0, 10**11)) for _ in range(6)]
    for trainable, frozen in cases:
        want = 16 * trainable + 2 * frozen
        case = f"trainable={trainable:,}, frozen={frozen:,}"
        got = call(trainable, frozen, case=case)
        if not is_whole(got):
            return Problem(f"{case}: gave {got!r}; expected a whole number of bytes (int)")
        if got == want:
            continue
        named = {16 * (trainable + frozen): "frozen parameters need no gradient, master copy or moments",
                 16 * trainable + 4 * frozen: "frozen weights are stored in 16 bits, like the trainable ones' working "
                                              "copies: 2 bytes",
                 12 * trainable + 2 * frozen: "the 16-bit weight and gradient of each trainable parameter are missing",
                 18 * trainable + 2 * frozen: "a trainable parameter's 16-bit gradient is counted twice",
                 20 * trainable + 2 * frozen: "the gradient is kept in 16 bits, not float32",
                 16 * trainable: "the frozen parameters are stored too"}
        message = named.get(got)
        return Problem(f"{case}: gave {got:,}, expected {want:,}" + (f": {message}" if message else ""))
    return None


@exercise("QLoRA's bits per parameter", task="the storage cost of NF4 with and without double quantisation",
          where="notebook 05, section 3, steps 3 and 4: 4 bits per weight, plus each block's float32 absmax shared by "
                "block_size weights; with double quantisation the absmax is stored in 8 bits, plus one float32 scale "
                "per stats_block_size blocks",
          sketch="without: 4 + ____ / block_size; with: 4 + ____ / block_size + ____ / (block_size * stats_block_size)")
def check_qlora_bits(call) -> Problem | None:
    """Exercise (notebook 15): ``fn(block_size, stats_block_size, double_quant)`` returns the bits per weight that
    NF4 stores, ignoring the one float32 mean shared by the whole tensor: 4 + 32/block_size, or with double
    quantisation 4 + 8/block_size + 32/(block_size * stats_block_size). Random power-of-two block sizes."""
    rng = random.Random(25)
    cases = [(64, 256, True), (64, 256, False), (16, 256, True), (1024, 64, False)]
    cases += [(2 ** rng.randint(4, 12), 2 ** rng.randint(6, 10), rng.random() < 0.5) for _ in range(8)]
    for block, stats, double in cases:
        want = 4 + 8 / block + 32 / (block * stats) if double else 4 + 32 / block
        case = f"block_size={block}, stats_block_size={stats}, double_quant={double}"
        got = call(block, stats, double, case=case)
        if not isinstance(got, numbers.Real) or isinstance(got, bool):
            return Problem(f"{case}: expected a number of bits, got {type(got).__name__}")
        if math.isclose(got, want, rel_tol=1e-9):
            continue
        if math.isclose(got, want / 8, rel_tol=1e-9):
            return Problem(f"{case}: gave {got:.6g}, expected {want:.6g}: that is bytes per weight, not bits")
        if double and math.isclose(got, 4 + 32 / block, rel_tol=1e-9):
            return Problem(f"{case}: gave {got:.6g}, expected {want:.6g}: that ignores double quantisation")
        if double and math.isclose(got, 4 + 8 / block, rel_tol=1e-9):
            return Problem(f"{case}: gave {got:.6g}, expected {want:.6g}: the float32 scale of each group of "
                           "quantised absmax values is missing")
        return Problem(f"{case}: gave {got:.6g}, expected {want:.6g}")
    return None


# ---- notebook 16: scaling up -----------------------------------------------------------------------------------


@exercise("the loss of each micro-batch under gradient accumulation", task="the loss scaling of gradient accumulation",
          where="notebook 16, gradient accumulation: the accumulated gradient must equal the gradient of the mean "
                "loss over ALL tokens of the k micro-batches; a micro-batch's mean loss divided by k gives that only "
                "when every micro-batch has the same number of tokens",
          sketch="total = number of tokens over all micro-batches; return [losses_i.____() / ______ for each i]")
def check_accumulation_losses(call) -> Problem | None:
    """Exercise (notebook 16, find the bug): ``fn(token_losses)`` takes the per-token losses of k micro-batches (a
    list of 1-D tensors of different lengths) and returns the k scalar losses to call ``backward`` on one after the
    other, so that the summed gradient equals that of the mean over all tokens. Each loss must depend on its own
    micro-batch only (the others are not in memory yet); random numbers of micro-batches and tokens."""
    gen = torch.Generator().manual_seed(26)
    rng = random.Random(26)
    cases = [[7, 3], [5, 5, 5], [1]] + [[rng.randint(1, 30) for _ in range(rng.randint(2, 6))] for _ in range(5)]
    for lengths in cases:
        dtype = torch.float64 if len(lengths) % 2 else torch.float32
        losses = [torch.rand(n, generator=gen, dtype=dtype) * 5 for n in lengths]
        total = sum(lengths)
        case = f"{len(lengths)} micro-batches of {lengths} tokens"
        leaves = [t.clone().requires_grad_() for t in losses]
        got = call(list(leaves), case=case)
        if not isinstance(got, (list, tuple)) or len(got) != len(lengths):
            return Problem(f"{case}: expected a list of {len(lengths)} losses, one per micro-batch, got {got!r:.60}")
        if not all(isinstance(t, torch.Tensor) and t.numel() == 1 for t in got):
            return Problem(f"{case}: each loss should be a scalar tensor (with its graph), got "
                           f"{[type(t).__name__ for t in got]}", "do not call .item(): backward needs the tensor")
        values = [t.detach().double().reshape(()) for t in got]
        want = [t.double().sum() / total for t in losses]
        if all(torch.isclose(v, w, rtol=1e-6) for v, w in zip(values, want)):
            pass
        elif torch.isclose(sum(values), sum(want), rtol=1e-6) and len(set(round(v.item(), 12) for v in values)) == 1 \
                and len(lengths) > 1:
            return Problem(f"{case}: every micro-batch gets the same share of the total: that needs all of them at "
                           "once, which is what accumulation avoids")
        else:
            named = [([t.double().mean() / len(lengths) for t in losses], "the mean of each micro-batch divided by k: "
                      "right only when every micro-batch has the same number of tokens; here a token of a short "
                      "micro-batch counts more than a token of a long one"),
                     ([t.double().mean() for t in losses], "the micro-batch means, not scaled: the accumulated "
                                                           "gradient is k times too large (and still mis-weighted)"),
                     ([t.double().sum() for t in losses], "the sums are not divided by the number of tokens")]
            for value, message in named:
                if all(torch.isclose(v, w, rtol=1e-6) for v, w in zip(values, value)):
                    return Problem(f"{case}: {message}")
            return Problem(f"{case}: the losses sum to {sum(values).item():.6g}, expected the mean over all "
                           f"{total} tokens, {sum(want).item():.6g}")
        for i, loss in enumerate(got):
            if not loss.requires_grad:
                return Problem(f"{case}: loss {i} carries no gradient", "keep it a tensor computed from the losses")
            grads = torch.autograd.grad(loss.reshape(()), leaves, allow_unused=True, retain_graph=True)
            for j, g in enumerate(grads):
                if j != i and g is not None and g.abs().max() > 0:
                    return Problem(f"{case}: loss {i} depends on micro-batch {j}: with accumulation, micro-batch {j} "
                                   f"is not in memory when micro-batch {i} runs backward")
            expected = torch.full_like(losses[i], 1 / total).double()
            if grads[i] is None or not torch.allclose(grads[i].double(), expected):
                return Problem(f"{case}: the gradient of loss {i} with respect to its tokens is not 1 / {total} each")
    return None


# ---- notebook 17: applications ---------------------------------------------------------------------------------


def squad_tokens(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def squad_f1(prediction: str, truth: str) -> float:
    """Token-level F1 of SQuAD (Rajpurkar et al. 2016): overlap counted with multiplicity; 1.0 when both are empty."""
    pred, gold = squad_tokens(prediction), squad_tokens(truth)
    if not pred or not gold:
        return float(pred == gold)
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


@exercise("SQuAD F1", task="SQuAD's token F1",
          where="notebook 17, evaluation: normalise both answers (lower case, drop punctuation and the articles a, an, "
                "the), split into tokens, count the common tokens with their multiplicity (collections.Counter's &), "
                "precision = common / predicted tokens, recall = common / true tokens, F1 their harmonic mean; two "
                "empty answers agree (1.0), one empty answer scores 0",
          sketch="p, t = normalise(prediction).split(), normalise(truth).split(); common = sum((Counter(p) & "
                 "Counter(t)).values()); precision = common / ____; recall = common / ____; f1 = ______",
          refuse=("ftlab.tasks.qa:f1_score", "ftlab.tasks.qa:squad_scores"))
def check_squad_f1(call) -> Problem | None:
    """Exercise (notebook 17): ``fn(prediction, truth)`` returns SQuAD's token-level F1 of two answer strings, with
    SQuAD's normalisation. Random answers with repeated words, articles, punctuation and capitals, and empty ones."""
    rng = random.Random(27)
    words = ["paris", "the", "a", "river", "seine", "Seine", "north", "of", "France", "france,", "1889", "an", "eiffel"]
    cases = [("the Eiffel Tower", "Eiffel tower."), ("in Paris, France", "Paris"), ("paris paris paris", "paris"),
             ("paris paris", "paris paris"), ("the river the river", "river river Seine"),
             ("", ""), ("the", "a"), ("London", "Paris"), ("", "Paris")]
    for _ in range(12):
        truth = " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
        prediction = " ".join(rng.choice(words + truth.split() * 2) for _ in range(rng.randint(1, 7)))
        cases.append((prediction, truth))
    for prediction, truth in cases:
        want = squad_f1(prediction, truth)
        case = f"fn({prediction!r}, {truth!r})"
        got = call(prediction, truth, case=case)
        if not isinstance(got, numbers.Real) or isinstance(got, bool):
            return Problem(f"{case}: expected a number, got {type(got).__name__}")
        if math.isclose(got, want, abs_tol=1e-9):
            continue
        pred, gold = squad_tokens(prediction), squad_tokens(truth)
        if pred and gold and set(pred) & set(gold):
            common = len(set(pred) & set(gold))
            as_sets = 2 * common / (len(set(pred)) + len(set(gold)))
            precision, recall = common / len(pred), common / len(gold)  # a set's count over the tokens
            mixed = 2 * precision * recall / (precision + recall)
            if math.isclose(got, as_sets, abs_tol=1e-9) or math.isclose(got, mixed, abs_tol=1e-9):
                return Problem(f"{case} gave {got:.4f}, expected {want:.4f}: repeated words count as often as they "
                               "occur (compare token counts, not sets)")
        if got in (0.0, 1.0) and want not in (0.0, 1.0):
            return Problem(f"{case} gave {got}, expected {want:.4f}: that is exact match; F1 gives partial credit")
        return Problem(f"{case} gave {got:.4f}, expected {want:.4f}")
    return None


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of corresponding boxes (N, 4) as (x1, y1, x2, y2); 0 where both boxes are empty."""
    width = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    height = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = width * height
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(a.dtype).tiny), torch.zeros_like(union))


@exercise("intersection over union", task="IoU of two boxes",
          where="notebook 17, object localisation: the intersection of two boxes is the box between the larger of "
                "the two left/top edges and the smaller of the two right/bottom edges, empty (width or height 0, "
                "never negative) when they do not overlap; union = area_a + area_b - intersection",
          sketch="w = (min(a.x2, b.x2) - max(a.x1, b.x1)).______(min=0); same for h; inter = w * h; "
                 "return inter / (area_a + area_b - ____)",
          refuse=("ftlab.tasks.boxes:box_iou",))
def check_iou(call) -> Problem | None:
    """Exercise (notebook 17): ``fn(boxes_a, boxes_b)`` returns the IoU of corresponding boxes, (N,), for boxes (N, 4)
    in (x1, y1, x2, y2) corners. Random boxes, plus disjoint, nested, identical and edge-touching pairs."""
    gen = torch.Generator().manual_seed(28)
    special_a = torch.tensor([[0, 0, 2, 2], [0, 0, 4, 4], [1, 1, 3, 3], [0, 0, 1, 1], [0, 0, 2, 2], [5, 5, 6, 9.]])
    special_b = torch.tensor([[3, 3, 5, 5], [1, 1, 2, 2], [1, 1, 3, 3], [1, 0, 2, 1], [1, 1, 3, 3], [0, 6, 10, 7.]])
    cases = [(special_a, special_b, "disjoint, nested, identical, touching, overlapping and crossing pairs")]
    for n, dtype in ((20, torch.float32), (50, torch.float64), (1, torch.float32)):
        corners = torch.rand(2, n, 2, 2, generator=gen, dtype=dtype) * 10  # (a/b, N, two corners, x/y)
        boxes = torch.cat([corners.min(dim=2).values, corners.max(dim=2).values], dim=-1)  # (2, N, 4)
        cases.append((boxes[0], boxes[1], f"{n} random pairs, {str(dtype).removeprefix('torch.')}"))
    for a, b, label in cases:
        want = box_iou(a, b)
        case = f"{label}"
        got, problem = as_tensor(call(a.clone(), b.clone(), case=case))
        if problem:
            return problem._replace(what=f"{case}: {problem.what}")
        if tuple(got.shape) != (len(a),):
            return Problem(f"{case}: expected one IoU per pair, shape ({len(a)},), got {tuple(got.shape)}")
        if close(got, want):
            continue
        width = torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])
        height = torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])
        inter = width.clamp(min=0) * height.clamp(min=0)
        area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
        area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        wrong = (~torch.isclose(got.double(), want.double(), atol=1e-5)).nonzero()[0].item()
        detail = f"pair {wrong}: {a[wrong].tolist()} and {b[wrong].tolist()} gave {got[wrong].item():.4f}, " \
                 f"expected {want[wrong].item():.4f}"
        unclamped = width * height
        if (got < 0).any() or close(got, unclamped / (area_a + area_b - unclamped)):
            return Problem(f"{case}: {detail}: boxes that do not overlap have a negative width or height of overlap, "
                           "which must count as 0")
        if close(got, inter / (area_a + area_b)):
            return Problem(f"{case}: {detail}: the union counts the intersection twice")
        if close(got, inter / area_a):
            return Problem(f"{case}: {detail}: that divides by the first box's area, not by the union")
        return Problem(f"{case}: {detail}")
    return None


def best_span(start_logits: torch.Tensor, end_logits: torch.Tensor, max_answer_length: int) -> tuple[int, int]:
    """The span (start, end), end inclusive, maximising start_logits[start] + end_logits[end] over
    start <= end < start + max_answer_length."""
    T = len(start_logits)
    scores = start_logits[:, None] + end_logits[None, :]  # (T, T): rows start, columns end
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    scores = scores.masked_fill((j < i) | (j - i >= max_answer_length), float("-inf"))
    flat = scores.argmax().item()
    return flat // T, flat % T


@exercise("the best answer span", task="span decoding",
          where="notebook 17, extractive QA: a span's score is start_logits[s] + end_logits[e]; only spans with "
                "s <= e and at most max_answer_length tokens (e - s + 1 <= max_answer_length) are answers; the "
                "separate argmaxes of the two logits often break these rules",
          sketch="scores = start_logits[:, None] + end_logits[None, :]   # (T, T); set the entries with e < s or "
                 "e - s + 1 > max_answer_length to -inf; the argmax of what remains, as (row, column)",
          refuse=("ftlab.tasks.qa:best_spans",))
def check_best_span(call) -> Problem | None:
    """Exercise (notebook 17): ``fn(start_logits, end_logits, max_answer_length)`` returns the answer span (start,
    end), end inclusive, with the highest start_logits[start] + end_logits[end] among spans with start <= end and at
    most ``max_answer_length`` tokens. Random logits where the separate argmaxes give an end before the start or a
    span that is too long."""
    gen = torch.Generator().manual_seed(29)
    rng = random.Random(29)
    cases = []
    for k in range(8):
        T = rng.randint(5, 40)
        start, end = torch.randn(T, generator=gen), torch.randn(T, generator=gen)
        if k % 2 == 0:  # the best end lies before the best start
            s, e = rng.randint(2, T - 1), rng.randint(0, 1)
            start[s], end[e] = 8.0, 8.0
        max_len = rng.choice([1, 2, 3, 5, 30])
        cases.append((start, end, max_len))
    cases.append((torch.tensor([0.0, 5, 0, 0, 0, 0]), torch.tensor([0.0, 0, 0, 0, 0, 5]), 2))  # too long
    for start, end, max_len in cases:
        want = best_span(start, end, max_len)
        case = f"{len(start)} tokens, max_answer_length={max_len}"
        got = call(start.clone(), end.clone(), max_len, case=case)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            return Problem(f"{case}: expected a pair (start, end), got {got!r:.60}", "end with `return start, end`")
        try:
            got = tuple(int(v) for v in got)
        except (TypeError, ValueError):
            return Problem(f"{case}: expected two integer positions, got {got!r:.60}")
        if got == want:
            continue
        s, e = got
        if e < s:
            return Problem(f"{case}: you give ({s}, {e}), an end before the start; expected {want}",
                           "the two argmaxes taken separately can break the rule start <= end")
        if e - s + 1 > max_len:
            return Problem(f"{case}: you give ({s}, {e}), {e - s + 1} tokens, longer than max_answer_length; "
                           f"expected {want}")
        if (s, e + 1) == want or (s, e - 1) == want:
            return Problem(f"{case}: you give ({s}, {e}), expected {want}: is your end inclusive?")
        return Problem(f"{case}: you give ({s}, {e}) with score {start[s] + end[e]:.3f}, expected {want} with score "
                       f"{start[want[0]] + end[want[1]]:.3f}")
    return None
