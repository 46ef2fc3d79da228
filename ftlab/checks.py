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


def check_discriminative_lrs(fn: Callable) -> bool:
    """Exercise (notebook 02): ``fn(lr, num_groups, factor)`` returns the learning rate of each layer group,
    input side first: group k of G gets lr / factor ** (G - 1 - k), so the head trains at ``lr``.
    Compared with ``ftlab.methods.freeze.discriminative_param_groups`` on a model of 4 and of 6 groups."""
    from torch import nn

    from ftlab.methods.freeze import discriminative_param_groups

    name = "discriminative learning rates"
    problems = []
    for num_groups, lr, factor in ((4, 1e-3, 2.6), (6, 3e-3, 2.0)):
        model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(num_groups)])
        groups = {f"g{k}": [str(k)] for k in range(num_groups)}
        expected = [g["lr"] for g in discriminative_param_groups(model, lr, factor, groups=groups)]
        result, problems = _call(name, fn, lr, num_groups, factor)
        if problems:
            break
        try:
            result = [float(v) for v in result]
        except (TypeError, ValueError):
            problems.append((f"expected a list of numbers, got {type(result).__name__}",
                             "return one learning rate per group, e.g. a list comprehension over range(num_groups)"))
            break
        close = lambda a, b: len(a) == len(b) and all(abs(u - v) <= 1e-9 * abs(v) for u, v in zip(a, b))
        if len(result) != num_groups:
            problems.append((f"got {len(result)} rates for {num_groups} groups", "return one rate per layer group"))
        elif close(result, expected[::-1]):
            problems.append(("the order is reversed: the input side gets the largest rate",
                             "list the groups input side first; the last group (the head) trains at lr"))
        elif close(result, [lr / factor ** (num_groups - k) for k in range(num_groups)]):
            problems.append(("every rate is `factor` times too small: the head should train at exactly lr",
                             "the exponent of group k is num_groups - 1 - k, which is 0 for the head"))
        elif close(result, [lr / (factor * (num_groups - 1 - k) or 1) for k in range(num_groups)]):
            problems.append(("the rates fall linearly, not geometrically",
                             "divide by factor ** (distance from the head), not factor * distance"))
        elif not close(result, expected):
            problems.append((f"for lr={lr}, {num_groups} groups, factor={factor} expected {expected}, got {result}",
                             "group k (0 = input side) gets lr / factor ** (num_groups - 1 - k)"))
        if problems:
            break
    return _report(name, problems)


def check_temperature_sampling(fn: Callable) -> bool:
    """Exercise (notebook 08): ``fn(sizes, T)`` returns ``{task: p}`` with p_i = n_i^(1/T) / sum_j n_j^(1/T),
    temperature sampling over tasks with ``sizes = {task: n_i}``. Compared with ``ftlab.multitask.task_probabilities``."""
    import math

    from ftlab.multitask import task_probabilities

    name = "temperature sampling probabilities"
    sizes = {"small": 100, "medium": 900, "big": 10000}
    problems = []
    for T in (1.0, 2.0, 5.0):
        result, problems = _call(name, fn, dict(sizes), T)
        if problems:
            break
        if not isinstance(result, dict) or set(result) != set(sizes):
            problems.append((f"expected a dict with one probability per task {sorted(sizes)}, got {result!r:.80}",
                             "return {task: probability} with the same keys as sizes"))
            break
        got = {task: float(p) for task, p in result.items()}
        expected = task_probabilities(sizes, "temperature", T)
        if all(math.isclose(got[t], expected[t], rel_tol=1e-6) for t in sizes):
            continue
        total = sum(got.values())
        proportional = task_probabilities(sizes, "proportional")
        if not math.isclose(total, 1.0, rel_tol=1e-6):
            problems.append((f"with T={T:g} the probabilities sum to {total:.4g}, not 1",
                             "divide every weight n_i^(1/T) by the sum of all the weights"))
        elif T != 1.0 and all(math.isclose(got[t], proportional[t], rel_tol=1e-6) for t in sizes):
            problems.append((f"with T={T:g} you return the proportional probabilities n_i / sum n: T is ignored",
                             "raise each size to the power 1/T before normalising"))
        elif all(math.isclose(got[t], 1 / len(sizes), rel_tol=1e-6) for t in sizes):
            problems.append((f"with T={T:g} every task gets 1/N: that is the limit T -> infinity (round-robin)",
                             "weight task i by n_i ** (1 / T), which depends on its size"))
        elif got["small"] < proportional["small"] - 1e-9:
            problems.append((f"with T={T:g} the small task gets {got['small']:.4f}, even less than proportional "
                             f"sampling gives it ({proportional['small']:.4f})",
                             "the exponent is 1/T, not T: a higher temperature must flatten the distribution"))
        else:
            problems.append((f"with T={T:g} you give {got}, expected {expected}",
                             "p_i = n_i ** (1 / T) / sum_j n_j ** (1 / T)"))
        break
    return _report(name, problems)


