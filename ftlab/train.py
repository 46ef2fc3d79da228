"""Training and evaluation: plain loops that return dicts.

One convention for a batch, used everywhere in ftlab:

* a ``dict`` (Hugging Face style): the model is called as ``model(**batch)`` and returns
  an output with ``.loss`` (when ``batch`` has ``labels``) and ``.logits``;
* a ``(x, y)`` pair (torchvision style): ``logits = model(x)`` and the loss is
  cross-entropy against the class indices ``y``.

Anything else (DPO, PPO, distillation) passes its own ``loss_fn(model, batch) -> loss``,
so there is still one training loop, ``fit``. Around it:

* ``evaluate``: mean loss and accuracy over a validation set;
* ``lr_find``: the learning-rate range test, which leaves the model as it found it;
* ``checkpointed``: gradient checkpointing for transformers models and torchvision ResNets;
* ``cycle``: the batches of a dataset, pass after pass.

``fit`` runs unchanged under ``torchrun`` (several processes, one model: see ``ftlab.distributed``).
"""
from __future__ import annotations

import contextlib
import itertools
import math
import random
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ftlab import distributed
from ftlab.config import device as default_device
from ftlab.progress import progress as progress_bar
from ftlab.validate import check_choice, check_int, check_number, check_positive_int

IGNORE_INDEX = -100  # the label cross-entropy skips: prompt and padding positions, unscored tokens

# fit's numeric precisions: the dtype of the forward pass and of the weights.
#   fp32        float32 weights, float32 compute (float64 models train in float64).
#   bf16-mixed  float32 weights; the forward pass runs under torch.autocast in bfloat16, which has
#               float32's range (8 exponent bits), so no loss scaling is needed.
#   fp16-mixed  float32 weights; autocast in float16 (largest value 65504, smallest normal 6e-5),
#               so the loss is multiplied by a large scale before backward and the gradients divided
#               by it before the step (torch.amp.GradScaler; a step with overflowed gradients is
#               skipped and the scale halved) (Micikevicius et al. 2018, "Mixed Precision Training").
#   bf16        the weights themselves in bfloat16 (fit casts the model): half the memory of weights,
#               gradients and AdamW state, but updates smaller than 2^-8 of a weight are rounded away.
PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed", "bf16")
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}

# What fit can monitor on the validation set, and which direction is better.
MONITOR_MODES = {"loss": "min", "accuracy": "max"}


class FitError(RuntimeError):
    """``fit`` stopped before ``num_steps``; the message says why and what to try.

    ``err.step`` is the step (1-based) that could not be completed, ``err.history`` the history
    of the steps before it. The model is left as it was after the last good step (step
    ``err.step - 1``): its weights, and BatchNorm's running statistics, as they were then.
    """

    def __init__(self, message: str, *, step: int, history: dict):
        super().__init__(message)
        self.step = step
        self.history = history


def to_device(batch, device: torch.device | str, dtype: torch.dtype | None = None):
    """Move every tensor in a batch (dict, tuple or list, nested) to ``device``.

    With ``dtype`` (e.g. ``torch.bfloat16`` for a model whose weights are bfloat16), the
    floating-point tensors are also cast to it; token ids and labels stay integers.
    """
    if torch.is_tensor(batch):
        if dtype is not None and batch.is_floating_point():
            return batch.to(device, dtype)
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device, dtype) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, dtype) for v in batch)
    return batch


