"""Training and evaluation: plain loops that return dicts.

One convention for a batch, used everywhere in ftlab:

* a ``dict`` (Hugging Face style): the model is called as ``model(**batch)`` and returns
  an output with ``.loss`` (when ``batch`` has ``labels``) and ``.logits``;
* a ``(x, y)`` pair (torchvision style): ``logits = model(x)`` and the loss is
  cross-entropy against the class indices ``y``.

Anything else (DPO, PPO, distillation) passes its own ``loss_fn(model, batch) -> loss``,
so there is still one training loop.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ftlab.config import device as default_device

IGNORE_INDEX = -100  # the label cross-entropy skips: prompt and padding positions, unscored tokens


def to_device(batch, device: torch.device | str):
    """Move every tensor in a batch (dict, tuple or list, nested) to ``device``."""
    if torch.is_tensor(batch):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
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
             max_batches: int | None = None) -> dict:
    """Mean loss and accuracy of ``model`` over ``data`` (a list or loader of batches).

    Returns ``{"loss": float, "accuracy": float in [0, 1], "n": examples}``. Accuracy is the
    fraction of examples whose arg-max logit equals the label (positions labelled -100, as in
    language modelling, are ignored).
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, correct, seen, batches = 0.0, 0, 0, 0
    for batch in itertools.islice(data, max_batches):
        batch = to_device(batch, device)
        loss, logits = forward(model, batch)
        y = _labels(batch)
        pred = logits.argmax(-1)
        if pred.shape != y.shape:  # causal LM: logits at t predict the label at t+1
            pred, y = pred[..., :-1], y[..., 1:]
        mask = y != -100
        correct += (pred[mask] == y[mask]).sum().item()
        n = int(mask.sum().item())
        seen += n
        total_loss += loss.item() * n
        batches += 1
    model.train(was_training)
    if seen == 0:
        raise ValueError("evaluate got no labelled examples: is the data empty?")
    return {"loss": total_loss / seen, "accuracy": correct / seen, "n": seen}


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
    loss_fn: Callable | None = None,
    on_step: Callable | None = None,
    max_grad_norm: float | None = None,
    warmup_steps: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict:
    """Train ``model`` for ``num_steps`` optimizer steps, cycling through ``train_data``.

    * ``optimizer``: defaults to AdamW(lr, weight_decay) over the parameters that require
      gradients; pass your own for parameter groups (e.g. discriminative learning rates).
    * ``loss_fn(model, batch) -> loss``: defaults to ``default_loss`` (see module docstring).
    * ``on_step(step, model, optimizer)``: called before each step (e.g. gradual unfreezing).
    * ``warmup_steps``: linear warm-up, then cosine decay to zero (0 means a constant rate).

    Returns ``{"step": [...], "loss": [...], "eval_step": [...], "eval": [dict, ...]}``:
    the training loss of every step and the ``evaluate`` result every ``eval_every`` steps
    (and after the last step when ``eval_data`` is given).
    """
    if num_steps <= 0:
        raise ValueError(f"num_steps must be a positive number of optimizer steps, got {num_steps}")
    device = device or default_device()
    model.to(device)
    loss_fn = loss_fn or default_loss
    if optimizer is None:
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("the model has no trainable parameters: apply a method or unfreeze some layers first")
        optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]

    def lr_factor(step: int) -> float:
        if warmup_steps <= 0:
            return 1.0
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress_ = (step - warmup_steps) / max(1, num_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress_))

    history = {"step": [], "loss": [], "eval_step": [], "eval": []}
    batches = _cycle(train_data)
    model.train()
    bar = tqdm(range(num_steps), disable=not progress, desc="fit", leave=False)
    for step in bar:
        if on_step is not None:
            on_step(step, model, optimizer)
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * lr_factor(step)
        batch = to_device(next(batches), device)
        loss = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
        optimizer.step()
        history["step"].append(step + 1)
        history["loss"].append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}")
        last = step + 1 == num_steps
        if eval_data is not None and ((eval_every and (step + 1) % eval_every == 0) or last):
            if not history["eval_step"] or history["eval_step"][-1] != step + 1:
                history["eval_step"].append(step + 1)
                history["eval"].append(evaluate(model, eval_data, device=device))
                model.train()
    return history


def _cycle(data: Iterable):
    """Yield batches forever, restarting ``data`` (so a shuffling DataLoader reshuffles)."""
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("train_data yielded no batches")