def check_forgetting(fn: Callable) -> bool:
    """Exercise (notebook 09): ``fn(R)`` returns the forgetting of each earlier task of an accuracy matrix R (T, T),
    f_j = max_{l<T-1} R[l, j] - R[T-1, j] for j < T-1 (Chaudhry et al. 2018), as a sequence of T-1 numbers.
    Compared with ``ftlab.continual.forgetting``."""
    import numpy as np

    from ftlab.continual import forgetting

    name = "forgetting from an accuracy matrix"
    R = np.array([[0.90, 0.10, 0.20],
                  [0.95, 0.80, 0.30],
                  [0.50, 0.70, 0.90]])  # task 0 improves after task 1: best 0.95, not R[0, 0]
    expected = forgetting(R)
    result, problems = _call(name, fn, R.copy())
    if not problems:
        try:
            got = np.asarray(result, dtype=float).reshape(-1)
        except (TypeError, ValueError):
            got = None
        if got is None:
            problems.append((f"expected a sequence of numbers, got {type(result).__name__}",
                             "return a list or a NumPy array with one number per earlier task"))
        elif got.shape != expected.shape:
            problems.append((f"expected {len(expected)} numbers (one per task except the last), got {got.size}",
                             "the last task cannot have been forgotten yet: loop over j < T-1 only"))
        elif np.allclose(got, expected):
            pass
        elif np.allclose(got, -expected):
            problems.append(("the sign is flipped", "forgetting is the best earlier accuracy minus the final one"))
        elif np.allclose(got, [R[j, j] - R[-1, j] for j in range(len(R) - 1)]):
            problems.append(("you subtract from R[j, j], the accuracy right after task j; task 0 was even better "
                             "(0.95) after task 1", "take the maximum of column j over the rows l < T-1"))
        else:
            problems.append((f"you give {np.round(got, 4).tolist()}, expected other values",
                             "f_j = max over l < T-1 of R[l, j], minus R[T-1, j]"))
    return _report(name, problems)


