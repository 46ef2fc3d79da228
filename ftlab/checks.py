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



def check_new_head(fn: Callable) -> bool:
    """Exercise (notebook 01): ``fn(model, num_classes)`` gives a torchvision ResNet a new, trainable head
    ``fc = Linear(512, num_classes)`` and returns the model, every backbone weight as it was."""
    from torchvision.models import resnet18

    name = "a new head for a pretrained ResNet"
    torch.manual_seed(0)
    model = resnet18(num_classes=52).eval()  # stands in for the glyph checkpoint and its 52-letter head
    backbone = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    result, problems = _call(name, fn, model, 10)
    if not problems:
        head = getattr(result, "fc", None)
        if not isinstance(result, torch.nn.Module):
            problems.append((f"expected the model back, got {type(result).__name__}",
                             "end the function with `return model`"))
        elif not isinstance(head, torch.nn.Linear):
            problems.append((f"model.fc should be a torch.nn.Linear, got {type(head).__name__}",
                             "assign model.fc = torch.nn.Linear(in_features, num_classes)"))
        elif head.out_features != 10:
            problems.append((f"the head has {head.out_features} outputs, expected one per class (10)",
                             "the second argument of torch.nn.Linear is the number of classes"))
        elif head.in_features != 512:
            problems.append((f"the head takes {head.in_features} features, but ResNet-18's backbone gives 512",
                             "read the size from the old head: model.fc.in_features"))
        elif not all(p.requires_grad for p in head.parameters()):
            problems.append(("the new head is frozen", "a new head must train: leave requires_grad=True"))
        else:
            state = result.state_dict()
            if any(k not in state or not torch.equal(state[k], v) for k, v in backbone.items()):
                problems.append(("the backbone's weights changed",
                                 "replace only model.fc; keep conv1 ... layer4 as loaded"))
            else:
                logits, problems = _call(name, result, torch.zeros(2, 3, 32, 32))
                if not problems and tuple(logits.shape) != (2, 10):
                    problems.append((f"the model gives logits of shape {tuple(logits.shape)}, expected (batch, 10)",
                                     "the head must be the model's last layer"))
    return _report(name, problems)


def check_nf4_lookup(fn: Callable) -> bool:
    """Exercise (notebook 05): ``fn(x, code)`` returns, for each value of ``x`` (n,), the index (int64) of the
    nearest value in ``code`` (16,): the lookup that turns block-normalised weights into 4-bit codes.
    Compared with ``ftlab.methods.nf4.nearest_code`` on NF4 and int4 tables."""
    from ftlab.methods.nf4 import code_table, nearest_code

    name = "nearest 4-bit code"
    generator = torch.Generator().manual_seed(0)
    problems = []
    for table in ("nf4", "int4"):
        code = code_table(table).clone()
        x = torch.rand(2000, generator=generator) * 2 - 1
        x = torch.cat([x, code.clamp(-1, 1), torch.tensor([-1.0, 0.0, 1.0])])  # random values, the levels, the ends
        # values within rounding of a midpoint between two codes could honestly go either way: leave them out
        levels = code.sort().values
        midpoints = (levels[:-1] + levels[1:]) / 2  # (15,)
        x = x[(x[:, None] - midpoints[None, :]).abs().amin(dim=1) > 1e-5]  # (n,)
        expected = nearest_code(x, code)
        result, problems = _call(name, fn, x, code)
        if problems:
            break
        if not isinstance(result, torch.Tensor):
            problems.append((f"expected a tensor of indices, got {type(result).__name__}",
                             "return a torch tensor with one index per value of x"))
        elif result.shape != x.shape:
            problems.append((f"for x of shape {tuple(x.shape)} the result has shape {tuple(result.shape)}",
                             "reduce over the code dimension only: argmin(dim=1) of an (n, 16) distance table"))
        elif result.is_floating_point():
            if torch.allclose(result, code[expected]):
                problems.append(("it returns the code values, not their indices",
                                 "return the position k of the nearest value (argmin), not code[k]"))
            else:
                problems.append((f"expected integer indices, got {result.dtype}", "argmin returns int64 indices"))
        elif not torch.equal(result.long(), expected):
            wrong = (result.long() != expected).float().mean().item()
            if table == "int4":  # NF4, checked first, passed
                problems.append(("it works for NF4 but not for another table (int4)",
                                 "use the `code` argument, not a fixed NF4 table"))
            else:
                problems.append((f"{100 * wrong:.1f}% of the {table} indices differ from the nearest code",
                                 "compare |x - code_k| for every k, (n, 1) against (1, 16), and take the smallest"))
        if problems:
            break
    return _report(name, problems)


