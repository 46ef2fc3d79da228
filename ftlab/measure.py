"""Parameter counts, memory breakdown and step timing, measured the same way for every method.

Memory of one training step has four parts:

* **weights**: every parameter and buffer of the model (trainable and frozen), numel x element size;
* **gradients**: one tensor per trainable parameter, same size as the parameter;
* **optimizer state**: what the optimizer keeps after a real step (AdamW: two moments per
  trainable parameter, plus a scalar step counter);
* **activations**: the tensors autograd saves in the forward pass to compute the backward
  pass, counted with ``torch.autograd.graph.saved_tensors_hooks`` (each storage once; the
  parameters themselves are not counted again).
"""
from __future__ import annotations

import contextlib
import statistics
import time
from collections import defaultdict

import torch

from ftlab.train import default_loss, to_device
from ftlab.validate import check_int, check_number, check_positive_int

# The parts of one training step's memory that memory_report returns, in the order plots stack them.
MEMORY_PARTS = ["weights_trainable", "weights_frozen", "buffers", "gradients", "optimizer_state", "activations"]


def count_parameters(model: torch.nn.Module, verbose: bool = False) -> dict:
    """Count trainable and total parameters: ``{"trainable", "total", "percent"}``.

    With ``verbose=True`` prints the line peft prints, so figures can be compared directly:
    ``trainable params: N || all params: M || trainable%: P``.
    Modules that store a packed (quantised) weight say how many parameters it stands for
    through a ``num_packed_parameters`` attribute; those count as frozen parameters.
    """
    _check_model(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    total += sum(getattr(m, "num_packed_parameters", 0) for m in model.modules())
    percent = 100.0 * trainable / total if total else 0.0
    if verbose:
        print(format_parameters(trainable, total))
    return {"trainable": trainable, "total": total, "percent": percent}


def format_parameters(trainable: int, total: int) -> str:
    """peft's ``print_trainable_parameters`` line for these counts (trainable% is 0 for a model without parameters)."""
    percent = 100 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {percent:.4f}"


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def weight_bytes(model: torch.nn.Module) -> dict:
    """Bytes of parameters (trainable, frozen) and buffers, and of each dtype.

    Returns ``{"trainable": int, "frozen": int, "buffers": int, "by_dtype": {"torch.float32": int, ...}}``.
    Quantised weights are usually buffers (uint8), so they appear under ``buffers``.
    """
    out = {"trainable": 0, "frozen": 0, "buffers": 0, "by_dtype": defaultdict(int)}
    for p in model.parameters():
        out["trainable" if p.requires_grad else "frozen"] += _tensor_bytes(p)
        out["by_dtype"][str(p.dtype)] += _tensor_bytes(p)
    for b in model.buffers():
        out["buffers"] += _tensor_bytes(b)
        out["by_dtype"][str(b.dtype)] += _tensor_bytes(b)
    out["by_dtype"] = dict(out["by_dtype"])
    return out


class SavedActivations:
    """Context manager that adds up the bytes autograd saves for the backward pass.

    Each storage is counted once (a view and its base share one storage), and the storages
    of the model's parameters are skipped: they are weights, not activations. Under
    ``torch.no_grad`` nothing is saved, so the count stays zero.

        with SavedActivations(model) as saved:
            loss = model(x).sum()
        saved.bytes
    """

    def __init__(self, model: torch.nn.Module | None = None):
        self.skip = set()
        if model is not None:
            self.skip = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: set[int] = set()
        self.bytes = 0

    def _pack(self, t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.skip and ptr not in self.seen:
            self.seen.add(ptr)
            self.bytes += storage.nbytes()
        return t

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        return False


def _check_model(model) -> None:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")


@contextlib.contextmanager
def _trial_steps(model: torch.nn.Module, what: str):
    """Yield the trainable parameters for a few trial steps, then put everything back.

    Measuring must leave no trace: the trainable weights and their gradients, every buffer
    (BatchNorm's running statistics and step count), the train/eval mode and the random number
    generators of the CPU and of every CUDA device the model uses (dropout draws from them)
    are restored afterwards, even when the step fails. So a ``fit`` after ``memory_report``
    gives the same losses as without it. The copies are kept on the CPU, so they add nothing
    to the CUDA memory being measured.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"the model has no trainable parameters, so there is no training step to {what}")
    saved_params = [p.detach().to("cpu", copy=True) for p in params]
    saved_grads = [p.grad for p in params]
    buffers = list(model.buffers())
    saved_buffers = [b.detach().to("cpu", copy=True) for b in buffers]
    cuda_devices = sorted({t.device.index or 0 for t in params + buffers if t.device.type == "cuda"})
    was_training = model.training
    with torch.random.fork_rng(devices=cuda_devices):
        for p in params:
            p.grad = None
        model.train()
        try:
            yield params
        finally:
            with torch.no_grad():
                for p, value, grad in zip(params, saved_params, saved_grads):
                    p.copy_(value)
                    p.grad = grad
                for b, value in zip(buffers, saved_buffers):
                    b.copy_(value)
            model.train(was_training)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's per-parameter state tensors (AdamW: exp_avg and exp_avg_sq).

    0-dimensional entries (AdamW's ``step`` counter) are bookkeeping of 4 bytes per
    parameter tensor, not per-element state, and are left out.
    """
    return sum(
        _tensor_bytes(v)
        for state in optimizer.state.values()
        for v in state.values()
        if torch.is_tensor(v) and v.dim() > 0
    )


def memory_report(model: torch.nn.Module, batch, *, loss_fn=None, optimizer: str = "adamw",
                  lr: float = 1e-3, name: str | None = None) -> dict:
    """Measure the memory of one real training step of ``model`` on ``batch``.

    Runs forward, backward and one optimizer step (AdamW by default, or ``"sgd"``) in train
    mode, then restores weights, gradients, buffers, mode and random state, so the model and
    the random number generators are left as they were.
    Returns a flat dict (one pandas row): ``weights_trainable``, ``weights_frozen``,
    ``buffers``, ``gradients``, ``optimizer_state``, ``activations``, ``total`` (their sum),
    ``weights_by_dtype`` and, on CUDA, ``cuda_peak_allocated``. All values are bytes.
    """
    _check_model(model)
    loss_fn = loss_fn or default_loss
    optimizers = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    if optimizer not in optimizers:
        raise ValueError(f"optimizer must be one of {sorted(optimizers)}, got {optimizer!r}")
    check_number("lr", lr, minimum=0.0, strict_minimum=True)
    with _trial_steps(model, "measure") as params:
        dev = params[0].device
        batch = to_device(batch, dev)
        opt = optimizers[optimizer](params, lr=lr)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        with SavedActivations(model) as saved:
            loss = loss_fn(model, batch)
        loss.backward()
        grads = sum(_tensor_bytes(p.grad) for p in params if p.grad is not None)
        opt.step()
        state = optimizer_state_bytes(opt)
        peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    weights = weight_bytes(model)
    row = {
        "weights_trainable": weights["trainable"],
        "weights_frozen": weights["frozen"],
        "buffers": weights["buffers"],
        "gradients": grads,
        "optimizer_state": state,
        "activations": saved.bytes,
    }
    row["total"] = sum(row.values())
    row["weights_by_dtype"] = weights["by_dtype"]
    if peak is not None:
        row["cuda_peak_allocated"] = peak
    if name is not None:
        row = {"name": name, **row}
    return row


def time_step(model: torch.nn.Module, batch, *, loss_fn=None, lr: float = 1e-3, num_steps: int = 5,
              warmup: int = 2) -> float:
    """Median seconds of one training step (forward, backward, AdamW step) after ``warmup`` steps.

    Weights, gradients, buffers, mode and random state are restored afterwards, so timing
    changes neither the model nor the random number generators.
    """
    _check_model(model)
    check_number("lr", lr, minimum=0.0, strict_minimum=True)
    check_positive_int("num_steps", num_steps)
    check_int("warmup", warmup, minimum=0)
    loss_fn = loss_fn or default_loss
    times = []
    with _trial_steps(model, "time") as params:
        dev = params[0].device
        batch = to_device(batch, dev)
        opt = torch.optim.AdamW(params, lr=lr)
        for i in range(warmup + num_steps):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            start = time.perf_counter()
            loss = loss_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)