def check_step_memory(fn: Callable) -> bool:
    """Exercise (notebook 13): ``fn(trainable, total)`` returns the bytes of one float32 AdamW training step that do
    not depend on the batch: ``{"weights": ..., "gradients": ..., "optimizer_state": ...}``, as ``ftlab.measure``
    measures them (every weight stored; a gradient and AdamW's two moments per trainable parameter)."""
    name = "memory of a training step from parameter counts"
    cases = [(74_498, 22_788_484), (22_713_986, 22_713_986), (1_026, 11_177_538)]  # LoRA and full on MiniLM, head only
    problems = []
    for trainable, total in cases:
        result, problems = _call(name, fn, trainable, total)
        if problems:
            break
        expected = {"weights": 4 * total, "gradients": 4 * trainable, "optimizer_state": 8 * trainable}
        if not isinstance(result, dict) or set(result) != set(expected):
            problems.append((f"expected a dict with keys {sorted(expected)}, got {result!r}",
                             "return {'weights': ..., 'gradients': ..., 'optimizer_state': ...}"))
        elif result["weights"] != expected["weights"]:
            hint = ("frozen weights are stored too: count all `total` parameters"
                    if result["weights"] == 4 * trainable else "float32 is 4 bytes per parameter")
            problems.append((f"weights for {trainable:,} of {total:,}: got {result['weights']}, "
                             f"expected {expected['weights']}", hint))
        elif result["gradients"] != expected["gradients"]:
            problems.append((f"gradients for {trainable:,} of {total:,}: got {result['gradients']}, "
                             f"expected {expected['gradients']}",
                             "only trainable parameters get a gradient (requires_grad=False ones do not)"))
        elif result["optimizer_state"] != expected["optimizer_state"]:
            hint = ("AdamW keeps two moments per trainable parameter (exp_avg and exp_avg_sq)"
                    if result["optimizer_state"] == 4 * trainable else
                    "the optimizer only tracks trainable parameters: 2 moments x 4 bytes each")
            problems.append((f"optimizer state for {trainable:,} of {total:,}: got {result['optimizer_state']}, "
                             f"expected {expected['optimizer_state']}", hint))
        if problems:
            break
    return _report(name, problems)


def check_sft_labels(fn: Callable) -> bool:
    """Exercise (notebook 10): ``fn(prompt_ids, response_ids, width)`` returns the SFT labels of one example
    padded to ``width``: -100 on every prompt and padding position, the response token ids (unshifted) elsewhere.
    Compared with the labels of ``ftlab.align.sft.collate``."""
    from ftlab.align.sft import collate

    name = "SFT labels with the prompt masked"
    prompt_ids, response_ids, width = [0, 17, 5, 9, 2], [11, 4, 0], 10  # bos + prompt, response + eos
    expected = collate([(prompt_ids, response_ids), ([0] * width, [])], pad_token_id=1)["labels"][0].tolist()
    result, problems = _call(name, fn, list(prompt_ids), list(response_ids), width)
    if not problems:
        labels = result.tolist() if isinstance(result, torch.Tensor) else result
        ids = prompt_ids + response_ids
        if not isinstance(labels, (list, tuple)) or not all(isinstance(v, int) for v in labels):
            problems.append((f"expected a list (or 1-D tensor) of ints, got {type(result).__name__}",
                             "build a list: [-100] * ... + response_ids + [-100] * ..."))
        elif len(labels) != width:
            problems.append((f"the labels have length {len(labels)}, expected width={width}",
                             "pad with -100 up to `width` after the response"))
        elif list(labels[:len(ids)]) == ids:
            problems.append(("the prompt tokens are labelled, so the model would also learn to write prompts",
                             "put -100 (ignored by cross-entropy) at every prompt position"))
        elif list(labels[:len(ids) - 1]) == [-100] * (len(prompt_ids) - 1) + response_ids:
            problems.append(("the labels are shifted one position to the left",
                             "do not shift: the model compares the logits at t with the label at t + 1 itself"))
        elif list(labels[:len(ids)]) == expected[:len(ids)] and list(labels) != expected:
            problems.append(("the padding positions are not -100, so the model would learn to predict padding",
                             "fill every position after the response with -100"))
        elif list(labels) != expected:
            problems.append((f"got {list(labels)}, expected {expected}",
                             "-100 for each prompt token, then the response ids, then -100 up to width"))
    return _report(name, problems)