def check_loha_delta(fn: Callable) -> bool:
    """Exercise (notebook 07): ``fn(w1_a, w1_b, w2_a, w2_b, scaling)`` returns LoHa's weight change
    scaling * (w1_a w1_b) * (w2_a w2_b), ``*`` element-wise; w1_a, w2_a: (out, r), w1_b, w2_b: (r, in).
    Compared with ``ftlab.methods.loha.LoHaLayer.delta_weight`` on random factors."""
    from ftlab.methods.loha import LoHaLayer

    name = "LoHa's Hadamard-product change"
    torch.manual_seed(0)
    layer = LoHaLayer(torch.nn.Linear(12, 10))
    layer.add_adapter("default", r=3, alpha=6, init_weights=False)
    w1_a, w1_b = layer.hada_w1_a["default"].detach(), layer.hada_w1_b["default"].detach()
    w2_a, w2_b = layer.hada_w2_a["default"].detach(), layer.hada_w2_b["default"].detach()
    expected = layer.delta_weight("default").detach()  # (10, 12)
    result, problems = _call(name, fn, w1_a, w1_b, w2_a, w2_b, 2.0)
    if not problems:
        if not isinstance(result, torch.Tensor):
            problems.append((f"expected a tensor, got {type(result).__name__}", "return a torch tensor of shape (out, in)"))
        elif tuple(result.shape) != tuple(expected.shape):
            problems.append((f"the change has shape {tuple(result.shape)}, expected (out, in) = {tuple(expected.shape)}",
                             "w1_a @ w1_b is (out, in); so is w2_a @ w2_b"))
        elif torch.allclose(result, expected / 2.0, atol=1e-6):
            problems.append(("the scaling is missing", "multiply the product by `scaling` (alpha / r)"))
        elif torch.allclose(result, 2.0 * (w1_a @ w1_b + w2_a @ w2_b), atol=1e-6):
            problems.append(("that adds the two products", "LoHa multiplies them element-wise: `*`, not `+`"))
        elif not torch.allclose(result, expected, atol=1e-6):
            problems.append(("the values differ from LoHa's change",
                             "take the element-wise (Hadamard) product of the two (out, in) matrices, then scale"))
    return _report(name, problems)


def check_lora_forward(fn: Callable) -> bool:
    """Exercise (notebook 04): ``fn(x, W, b, A, B, alpha, r)`` returns LoRA's output
    y = x W^T + b + (alpha / r) x A^T B^T; x: (n, in), W: (out, in), b: (out,), A: (r, in), B: (out, r).
    Compared with ``ftlab.methods.lora.LoraLayer`` wrapped around a small nn.Linear with a non-zero B."""
    from ftlab.methods.lora import LoraLayer

    name = "LoRA forward pass"
    torch.manual_seed(0)
    layer = LoraLayer(torch.nn.Linear(6, 5))
    layer.add_adapter("default", r=3, lora_alpha=12, lora_dropout=0.0, use_rslora=False, use_dora=False,
                      init_lora_weights=False)  # B random, so the LoRA term shows
    W, b = layer.base_layer.weight.detach(), layer.base_layer.bias.detach()  # (5, 6), (5,)
    A, B = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()  # (3, 6), (5, 3)
    x = torch.randn(4, 6)
    with torch.no_grad():
        expected = layer(x)  # (4, 5)
    result, problems = _call(name, fn, x, W, b, A, B, 12, 3)
    if not problems:
        lora = x @ A.T @ B.T  # (4, 5)
        if not isinstance(result, torch.Tensor):
            problems.append((f"expected a tensor, got {type(result).__name__}", "return a torch tensor of shape (n, out)"))
        elif tuple(result.shape) != tuple(expected.shape):
            problems.append((f"the output has shape {tuple(result.shape)}, expected (n, out) = {tuple(expected.shape)}",
                             "x is (n, in); W.T is (in, out), A.T is (in, r) and B.T is (r, out)"))
        elif torch.allclose(result, x @ W.T + b, atol=1e-5):
            problems.append(("that is the base layer alone", "add the low-rank term (alpha / r) * x A^T B^T"))
        elif torch.allclose(result, x @ W.T + b + lora, atol=1e-5):
            problems.append(("the scaling is missing", "multiply the low-rank term by alpha / r"))
        elif torch.allclose(result, x @ W.T + lora * 12 / 3, atol=1e-5):
            problems.append(("the bias is missing", "the base layer's output x W^T + b includes b"))
        elif not torch.allclose(result, expected, atol=1e-5):
            problems.append(("the values differ from LoraLayer's output",
                             "compute x @ W.T + b, then add (alpha / r) * (x @ A.T) @ B.T"))
    return _report(name, problems)