def forward(model: torch.nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` on ``batch`` and return ``(loss, logits)`` by the convention above."""
    if isinstance(batch, dict):
        out = model(**batch)
        logits = out.logits if hasattr(out, "logits") else out
        loss = getattr(out, "loss", None)
        if loss is None:
            if "labels" not in batch:
                raise ValueError("a dict batch needs 'labels' for the loss; pass loss_fn= for other objectives")
            loss = F.cross_entropy(logits, batch["labels"])
        return loss, logits
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        x, y = batch
        logits = model(x)
        return F.cross_entropy(logits, y), logits
    raise TypeError(
        f"a batch must be a dict of tensors (Hugging Face style) or an (x, y) pair, got {type(batch).__name__}"
    )


def default_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    """The loss of ``batch`` under the convention above."""
    return forward(model, batch)[0]


def _labels(batch) -> torch.Tensor:
    return batch["labels"] if isinstance(batch, dict) else batch[1]


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Iterable, *, device: torch.device | str | None = None,
             max_batches: int | None = None, dtype: torch.dtype | None = None) -> dict:
    """Mean loss and accuracy of ``model`` over ``data`` (a list or loader of batches).

    Returns ``{"loss": float, "accuracy": float in [0, 1], "n": examples}``. Accuracy is the
    fraction of examples whose arg-max logit equals the label (positions labelled -100, as in
    language modelling, are ignored). ``dtype``: cast floating-point inputs to it (for a model
    whose weights are bfloat16).
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for batch in itertools.islice(data, max_batches):
        batch = to_device(batch, device, dtype)
        loss, logits = forward(model, batch)
        y = _labels(batch)
        pred = logits.argmax(-1)
        if pred.shape != y.shape:  # causal LM: logits at t predict the label at t+1
            pred, y = pred[..., :-1], y[..., 1:]
        mask = y != IGNORE_INDEX
        correct += (pred[mask] == y[mask]).sum().item()
        n = int(mask.sum().item())
        seen += n
        total_loss += loss.item() * n
    model.train(was_training)
    if seen == 0:
        raise ValueError("evaluate got no labelled examples: is the data empty?")
    return {"loss": total_loss / seen, "accuracy": correct / seen, "n": seen}


def cycle(data: Iterable) -> Iterator:
    """Yield the batches of ``data`` forever, starting a new pass each time it ends.

    Each pass calls ``iter(data)`` again, so a shuffling DataLoader reshuffles. A one-shot
    iterator (a generator: ``iter(data) is data``) cannot start again: after its one pass the
    cycle ends, and the caller says what running out means (``fit`` raises ``FitError``).
    """
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("train_data yielded no batches")
        if iter(data) is data:
            return


def nonfinite_inputs(batch, name: str = "batch") -> list[str]:
    """Names of the floating-point tensors in ``batch`` (nested dicts, tuples) holding NaN or infinity."""
    if torch.is_tensor(batch):
        return [name] if batch.is_floating_point() and not bool(torch.isfinite(batch).all()) else []
    if isinstance(batch, dict):
        return [bad for key, value in batch.items() for bad in nonfinite_inputs(value, f"{name}[{key!r}]")]
    if isinstance(batch, (list, tuple)):
        return [bad for i, value in enumerate(batch) for bad in nonfinite_inputs(value, f"{name}[{i}]")]
    return []


def running_statistics(model: torch.nn.Module) -> list[torch.Tensor]:
    """The buffers a training-mode forward pass changes: BatchNorm's running mean, variance and batch count."""
    return [b for m in model.modules() if getattr(m, "track_running_stats", False) for b in m.buffers(recurse=False)]


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in at ``precision``: ``torch.autocast`` for the mixed ones, else nothing."""
    dtype = AUTOCAST_DTYPES.get(check_choice("precision", precision, PRECISIONS))
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


# ---------------------------------------------------------------- gradient checkpointing

def checkpoint_targets(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The outermost submodules of ``model`` that ``checkpointed`` knows how to checkpoint.

    transformers models that support it (they have their own switch) and torchvision ResNets;
    ``model`` itself or models inside it (a multi-head model's backbone, a reward model's body).
    """
    import torchvision

    found, inside_found = [], set()
    for module in model.modules():  # parents come before their children
        if id(module) in inside_found:
            continue
        if getattr(module, "supports_gradient_checkpointing", False) or isinstance(module, torchvision.models.ResNet):
            found.append(module)
            inside_found.update(id(m) for m in module.modules())
    return found


class CheckpointedStage(torch.nn.Sequential):
    """A ResNet stage (``layer1`` ... ``layer4``) whose blocks run under ``torch.utils.checkpoint``.

    The forward pass keeps only each block's input; backward runs the block again to get the
    activations it needs (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost").
    The blocks are the stage's own modules, so parameter names and the state dict do not change.
    BatchNorm would update its running statistics a second time during that recomputation, so the
    recomputation puts them back as they were (``context_fn``'s second context).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self:
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False,
                                                  context_fn=lambda block=block: (contextlib.nullcontext(),
                                                                                  _statistics_kept(block)))
        return x


@contextlib.contextmanager
def _statistics_kept(module: torch.nn.Module):
    """Put ``module``'s BatchNorm running statistics back as they were when the block is left."""
    stats = running_statistics(module)
    saved = [b.clone() for b in stats]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in zip(stats, saved):
                b.copy_(value)


@contextlib.contextmanager
def checkpointed(model: torch.nn.Module):
    """Gradient checkpointing inside the ``with`` block; the model is as before afterwards.

        with checkpointed(model):
            loss = default_loss(model, batch)   # saves far fewer activations
            loss.backward()                     # runs each checkpointed block's forward again

    transformers models use their own switch (``activation_checkpointing_enable``, formerly
    ``gradient_checkpointing_enable``) with ``use_reentrant=False``, which needs no input that
    requires grad, so it works with frozen embeddings; a torchvision ResNet gets each stage
    swapped for a ``CheckpointedStage``.
    """
    targets = checkpoint_targets(model)
    if not targets:
        raise ValueError(f"gradient checkpointing needs a transformers model (its activation_checkpointing_enable) "
                         f"or a torchvision ResNet inside the model; {type(model).__name__} has neither. Wrap your "
                         "own blocks in torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)")
    undo = []
    for target in targets:
        if hasattr(target, "activation_checkpointing_enable"):
            if not target.is_activation_checkpointing:
                target.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
                undo.append(target.activation_checkpointing_disable)
            if getattr(target.config, "use_cache", False):  # a key-value cache is of no use in training
                target.config.use_cache = False
                undo.append(lambda config=target.config: setattr(config, "use_cache", True))
        else:
            for name in ("layer1", "layer2", "layer3", "layer4"):
                stage = getattr(target, name)
                setattr(target, name, CheckpointedStage(*stage))
                undo.append(lambda target=target, name=name, stage=stage: setattr(target, name, stage))
    try:
        yield model
    finally:
        for restore in reversed(undo):
            restore()


# ---------------------------------------------------------------- fit

def _check_fit_options(model, train_data, *, num_steps, lr, optimizer, weight_decay, eval_data, eval_every, patience,
                       monitor, mode, loss_fn, on_step, max_grad_norm, warmup_steps, grad_accum_steps, precision,
                       gradient_checkpointing, device, progress) -> tuple[str, torch.device]:
    """Every option of ``fit`` checked before anything changes; returns ``(mode, device)``."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_positive_int("num_steps", num_steps)
    check_number("lr", lr, minimum=0.0)  # 0 is allowed: a run that changes nothing, as a baseline
    check_number("weight_decay", weight_decay, minimum=0.0)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer (or None for AdamW), "
                        f"got {type(optimizer).__name__}")
    if max_grad_norm is not None:
        check_number("max_grad_norm", max_grad_norm, minimum=0.0, strict_minimum=True)
    check_int("warmup_steps", warmup_steps, minimum=0)
    if warmup_steps > num_steps:
        raise ValueError(f"warmup_steps={warmup_steps} is more than num_steps={num_steps}: the rate would never "
                         "reach lr; use at most num_steps (often 5-10% of it)")
    check_positive_int("grad_accum_steps", grad_accum_steps)
    check_choice("precision", precision, PRECISIONS)
    for name, fn in (("loss_fn", loss_fn), ("on_step", on_step)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be a function or None, got {type(fn).__name__}")
    for name, flag in (("progress", progress), ("gradient_checkpointing", gradient_checkpointing)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")

    if train_data is None or not hasattr(train_data, "__iter__"):
        raise TypeError(f"train_data must be a list or loader of batches, got {type(train_data).__name__}")
    if hasattr(train_data, "__len__") and len(train_data) == 0:
        raise ValueError("train_data yielded no batches: it is empty")
    if distributed.launched() and iter(train_data) is train_data:
        raise ValueError("under torchrun, train_data must be re-iterable (a list or a DataLoader), so that every "
                         "process can take its share of each pass; got a one-shot iterator")
    if eval_data is not None:
        if not hasattr(eval_data, "__iter__") or iter(eval_data) is eval_data:
            raise TypeError("eval_data must be a list or loader of batches that can be read several times "
                            f"(fit evaluates it every eval_every steps), got {type(eval_data).__name__}")
        if hasattr(eval_data, "__len__") and len(eval_data) == 0:
            raise ValueError("eval_data is empty: pass validation batches, or eval_data=None to train without them")
    if eval_every is not None:
        check_positive_int("eval_every", eval_every)
        if eval_data is None:
            raise ValueError("eval_every needs eval_data: the validation batches to evaluate every eval_every steps")
    check_choice("monitor", monitor, tuple(MONITOR_MODES))
    mode = MONITOR_MODES[monitor] if mode is None else check_choice("mode", mode, ("min", "max"))
    if patience is not None:
        check_positive_int("patience", patience)
        if eval_data is None or eval_every is None:
            raise ValueError("patience (early stopping) counts evaluations without improvement: pass eval_data and "
                             "eval_every, e.g. eval_every=max(1, num_steps // 20)")

    if device is not None and not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str such as 'cpu' or 'cuda' or a torch.device, got {type(device).__name__}")
    try:
        device = torch.device(device) if device is not None else default_device()
    except RuntimeError as err:
        raise ValueError(f"device {device!r} is not a device name: use 'cpu', 'cuda' or 'cuda:0'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but no CUDA GPU is available: use 'cpu' or leave "
                         "device=None (ftlab.config.device() picks CUDA when present)")
    if precision == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bfloat16 support: use precision='fp16-mixed' (float16 with loss scaling)")

    params = ([p for g in optimizer.param_groups for p in g["params"]] if optimizer is not None
              else [p for p in model.parameters() if p.requires_grad])
    if not params:
        raise ValueError("the model has no trainable parameters: apply a method or unfreeze some layers first")
    dtypes = {p.dtype for p in params}
    if torch.float16 in dtypes and precision != "bf16":
        raise ValueError("the model's trainable parameters are float16: training float16 weights directly goes NaN "
                         "(AdamW's eps=1e-8 is 0 in float16, so a small gradient's update divides 0 by 0) and loses "
                         "updates below 2^-11 of a weight. Keep the weights in float32 (model.float()) and pass "
                         "precision='bf16-mixed' or 'fp16-mixed' (autocast, and loss scaling for float16), or train "
                         "bfloat16 weights with precision='bf16'")
    if torch.bfloat16 in dtypes and precision != "bf16":
        raise ValueError(f"the model's trainable parameters are bfloat16 but precision={precision!r} expects "
                         "float32 weights: pass precision='bf16' to train bfloat16 weights, or call model.float()")
    if gradient_checkpointing and not checkpoint_targets(model):
        raise ValueError(f"gradient_checkpointing=True needs a transformers model or a torchvision ResNet inside "
                         f"the model; {type(model).__name__} has neither")
    return mode, device


def _diverged(what: str, step: int, loss: float, *, bad_inputs: list[str], precision: str, lr: float,
              history: dict) -> str:
    """The message of a non-finite loss or gradient: the step, the loss, the likely cause and what to try."""
    head = f"fit stopped at step {step}: the {what} is not finite (loss {loss:.4g})"
    if bad_inputs:
        cause = (f"NaN or infinite values in the batch ({', '.join(bad_inputs)}), before the model ran: clean or "
                 "drop those examples")
    elif precision in ("fp16-mixed", "bf16", "bf16-mixed"):
        cause = (f"precision={precision!r} overflowed or lost the update (float16 stops at 65504): try "
                 "precision='bf16-mixed' (float32's range) or 'fp32', or a smaller learning rate")
    elif history["loss"]:
        cause = (f"a learning rate too high (lr={lr:g}; the loss was {history['loss'][-1]:.4g} at step {step - 1}): "
                 "try a rate 10 times smaller, pick one with ftlab.lr_find, or clip with max_grad_norm=1.0")
    else:
        cause = ("the model gives a non-finite loss before any update: check that its weights are finite and "
                 "that the labels are in range")
    return f"{head}. Likely cause: {cause}. The model is as after step {step - 1}; err.history holds the steps so far."


def fit(
    model: torch.nn.Module,
    train_data: Iterable,
    *,
    num_steps: int,
    lr: float = 1e-3,
    optimizer: torch.optim.Optimizer | None = None,
    weight_decay: float = 0.0,
    eval_data: Iterable | None = None,
    eval_every: int | None = None,
    patience: int | None = None,
    monitor: str = "loss",
    mode: str | None = None,
    loss_fn: Callable | None = None,
    on_step: Callable | None = None,
    max_grad_norm: float | None = None,
    warmup_steps: int = 0,
    grad_accum_steps: int = 1,
    precision: str = "fp32",
    gradient_checkpointing: bool = False,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict:
    """Train ``model`` for ``num_steps`` optimizer steps, cycling through ``train_data``.

    * ``optimizer``: defaults to AdamW(lr, weight_decay) over the parameters that require
      gradients; pass your own for parameter groups (e.g. discriminative learning rates).
    * ``loss_fn(model, batch) -> loss``: defaults to ``default_loss`` (see module docstring).
    * ``on_step(step, model, optimizer)``: called before each step (e.g. gradual unfreezing).
    * ``warmup_steps``: linear warm-up, then cosine decay to zero (0 means a constant rate).
    * ``max_grad_norm``: clip the gradients' total L2 norm to this (> 0) before each step.

    Validation and early stopping: the ``evaluate`` result on ``eval_data`` every ``eval_every``
    steps and after the last one. ``monitor`` ("loss" or "accuracy") names the value compared,
    ``mode`` ("min" or "max") its better direction (default: min for loss, max for accuracy).
    ``history["best_step"]`` is the step of the best evaluation. With ``patience=k``, training
    stops after ``k`` evaluations in a row without improvement (``history["stopped_step"]``),
    and at the end the weights and BatchNorm statistics of the best step are copied back (they
    are kept in memory: a copy of every tensor fit can change).

    Scaling up (tools that trade compute for memory, and a larger batch than memory holds):

    * ``precision``: "fp32" (default), "bf16-mixed", "fp16-mixed" (with loss scaling) or "bf16"
      (weights cast to bfloat16, in place): see ``PRECISIONS``.
    * ``gradient_checkpointing=True``: keep fewer activations, recompute them in backward
      (``checkpointed``); the model is as before afterwards.
    * ``grad_accum_steps=k``: each optimizer step adds the gradients of ``k`` batches, each
      batch's mean loss weighted 1/k, so one step equals one step on a batch k times larger
      when every batch scores the same number of items (equal-size classification batches,
      language-model batches with as many scored tokens). Otherwise it is close, not equal: a
      batch with fewer scored tokens counts as much as one with more (weighted per batch, not
      per token), and BatchNorm normalises each batch with its own statistics.
    * Under ``torchrun --nproc_per_node N`` fit trains with DistributedDataParallel: each process
      takes its share of ``train_data`` (``ftlab.distributed``), gradients and the recorded loss
      are averaged across processes, only rank 0 shows progress. Every process evaluates the
      whole of ``eval_data`` (same weights, same result) and returns the same history.

    Returns ``{"step", "loss", "grad_norm", "lr", "eval_step", "eval", "best_step", "stopped_step"}``:
    per step the training loss, the gradients' norm before clipping and the rate; the
    ``evaluate`` results and their steps; the best and the early-stopping step (or None).

    Every option is checked before the first step. A one-shot iterator (a generator) cannot be
    cycled: it is used until it runs out, and then fit raises ``FitError``. So does a non-finite
    loss or gradient, at once, naming the step, the loss and the likely cause, with the model as
    after the last good step and the history so far in ``err.history``. float16 weights are
    refused (use a mixed precision); under "fp16-mixed" an overflowed gradient only skips the
    step, as loss scaling intends, unless it overflows even unscaled.
    """
    mode, device = _check_fit_options(
        model, train_data, num_steps=num_steps, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
        eval_data=eval_data, eval_every=eval_every, patience=patience, monitor=monitor, mode=mode, loss_fn=loss_fn,
        on_step=on_step, max_grad_norm=max_grad_norm, warmup_steps=warmup_steps, grad_accum_steps=grad_accum_steps,
        precision=precision, gradient_checkpointing=gradient_checkpointing, device=device, progress=progress)
    several = distributed.launched()
    if several:
        device = distributed.setup(device)
    model.to(device)
    input_dtype = torch.bfloat16 if precision == "bf16" else None
    if precision == "bf16":
        model.to(torch.bfloat16)
    loss_fn = loss_fn or default_loss
    if optimizer is None:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                      weight_decay=weight_decay)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16-mixed" else None
    train_model = distributed.wrap(model, device) if several else model
    batches = cycle(distributed.Shard(train_data) if several else train_data)
    stats = running_statistics(model)
    tracked = params + stats  # every tensor fit changes: what the best-step copy and a rollback need

    def lr_factor(step: int) -> float:
        if warmup_steps <= 0:
            return 1.0
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress_ = (step - warmup_steps) / max(1, num_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress_))

    history = {"step": [], "loss": [], "grad_norm": [], "lr": [], "eval_step": [], "eval": [],
               "best_step": None, "stopped_step": None}
    best_value, best_state, evals_without_improvement, batches_drawn = None, None, 0, 0

    def stop(message: str, step: int, stats_before: list[torch.Tensor]) -> FitError:
        """Put the running statistics back as after the last good step, drop the partial gradients."""
        with torch.no_grad():
            for b, value in zip(stats, stats_before):
                b.copy_(value)
        optimizer.zero_grad(set_to_none=True)
        return FitError(message, step=step, history=history)

    model.train()
    bar = progress_bar(range(num_steps), disable=not progress or not distributed.is_main(), desc="fit")
    with checkpointed(model) if gradient_checkpointing else contextlib.nullcontext():
        for step in bar:
            if on_step is not None:
                on_step(step, model, optimizer)
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * lr_factor(step)
            stats_before = [b.clone() for b in stats]
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro in range(grad_accum_steps):
                try:
                    batch = to_device(next(batches), device, input_dtype)
                except StopIteration:
                    raise stop(f"train_data ran out at step {step + 1} of {num_steps}: it is a one-shot iterator "
                               f"(a generator?) that gave {batches_drawn} batches, and fit cannot start it again. "
                               "Pass a list or a DataLoader (fit cycles through them), or an iterator of at least "
                               f"num_steps x grad_accum_steps = {num_steps * grad_accum_steps} batches. The model "
                               f"is as after step {step}; err.history holds the steps so far.",
                               step + 1, stats_before) from None
                batches_drawn += 1
                bad_inputs = nonfinite_inputs(batch)
                # DDP averages gradients inside backward; the last micro-batch is enough to do that once.
                sync = train_model.no_sync() if several and micro < grad_accum_steps - 1 else contextlib.nullcontext()
                with sync:
                    loss = None
                    if not bad_inputs:
                        with autocast(precision, device):
                            loss = loss_fn(train_model, batch)
                    check = torch.tensor([math.nan if loss is None else loss.item(), float(len(bad_inputs))],
                                         dtype=torch.float64)
                    if several:  # every process must see the same verdict, or the others would wait forever
                        check = distributed.average(check.to(device)).cpu()
                    loss_value, any_bad = check.tolist()
                    if any_bad or not math.isfinite(loss_value):
                        raise stop(_diverged("loss", step + 1, loss_value, bad_inputs=bad_inputs or
                                             (["the batch of another process"] if any_bad else []),
                                             precision=precision, lr=optimizer.param_groups[0]["lr"],
                                             history=history), step + 1, stats_before)
                    loss = loss / grad_accum_steps
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                step_loss += loss_value / grad_accum_steps
            if scaler is not None:
                scaler.unscale_(optimizer)
            grads = [p.grad for p in params if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
            if not torch.isfinite(grad_norm):
                if scaler is None or scaler.get_scale() <= 1.0:  # loss scaling cannot help below a scale of 1
                    raise stop(_diverged("gradient", step + 1, step_loss, bad_inputs=[], precision=precision,
                                         lr=optimizer.param_groups[0]["lr"], history=history), step + 1, stats_before)
            elif max_grad_norm is not None:
                torch.nn.utils.clip_grads_with_norm_(params, max_grad_norm, grad_norm)
            if scaler is not None:
                scaler.step(optimizer)  # skips the step when a gradient overflowed, then lowers the scale
                scaler.update()
            else:
                optimizer.step()
            history["step"].append(step + 1)
            history["loss"].append(step_loss)
            history["grad_norm"].append(grad_norm.item())
            history["lr"].append(optimizer.param_groups[0]["lr"])
            bar.set_postfix(loss=f"{step_loss:.4f}")

            if eval_data is None or not ((eval_every and (step + 1) % eval_every == 0) or step + 1 == num_steps):
                continue
            result = evaluate(model, eval_data, device=device, dtype=input_dtype)
            model.train()
            history["eval_step"].append(step + 1)
            history["eval"].append(result)
            value = result[monitor]
            if several:  # one decision for all processes
                value = distributed.average(torch.tensor(value, device=device)).item()
            if best_value is None or (value < best_value if mode == "min" else value > best_value):
                best_value, history["best_step"], evals_without_improvement = value, step + 1, 0
                if patience is not None:
                    best_state = [t.detach().clone() for t in tracked]
            else:
                evals_without_improvement += 1
                if patience is not None and evals_without_improvement >= patience:
                    history["stopped_step"] = step + 1
                    bar.update()  # this step is done: the final line says "55/150", not "54/150"
                    break
    if best_state is not None and history["best_step"] != history["step"][-1]:
        with torch.no_grad():
            for t, value in zip(tracked, best_state):
                t.copy_(value)
    return history


# ---------------------------------------------------------------- the learning-rate range test

def lr_find(model: torch.nn.Module, train_data: Iterable, *, start_lr: float = 1e-7, end_lr: float = 10.0,
            num_steps: int = 50, optimizer: torch.optim.Optimizer | None = None, weight_decay: float = 0.0,
            loss_fn: Callable | None = None, beta: float = 0.9, diverge: float = 4.0, progress: bool = True) -> dict:
    """The learning-rate range test (Smith 2017, "Cyclical Learning Rates", sec. 3.3; fast.ai's ``lr_find``).

    Train for up to ``num_steps`` steps, one batch each, while the rate grows exponentially
    from ``start_lr`` to ``end_lr``:  lr_i = start_lr * (end_lr / start_lr) ** (i / (num_steps - 1)).
    The loss first stays flat (the rate is too small to matter), then falls, then explodes.

    * Smoothing: an exponential moving average with Adam's bias correction,
      a_i = beta a_{i-1} + (1 - beta) loss_i,  smoothed_i = a_i / (1 - beta ** (i + 1));
      ``beta=0.9`` averages over about 10 steps (fast.ai uses 0.98 over 100 steps).
    * Stop early when the smoothed loss exceeds ``diverge`` times its minimum, or is not finite.
    * Suggestion: the rate at the minimum of the smoothed loss, divided by 10. At the minimum the
      loss is already about to blow up; an order of magnitude below it still learns fast and is
      safe. On a few dozen noisy steps this is steadier than the steepest slope of the curve,
      which moves by a decade when one batch is unlucky.

    Uses ``optimizer`` if given (each group keeps its ratio to the largest rate) or a new AdamW
    over the trainable parameters; one process, the model's device, its own precision. At the
    end everything is put back bit for bit: the weights and buffers, the gradients, the train /
    eval mode of every module, the optimizer's state and rates, the global random number
    generators (Python, NumPy, torch on the CPU and on CUDA) and ``train_data``'s generator
    (a shuffling DataLoader's), so that a ``fit`` afterwards runs as if lr_find had not.

    Returns ``{"lrs", "losses", "smoothed", "lr_min", "suggestion", "stopped_early"}``.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    start_lr = check_number("start_lr", start_lr, minimum=0.0, strict_minimum=True)
    end_lr = check_number("end_lr", end_lr, minimum=0.0, strict_minimum=True)
    if end_lr <= start_lr:
        raise ValueError(f"end_lr must be larger than start_lr, got start_lr={start_lr:g}, end_lr={end_lr:g}")
    check_positive_int("num_steps", num_steps)
    if num_steps < 5:
        raise ValueError(f"num_steps={num_steps} is too few points for a curve: use a few dozen (default 50)")
    check_number("weight_decay", weight_decay, minimum=0.0)
    check_number("beta", beta, minimum=0.0)
    if beta >= 1.0:
        raise ValueError(f"beta must be in [0, 1) (0 means no smoothing), got {beta:g}")
    check_number("diverge", diverge, minimum=1.0, strict_minimum=True)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer (or None for AdamW), "
                        f"got {type(optimizer).__name__}")
    if train_data is None or not hasattr(train_data, "__iter__"):
        raise TypeError(f"train_data must be a list or loader of batches, got {type(train_data).__name__}")
    if hasattr(train_data, "__len__") and len(train_data) == 0:
        raise ValueError("train_data yielded no batches: it is empty")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optimizer is None and not trainable:
        raise ValueError("the model has no trainable parameters: apply a method or unfreeze some layers first")
    loss_fn = loss_fn or default_loss
    device = next(model.parameters()).device

    opt = optimizer or torch.optim.AdamW(trainable, lr=start_lr, weight_decay=weight_decay)
    top = max(g["lr"] for g in opt.param_groups)
    ratios = [g["lr"] / top if top > 0 else 1.0 for g in opt.param_groups]
    lrs = [start_lr * (end_lr / start_lr) ** (i / (num_steps - 1)) for i in range(num_steps)]

    # Everything the test changes, saved to be put back.
    params = list(model.parameters())
    saved_weights = [t.detach().clone() for t in params + running_statistics(model)]
    saved_grads = [None if p.grad is None else p.grad.clone() for p in params]
    saved_modes = [m.training for m in model.modules()]
    saved_optimizer = _clone_state(opt.state_dict()) if optimizer is not None else None
    data_generator = getattr(train_data, "generator", None)
    saved_rng = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
                 torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
                 data_generator.get_state() if isinstance(data_generator, torch.Generator) else None)
    losses, smoothed, average = [], [], 0.0
    try:
        model.train()
        batches = cycle(train_data)
        bar = progress_bar(lrs, disable=not progress, desc="lr_find")
        for i, lr in enumerate(bar):
            for group, ratio in zip(opt.param_groups, ratios):
                group["lr"] = lr * ratio
            try:
                batch = to_device(next(batches), device)
            except StopIteration:
                break  # a one-shot iterator shorter than num_steps: the curve ends here
            loss = loss_fn(model, batch)
            value = loss.item()
            if not math.isfinite(value):
                break
            average = beta * average + (1 - beta) * value
            losses.append(value)
            smoothed.append(average / (1 - beta ** (i + 1)))
            if smoothed[-1] > diverge * min(smoothed):
                bar.update()  # its loss is on the curve: count it
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        with torch.no_grad():
            for t, value in zip(params + running_statistics(model), saved_weights):
                t.copy_(value)
        for p, grad in zip(params, saved_grads):
            p.grad = grad
        for m, training in zip(model.modules(), saved_modes):
            m.training = training
        if saved_optimizer is not None:
            optimizer.load_state_dict(saved_optimizer)
        python_rng, numpy_rng, torch_rng, cuda_rng, data_rng = saved_rng
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)
        torch.set_rng_state(torch_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        if data_rng is not None:
            data_generator.set_state(data_rng)
    if not losses:
        raise ValueError(f"the loss was not finite at the first rate ({start_lr:g}): check the model and the data")
    i_min = min(range(len(smoothed)), key=smoothed.__getitem__)
    return {"lrs": lrs[:len(losses)], "losses": losses, "smoothed": smoothed, "lr_min": lrs[i_min],
            "suggestion": lrs[i_min] / 10, "stopped_early": len(losses) < num_steps}


def _clone_state(state):
    """A deep copy of an optimizer's ``state_dict`` whose tensors share no memory with the optimizer's."""
    if torch.is_tensor(state):
        return state.clone()
    if isinstance(state, dict):
        return {k: _clone_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_clone_state(v) for v in state]
    return state