def check_adapter_forward(fn: Callable) -> bool:
    """Exercise (notebook 03): ``fn(h, W_down, b_down, W_up, b_up)`` returns a bottleneck adapter's output
    h + W_up relu(W_down h + b_down) + b_up, for a batch h: (n, d); W_down: (b, d), b_down: (b,), W_up: (d, b),
    b_up: (d,). Compared with ``ftlab.methods.adapter.Bottleneck`` (ReLU) with a non-zero up projection."""
    from ftlab.methods.adapter import BottleneckMLP as Bottleneck

    name = "bottleneck adapter forward pass"
    torch.manual_seed(0)
    adapter = Bottleneck(8, 4, "relu", conv=False)  # d = 8, bottleneck b = 2
    torch.nn.init.normal_(adapter.up.weight)  # the adapter starts as the identity; make the up projection show
    torch.nn.init.normal_(adapter.up.bias)
    W_down, b_down = adapter.down.weight.detach(), adapter.down.bias.detach()  # (2, 8), (2,)
    W_up, b_up = adapter.up.weight.detach(), adapter.up.bias.detach()  # (8, 2), (8,)
    h = torch.randn(5, 8)
    with torch.no_grad():
        expected = adapter(h)  # (5, 8)
    result, problems = _call(name, fn, h, W_down, b_down, W_up, b_up)
    if not problems:
        z = h @ W_down.T + b_down  # (5, 2)
        if not isinstance(result, torch.Tensor):
            problems.append((f"expected a tensor, got {type(result).__name__}", "return a torch tensor of shape (n, d)"))
        elif tuple(result.shape) != tuple(expected.shape):
            problems.append((f"the output has shape {tuple(result.shape)}, expected (n, d) = {tuple(expected.shape)}",
                             "h is (n, d); h @ W_down.T is (n, b) and that @ W_up.T is (n, d) again"))
        elif torch.allclose(result, torch.relu(z) @ W_up.T + b_up, atol=1e-5):
            problems.append(("the residual connection is missing: that is the bottleneck MLP alone",
                             "add the input back: h + up(act(down(h))); that is what makes a zero W_up the identity"))
        elif torch.allclose(result, h + z @ W_up.T + b_up, atol=1e-5):
            problems.append(("the non-linearity is missing: two linear maps in a row are just one low-rank map",
                             "apply torch.relu to the down projection's output before the up projection"))
        elif torch.allclose(result, h + torch.relu(z) @ W_up.T, atol=1e-5):
            problems.append(("the up projection's bias b_up is missing", "add b_up after multiplying by W_up.T"))
        elif not torch.allclose(result, expected, atol=1e-5):
            problems.append(("the values differ from the Bottleneck adapter's output",
                             "compute down = h @ W_down.T + b_down, then h + relu(down) @ W_up.T + b_up"))
    return _report(name, problems)


def check_prepend_virtual_tokens(fn: Callable) -> bool:
    """Exercise (notebook 06): ``fn(inputs_embeds, prompt, attention_mask, labels)`` prepends a learned prompt
    (P, d) to every sequence of ``inputs_embeds`` (B, T, d) and returns ``(inputs_embeds, attention_mask, labels)``
    of shapes (B, P + T, d), (B, P + T), (B, P + T): P ones in front of the mask, P times -100 in front of the
    labels (nothing to predict at a virtual position). Compared with what ``ftlab.methods.prompt.PromptTuning``
    feeds the base model."""
    name = "prepend virtual tokens"
    torch.manual_seed(0)
    B, T, P, d = 3, 5, 4, 6
    embeds, prompt = torch.randn(B, T, d), torch.randn(P, d)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[2, 3:] = 0  # a right-padded row
    labels = torch.randint(0, 50, (B, T)).masked_fill(mask == 0, -100)
    want_embeds = torch.cat([prompt.expand(B, -1, -1), embeds], dim=1)  # (B, P + T, d)
    want_mask = torch.cat([mask.new_ones(B, P), mask], dim=1)  # (B, P + T)
    want_labels = torch.cat([labels.new_full((B, P), -100), labels], dim=1)  # (B, P + T)
    result, problems = _call(name, fn, embeds.clone(), prompt.clone(), mask.clone(), labels.clone())
    if not problems:
        if not isinstance(result, (tuple, list)) or len(result) != 3:
            problems.append(("expected three tensors back: (inputs_embeds, attention_mask, labels)",
                             "end with `return inputs_embeds, attention_mask, labels`"))
        else:
            out_embeds, out_mask, out_labels = (torch.as_tensor(t) for t in result)
            if tuple(out_embeds.shape) != (B, P + T, d):
                problems.append((f"inputs_embeds has shape {tuple(out_embeds.shape)}, expected (B, P + T, d) = "
                                 f"{(B, P + T, d)}", "expand the prompt to (B, P, d) and torch.cat along dim=1"))
            elif torch.equal(out_embeds, torch.cat([embeds, prompt.expand(B, -1, -1)], dim=1)):
                problems.append(("the prompt comes after the tokens", "the virtual tokens go first: cat([prompt, x])"))
            elif not torch.allclose(out_embeds, want_embeds):
                problems.append(("inputs_embeds differ from [prompt ; embeddings]",
                                 "every sequence of the batch gets the same prompt: prompt.expand(B, -1, -1)"))
            elif tuple(out_mask.shape) != (B, P + T):
                problems.append((f"attention_mask has shape {tuple(out_mask.shape)}, expected (B, P + T) = {(B, P + T)}",
                                 "the mask needs one entry per position, virtual ones included"))
            elif torch.equal(out_mask[:, :P], torch.zeros_like(out_mask[:, :P])):
                problems.append(("the mask hides the virtual tokens (zeros in front)",
                                 "every real token must be able to attend to the prompt: P ones in front"))
            elif not torch.equal(out_mask.long(), want_mask):
                problems.append(("the attention mask differs", "cat([ones (B, P), attention_mask], dim=1)"))
            elif tuple(out_labels.shape) != (B, P + T):
                problems.append((f"labels have shape {tuple(out_labels.shape)}, expected (B, P + T) = {(B, P + T)}",
                                 "labels must line up with the longer input, position for position"))
            elif not torch.equal(out_labels[:, :P], want_labels[:, :P]):
                problems.append(("the virtual positions get labels to predict",
                                 "put -100 there (ignored by cross-entropy): labels.new_full((B, P), -100)"))
            elif not torch.equal(out_labels.long(), want_labels):
                problems.append(("the real tokens' labels changed", "keep the original labels after the P -100s"))
    return _report(name, problems)


def check_gae(fn: Callable) -> bool:
    """Exercise (notebook 11): ``fn(rewards, values, gamma, lam)`` returns ``(advantages, returns)`` of one response,
    each (T,), by generalised advantage estimation (the value after the last token is 0). Compared with
    ``ftlab.align.rlhf.gae``."""
    from ftlab.align.rlhf import gae

    name = "generalised advantage estimation"
    rewards = torch.tensor([-0.1, 0.05, -0.2, 1.5], dtype=torch.float64)  # KL penalties, the score on the last token
    values = torch.tensor([0.4, 0.7, 0.2, 0.9], dtype=torch.float64)
    gamma, lam = 0.9, 0.8
    expected_adv, expected_ret = (t[0] for t in gae(rewards[None], values[None], torch.ones(1, 4), gamma, lam))
    result, problems = _call(name, fn, rewards.clone(), values.clone(), gamma, lam)
    if not problems:
        if not (isinstance(result, (tuple, list)) and len(result) == 2):
            problems.append((f"expected a pair (advantages, returns), got {type(result).__name__}",
                             "end with `return advantages, returns`"))
        else:
            try:
                adv, ret = (torch.as_tensor(t, dtype=torch.float64) for t in result)
            except (TypeError, ValueError, RuntimeError) as err:
                return _report(name, [(f"the pair does not hold two tensors ({type(err).__name__}: {err})",
                                       "return two tensors of shape (T,): `return advantages, returns`")])
            deltas = rewards + gamma * torch.cat([values[1:], torch.zeros(1, dtype=torch.float64)]) - values
            if adv.shape != (4,) or ret.shape != (4,):
                problems.append((f"shapes {tuple(adv.shape)} and {tuple(ret.shape)}, expected (T,) = (4,) each",
                                 "one advantage and one return per token"))
            elif torch.allclose(adv, deltas):
                problems.append(("those are the one-step TD errors delta_t, not yet summed",
                                 "go backwards: A_t = delta_t + gamma * lam * A_{t+1}"))
            elif torch.allclose(adv, rewards - values):
                problems.append(("the next state's value gamma * V_{t+1} is missing from delta_t",
                                 "delta_t = r_t + gamma * V_{t+1} - V_t, with V_T = 0 after the last token"))
            elif not torch.allclose(adv, expected_adv, atol=1e-8):
                problems.append((f"advantages {adv.tolist()} differ from {expected_adv.tolist()}",
                                 "loop t from T-1 down to 0, keeping the next advantage and the next value "
                                 "(both 0 after the last token); lam multiplies gamma"))
            elif torch.allclose(ret, expected_adv, atol=1e-8):
                problems.append(("the returns equal the advantages", "returns are advantages plus values: R_t = A_t + V_t"))
            elif not torch.allclose(ret, expected_ret, atol=1e-8):
                problems.append((f"returns {ret.tolist()} differ from {expected_ret.tolist()}", "R_t = A_t + V_t"))
    return _report(name, problems)


def check_dpo_loss(fn: Callable) -> bool:
    """Exercise (notebook 12): ``fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)`` returns the
    DPO loss (Rafailov et al. 2023, eq. 7) as a scalar tensor: the mean over pairs of
    -log sigmoid(beta [(policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)]). Inputs (B,) summed
    response log-probabilities. Compared with ``ftlab.align.dpo.dpo_loss``."""
    import torch.nn.functional as F

    from ftlab.align.dpo import dpo_loss

    name = "the DPO loss"
    pc = torch.tensor([-5.0, -9.0, -4.0], dtype=torch.float64)
    pr = torch.tensor([-7.0, -6.0, -8.5], dtype=torch.float64)
    rc = torch.tensor([-6.0, -8.0, -5.0], dtype=torch.float64)
    rr = torch.tensor([-6.0, -7.0, -7.0], dtype=torch.float64)
    beta = 0.5
    expected = dpo_loss(pc, pr, rc, rr, beta)[0]
    result, problems = _call(name, fn, pc.clone(), pr.clone(), rc.clone(), rr.clone(), beta)
    if not problems:
        try:
            value = torch.as_tensor(result, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            value = None
        margin = (pc - rc) - (pr - rr)
        if value is None:
            problems.append((f"expected a scalar tensor, got {type(result).__name__}", "return the loss as a tensor"))
        elif value.numel() != 1:
            problems.append((f"expected a single number, got shape {tuple(value.shape)}",
                             "average the per-pair losses with .mean()"))
        elif torch.isclose(value, -F.logsigmoid(beta * margin).sum()):
            problems.append(("that is the sum over pairs", "take the mean over pairs, so the loss does not grow with B"))
        elif torch.isclose(value, -F.logsigmoid(beta * (pc - pr)).mean()):
            problems.append(("the reference model is missing",
                             "subtract the reference log-probabilities: (policy_chosen - ref_chosen) - ..."))
        elif torch.isclose(value, -F.logsigmoid(margin).mean()):
            problems.append(("beta is missing", "multiply the difference of log-ratios by beta before the sigmoid"))
        elif torch.isclose(value, -F.logsigmoid(-beta * margin).mean()):
            problems.append(("the sign is flipped: this loss prefers the rejected response",
                             "use (chosen log-ratio) - (rejected log-ratio)"))
        elif torch.isclose(value, -torch.sigmoid(beta * margin).mean()):
            problems.append(("the log is missing", "the loss is -log sigmoid(...); F.logsigmoid is the stable way"))
        elif not torch.isclose(value, expected):
            problems.append((f"got {value.item():.6f}, expected {expected.item():.6f}",
                             "-F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()"))
    return _report(name, problems)
