"""Continual fine-tuning: learn tasks one after another, measure what is forgotten, and fight it.

A sequence of tasks (digits 0-4 then 5-9; sentiment then topic) is trained in order. After
training task i the model is evaluated on every task j, filling the accuracy matrix

    R[i, j] = test accuracy on task j after training tasks 0..i,   shape (T, T).

Metrics (all on R, accuracies in [0, 1]):

* average accuracy (Lopez-Paz & Ranzato 2017, "ACC"): ``mean_j R[T-1, j]``;
* backward transfer (Lopez-Paz & Ranzato 2017, "BWT"): ``1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j])``,
  negative when learning later tasks hurt earlier ones;
* forgetting of task j (Chaudhry et al. 2018, "Riemannian Walk", f_j): ``max_{l<T-1} R[l, j] - R[T-1, j]``
  for j < T-1, the best accuracy the model ever had on j minus its final accuracy; the
  average forgetting is their mean. It differs from -BWT when the best accuracy on j came
  after task j (positive transfer) rather than right after it.

Two settings (van de Ven & Tolias 2019, "Three scenarios for continual learning"). The model
has one output per class of all tasks (labels are global: digits 5-9 keep labels 5-9; topic
labels follow sentiment's, 2-5):

* task-incremental (``setting="task"``): the task id is known, so only the logits of the
  example's own task count (the others are masked to -inf), in training and in testing.
  Masking one shared linear head is the same as one separate head per task;
* class-incremental (``setting="class"``): no task id; the logits of every class seen so far
  count, and the model must tell old classes from new ones itself. Much harder.

Strategies (each a small class with hooks; ``Naive`` is the base of the others):

* ``Naive``: sequential fine-tuning, cross-entropy on the current task only;
* ``EWC`` (Kirkpatrick et al. 2017): penalise moving the weights that mattered for earlier tasks,
  ``lambda * sum_i F_i (theta_i - theta*_i)^2`` with the diagonal empirical Fisher F (see
  ``diagonal_fisher``). Kirkpatrick et al. write ``lambda/2``: our lambda is their lambda/2.
  Separate (one penalty per earlier task) or online (Schwarz et al. 2018: ``F <- gamma F + F_new``,
  one anchor at the latest weights);
* ``Replay``: a bounded, class-balanced ``ReplayBuffer`` of earlier examples; every step also
  trains on a batch drawn from it (experience replay, Chaudhry et al. 2019);
* ``LwF`` (Li & Hoiem 2017): distil the previous model's outputs on the current inputs,
  ``T^2 KL(softmax(z_old / T) || softmax(z / T))`` over the earlier tasks' classes;
* ``AdapterPerTask``: a frozen base with one LoRA adapter and head per task (``ftlab.multitask``).
  Earlier tasks' parameters are never trained again, so their outputs cannot change. It needs
  the task id: task-incremental only.

Reference results (too slow for a classroom run): ``sweep_continual`` trains every strategy, EWC at several
lambdas and replay with several buffer sizes, in both settings over seeds, into
``data/results/continual_<sequence>.csv`` with its provenance (``python -m ftlab.continual --help``);
``load_sweep`` reads it, ``sweep_matrices`` averages its accuracy matrices, ``sweep_point`` runs one seed live.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import random
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ftlab.compare import check_seeds
from ftlab.config import mode, seed_everything
from ftlab.multitask import MultiHeadModel, Tagged, add_task_adapters, multi_head, select_task
from ftlab.train import default_loss, evaluate, fit, to_device
from ftlab.validate import check_number, check_positive_int

SETTINGS = ("task", "class")


@dataclasses.dataclass
class Task:
    """One task of a sequence: ``train`` (a DataLoader), ``test`` (batches), and the global labels it uses."""

    name: str
    train: DataLoader
    test: Iterable
    classes: list[int]


class Scenario:
    """A sequence of tasks in a setting: which logits count for which example, and how R is measured.

    ``setting="task"``: an example's own task's classes; ``"class"``: every class of tasks 0..i
    while training (or after training) task i.
    """

    def __init__(self, tasks: list[Task], setting: str = "task"):
        if setting not in SETTINGS:
            raise ValueError(f"setting must be 'task' (task-incremental, task id known) or 'class' "
                             f"(class-incremental), got {setting!r}")
        if not tasks:
            raise ValueError("a continual scenario needs at least one task")
        names = [task.name for task in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        seen: set[int] = set()
        for task in tasks:
            if not task.classes:
                raise ValueError(f"task {task.name!r} has no classes")
            if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in task.classes):
                raise ValueError(f"task {task.name!r}: classes must be label indices >= 0, got {task.classes}")
            if seen & set(task.classes):
                raise ValueError(f"task {task.name!r} reuses classes {sorted(seen & set(task.classes))} of an earlier "
                                 f"task; give each task its own labels (e.g. offset the second task's labels)")
            seen |= set(task.classes)
            if len(task.train) == 0:
                raise ValueError(f"task {task.name!r} is empty: its training data has no batches")
        self.tasks, self.setting = tasks, setting
        self.num_classes = max(seen) + 1
        self.groups = torch.zeros(len(tasks), self.num_classes, dtype=torch.bool)  # (T, C): task j's classes
        for j, task in enumerate(tasks):
            self.groups[j, task.classes] = True
        self.task_of_class = torch.full((self.num_classes,), -1, dtype=torch.long)  # (C,)
        for j, task in enumerate(tasks):
            self.task_of_class[task.classes] = j

    def mask(self, labels: torch.Tensor, i: int) -> torch.Tensor:
        """The logits that count, ``(B, C)`` (task-incremental) or ``(1, C)`` (class-incremental), at task i."""
        groups = self.groups.to(labels.device)
        if self.setting == "task":
            return groups[self.task_of_class.to(labels.device)[labels]]  # (B, C): each example's own task
        return groups[: i + 1].any(0, keepdim=True)  # (1, C): every class seen so far

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor, i: int) -> torch.Tensor:
        """Mean cross-entropy over the logits that count (the others set to -inf)."""
        return F.cross_entropy(logits.masked_fill(~self.mask(labels, i), float("-inf")), labels)

    def accuracy(self, model: nn.Module, j: int, i: int) -> float:
        """Test accuracy on task j after training task i: R[i, j]."""
        task = self.tasks[j]
        if isinstance(model, MultiHeadModel):
            return evaluate(model, Tagged(task.test, task.name, task.classes))["accuracy"]
        if self.setting == "task":
            allowed = self.groups[j : j + 1]
        else:
            allowed = self.groups[: i + 1].any(0, keepdim=True)
        return evaluate(_Masked(model, allowed), task.test)["accuracy"]


class _Masked(nn.Module):
    """``model`` whose logits outside ``allowed`` (1, C) are -inf, so ``evaluate`` only picks allowed classes."""

    def __init__(self, model: nn.Module, allowed: torch.Tensor):
        super().__init__()
        self.model, self.allowed = model, allowed
        self.train(model.training)  # so that evaluate() puts the model back in the mode it found it in

    def forward(self, *args, labels=None, **inputs) -> torch.Tensor:
        out = self.model(*args, **inputs)
        logits = out.logits if hasattr(out, "logits") else out
        return logits.masked_fill(~self.allowed.to(logits.device), float("-inf"))


def logits_and_labels(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (B, C), labels (B,))`` of a batch under ftlab's batch convention, without the model's own loss."""
    if isinstance(batch, dict):
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
        return (out.logits if hasattr(out, "logits") else out), batch["labels"]
    x, y = batch
    return model(x), y


# ---------------------------------------------------------------- metrics of the accuracy matrix

def _check_matrix(R) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] < 2:
        raise ValueError(f"R must be a square (T, T) accuracy matrix with T >= 2 tasks, got shape {R.shape}")
    return R


def average_accuracy(R) -> float:
    """ACC = mean_j R[T-1, j], the accuracy over all tasks at the end (Lopez-Paz & Ranzato 2017)."""
    return float(_check_matrix(R)[-1].mean())


def backward_transfer(R) -> float:
    """BWT = 1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j]) (Lopez-Paz & Ranzato 2017); negative = forgetting."""
    R = _check_matrix(R)
    T = len(R)
    return float(np.mean([R[-1, j] - R[j, j] for j in range(T - 1)]))


def forgetting(R) -> np.ndarray:
    """f_j = max_{l<T-1} R[l, j] - R[T-1, j] for each earlier task j < T-1 (Chaudhry et al. 2018), shape (T-1,)."""
    R = _check_matrix(R)
    return R[:-1, :-1].max(axis=0) - R[-1, :-1]


# ---------------------------------------------------------------- strategies

class Naive:
    """Sequential fine-tuning: cross-entropy on the current task's batch, nothing else."""

    name = "naive"

    def before_task(self, model: nn.Module, scenario: Scenario, i: int) -> None:
        pass

    def train_data(self, scenario: Scenario, i: int) -> Iterable:
        return scenario.tasks[i].train

    def loss(self, model: nn.Module, batch, scenario: Scenario, i: int) -> torch.Tensor:
        logits, labels = logits_and_labels(model, batch)
        return scenario.cross_entropy(logits, labels, i)

    def after_task(self, model: nn.Module, scenario: Scenario, i: int) -> None:
        pass


def _examples(batch) -> list:
    """Split a batch (dict or (x, y)) into batches of one example each, keeping the batch dimension."""
    if isinstance(batch, dict):
        size = len(batch["labels"])
        return [{k: v[n : n + 1] if torch.is_tensor(v) else v for k, v in batch.items()} for n in range(size)]
    x, y = batch
    return [(x[n : n + 1], y[n : n + 1]) for n in range(len(y))]


def diagonal_fisher(model: nn.Module, data: Iterable, loss_fn=None, max_examples: int | None = None) -> dict:
    """The diagonal empirical Fisher of the trainable parameters: ``{name: F}``, each F shaped like its parameter.

        F_i = 1/N sum_n (d loss_n / d theta_i)^2,   loss_n = -log p(y_n | x_n; theta)

    with the observed label y_n ("empirical"; the true Fisher samples y from the model), one
    example at a time (squaring a batch's mean gradient would not be this). The model runs in
    eval mode (no dropout, BatchNorm with its running statistics), so an example's gradient does
    not depend on the rest of its batch. ``loss_fn(model, batch)`` defaults to cross-entropy;
    at most ``max_examples`` examples are used. The model's ``.grad`` fields are not touched.
    """
    loss_fn = loss_fn or default_loss
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameters, so there is no Fisher to compute")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be positive (or None for all), got {max_examples}")
    device = next(iter(params.values())).device
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    count = 0
    was_training = model.training
    model.eval()
    try:
        for batch in data:
            for example in _examples(to_device(batch, device)):
                if max_examples is not None and count >= max_examples:
                    break
                grads = torch.autograd.grad(loss_fn(model, example), list(params.values()), allow_unused=True)
                for name, g in zip(params, grads):
                    if g is not None:
                        fisher[name] += g.detach() ** 2
                count += 1
            if max_examples is not None and count >= max_examples:
                break
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("diagonal_fisher got no examples: is the data empty?")
    return {name: f / count for name, f in fisher.items()}


class EWC(Naive):
    """Elastic weight consolidation: cross-entropy + ``ewc_lambda * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2``.

    After each task k, ``consolidate`` stores its Fisher F_k and the weights theta*_k. Separate
    (``online=False``): one term per earlier task. Online (Schwarz et al. 2018): a single term,
    ``F <- gamma F + F_new`` and theta* the latest weights. Note the convention: no 1/2, so this
    ``ewc_lambda`` is Kirkpatrick et al.'s lambda / 2. The Fisher uses ``max_examples`` examples.
    """

    name = "ewc"

    def __init__(self, ewc_lambda: float = 100.0, *, online: bool = False, gamma: float = 1.0,
                 max_examples: int | None = 200):
        if isinstance(ewc_lambda, bool) or not isinstance(ewc_lambda, (int, float)) or not ewc_lambda >= 0:
            raise ValueError(f"ewc_lambda must be a number >= 0 (0 turns the penalty off), got {ewc_lambda!r}")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma (online EWC's decay of old Fisher values) must be in (0, 1], got {gamma!r}")
        self.ewc_lambda, self.online, self.gamma, self.max_examples = float(ewc_lambda), online, gamma, max_examples
        self.anchors: list[tuple[dict, dict]] = []  # [(Fisher {name: F}, weights {name: theta*})]

    def consolidate(self, model: nn.Module, data: Iterable, loss_fn=None) -> None:
        """Compute the Fisher on ``data`` at the current weights and add (or, online, fold in) the anchor."""
        fisher = diagonal_fisher(model, data, loss_fn, self.max_examples)
        weights = {name: p.detach().clone() for name, p in model.named_parameters() if name in fisher}
        if self.online and self.anchors:
            old, _ = self.anchors[0]
            fisher = {name: self.gamma * old[name] + f if name in old else f for name, f in fisher.items()}
            self.anchors = []
        self.anchors.append((fisher, weights))

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """``ewc_lambda * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2``, a scalar (0 before the first anchor)."""
        params = dict(model.named_parameters())
        total = torch.zeros((), device=next(model.parameters()).device)
        for fisher, weights in self.anchors:
            for name, f in fisher.items():
                total = total + (f * (params[name] - weights[name]) ** 2).sum()
        return self.ewc_lambda * total

    def loss(self, model, batch, scenario, i):
        return super().loss(model, batch, scenario, i) + self.penalty(model)

    def after_task(self, model, scenario, i):
        def task_loss(m, b):
            logits, labels = logits_and_labels(m, b)
            return scenario.cross_entropy(logits, labels, i)

        self.consolidate(model, scenario.tasks[i].train, task_loss)


class ReplayBuffer:
    """A memory of at most ``size`` examples, kept class-balanced with GDumb's greedy rule (Prabhu et al. 2020).

    ``add(item, label)``: while there is room, every example is kept; when full, an example is
    kept only if its class has fewer examples than the largest class, and then a random
    example of the largest class makes room. So the buffer never exceeds ``size``, and once
    every class has been offered enough examples, class counts differ by at most one.
    """

    def __init__(self, size: int, seed: int = 0):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"a replay buffer needs a size of at least 1 example, got {size!r}")
        self.size = size
        self.by_class: dict[int, list] = {}
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return sum(len(items) for items in self.by_class.values())

    def counts(self) -> dict[int, int]:
        """``{label: examples stored}``."""
        return {label: len(items) for label, items in sorted(self.by_class.items())}

    def add(self, item, label: int) -> bool:
        """Offer one example; returns whether it was stored."""
        label = int(label)
        if len(self) >= self.size:
            largest = max(self.by_class, key=lambda c: (len(self.by_class[c]), -c))
            if len(self.by_class.get(label, [])) >= len(self.by_class[largest]):
                return False
            victims = self.by_class[largest]
            victims.pop(self.rng.randrange(len(victims)))
        self.by_class.setdefault(label, []).append(item)
        return True

    def sample(self, k: int) -> list:
        """``min(k, len(self))`` stored examples, drawn at random without replacement."""
        items = [item for label in sorted(self.by_class) for item in self.by_class[label]]
        return self.rng.sample(items, min(k, len(items)))


class Replay(Naive):
    """Experience replay: each step trains on the current batch plus a batch drawn from a ``ReplayBuffer``.

    The loss is the mean cross-entropy over both batches' examples together, as if they were one
    batch. After each task its training examples are offered to the buffer (in a random order).
    The replayed examples are batched with the current task's ``collate_fn``.
    """

    name = "replay"

    def __init__(self, buffer_size: int = 200, *, replay_batch_size: int | None = None, seed: int = 0):
        if replay_batch_size is not None and replay_batch_size < 1:
            raise ValueError(f"replay_batch_size must be positive (or None: the current batch's size), "
                             f"got {replay_batch_size}")
        self.buffer = ReplayBuffer(buffer_size, seed)
        self.replay_batch_size, self.seed = replay_batch_size, seed

    def loss(self, model, batch, scenario, i):
        logits, labels = logits_and_labels(model, batch)
        if len(self.buffer) == 0:
            return scenario.cross_entropy(logits, labels, i)
        items = self.buffer.sample(self.replay_batch_size or len(labels))
        replayed = to_device(scenario.tasks[i].train.collate_fn(items), labels.device)
        old_logits, old_labels = logits_and_labels(model, replayed)
        n, m = len(labels), len(old_labels)
        current, replay = scenario.cross_entropy(logits, labels, i), scenario.cross_entropy(old_logits, old_labels, i)
        return (n * current + m * replay) / (n + m)

    def after_task(self, model, scenario, i):
        dataset = scenario.tasks[i].train.dataset
        for index in random.Random(self.seed + i).sample(range(len(dataset)), len(dataset)):
            item = dataset[index]
            self.buffer.add(item, int(item[1]))


def distillation_loss(logits: torch.Tensor, old_logits: torch.Tensor, T: float = 2.0) -> torch.Tensor:
    """``T^2 * mean_b KL(p_old || p)``, p = softmax(logits / T), p_old = softmax(old_logits / T); both (B, K).

    KL(p_old || p) = sum_k p_old,k (log p_old,k - log p_k). Li & Hoiem's cross-entropy
    ``-sum p_old log p`` differs from it by the entropy of p_old, a constant: same gradients.
    The factor T^2 keeps the gradients' size independent of T (Hinton et al. 2015).
    """
    if not T > 0:
        raise ValueError(f"the distillation temperature T must be positive, got {T!r}")
    log_p = F.log_softmax(logits / T, dim=-1)
    log_p_old = F.log_softmax(old_logits / T, dim=-1)
    return T**2 * (log_p_old.exp() * (log_p_old - log_p)).sum(-1).mean()


class LwF(Naive):
    """Learning without forgetting: cross-entropy + ``alpha * distillation_loss`` towards the model before this task.

    The old model is a frozen copy taken before each task (from the second on); it is run on
    the current batch. Distilled logits: task-incremental, each earlier task's classes separately
    (one softmax per old head, as in Li & Hoiem 2017); class-incremental, all earlier classes in
    one softmax.

    The old model runs in eval mode (no dropout), except that each of its BatchNorm layers
    normalises the way the same layer of the training model does: with the batch's statistics
    when that layer trains (its running statistics are not updated: momentum 0), with the
    running ones otherwise. Why: a teacher normalising with running statistics and a student
    with batch statistics disagree before any step, so the distillation term would pull the
    model away from the old one instead of holding it there (on the digits, task-incrementally,
    it made LwF forget more than naive fine-tuning).
    """

    name = "lwf"

    def __init__(self, alpha: float = 1.0, T: float = 2.0):
        if not alpha >= 0:
            raise ValueError(f"alpha (weight of the distillation loss) must be >= 0, got {alpha!r}")
        if not T > 0:
            raise ValueError(f"the distillation temperature T must be positive, got {T!r}")
        self.alpha, self.T = alpha, T
        self.old_model: nn.Module | None = None
        self.norm_pairs: list[tuple[nn.Module, nn.Module]] = []

    def before_task(self, model, scenario, i):
        if i == 0:
            return
        self.old_model = copy.deepcopy(model).eval()
        self.old_model.requires_grad_(False)
        self.norm_pairs = [(old, new) for old, new in zip(self.old_model.modules(), model.modules())
                           if isinstance(new, nn.modules.batchnorm._BatchNorm)]
        for old, _ in self.norm_pairs:
            old.momentum = 0.0  # batch statistics in train mode, running statistics never updated

    def loss(self, model, batch, scenario, i):
        logits, labels = logits_and_labels(model, batch)
        loss = scenario.cross_entropy(logits, labels, i)
        if self.old_model is None:
            return loss
        for old, new in self.norm_pairs:
            old.train(new.training)
        with torch.no_grad():
            old_logits, _ = logits_and_labels(self.old_model, batch)
        groups = scenario.groups[:i] if scenario.setting == "task" else scenario.groups[:i].any(0, keepdim=True)
        for group in groups:
            classes = group.nonzero().squeeze(1).to(logits.device)
            loss = loss + self.alpha * distillation_loss(logits[:, classes], old_logits[:, classes], self.T)
        return loss


class AdapterPerTask(Naive):
    """One adapter and head per task on a frozen base (``ftlab.multitask``); task-incremental only.

    The model must be a ``MultiHeadModel`` with ``add_task_adapters`` (``adapter_model``). Before
    task i only its adapter and head are trainable; its batches are tagged with its name and
    its labels mapped to its head's 0..K-1.
    """

    name = "adapters"

    def before_task(self, model, scenario, i):
        if not isinstance(model, MultiHeadModel) or not model.adapter_per_task:
            raise TypeError("AdapterPerTask needs a MultiHeadModel with one adapter per task; build it with "
                            "ftlab.continual.adapter_model(model, tasks)")
        if scenario.setting != "task":
            raise ValueError("one adapter per task needs the task id at test time: use setting='task'")
        select_task(model, scenario.tasks[i].name)

    def train_data(self, scenario, i):
        task = scenario.tasks[i]
        return Tagged(task.train, task.name, task.classes)

    def loss(self, model, batch, scenario, i):
        return default_loss(model, batch)


def adapter_model(model: nn.Module, tasks: list[Task], method: str = "lora", seed: int = 0,
                  **options) -> MultiHeadModel:
    """``model`` as a frozen base with one ``method`` adapter and one head per task, named after the tasks."""
    return add_task_adapters(multi_head(model, {task.name: len(task.classes) for task in tasks}, seed=seed),
                             method, **options)


# ---------------------------------------------------------------- running a sequence

def run_sequence(model: nn.Module, scenario: Scenario, strategy: Naive | None = None, *, num_steps: int,
                 lr: float = 1e-3, device: str | torch.device | None = None, progress: bool = False,
                 **fit_options) -> dict:
    """Train ``model`` on the scenario's tasks in order with ``strategy``; evaluate every task after each.

    Each task gets ``num_steps`` steps of ``ftlab.train.fit`` (AdamW, ``lr``, on ``device``:
    by default the GPU when there is one) with the strategy's loss. Returns ``{"R": (T, T) array,
    "acc", "bwt", "forgetting": (T-1,) array, "histories": [fit history per task]}`` (metrics as
    defined in the module docstring; with one task only ``R`` and ``histories``).
    """
    strategy = strategy or Naive()
    T = len(scenario.tasks)
    R = np.zeros((T, T))
    histories = []
    for i in range(T):
        strategy.before_task(model, scenario, i)
        histories.append(fit(model, strategy.train_data(scenario, i), num_steps=num_steps, lr=lr, device=device,
                             progress=progress, loss_fn=lambda m, b, i=i: strategy.loss(m, b, scenario, i),
                             **fit_options))
        strategy.after_task(model, scenario, i)
        for j in range(T):
            R[i, j] = scenario.accuracy(model, j, i)
    out = {"R": R, "histories": histories}
    if T > 1:
        out.update(acc=average_accuracy(R), bwt=backward_transfer(R), forgetting=forgetting(R))
    return out


# ---------------------------------------------------------------- the two sequences of the notebook

def digit_tasks(batch_size: int = 32, seed: int = 0) -> list[Task]:
    """Digits 0-4, then digits 5-9 (``make_digits``, all ~100 training images per class), global labels 0-9."""
    from torch.utils.data import TensorDataset

    from ftlab.tasks.images import image_loader, make_digits

    data = make_digits(seed=seed)
    tasks = []
    for name, classes in (("digits 0-4", [0, 1, 2, 3, 4]), ("digits 5-9", [5, 6, 7, 8, 9])):
        split = {}
        for part in ("train", "test"):
            x, y = data[part].tensors
            keep = torch.isin(y, torch.tensor(classes))
            split[part] = TensorDataset(x[keep], y[keep])
        tasks.append(Task(name, image_loader(split["train"], batch_size=batch_size, shuffle=True, seed=seed),
                          image_loader(split["test"], batch_size=250), classes))
    return tasks


def text_tasks(tokenizer, batch_size: int = 16, seed: int = 0, sizes: dict | None = None) -> list[Task]:
    """Sentiment (labels 0-1), then topic (labels 2-5: the topic index + 2), as text batches for BERT."""
    from ftlab.tasks import text_loader
    from ftlab.tasks.sentiment import make_sentiment
    from ftlab.tasks.topic import make_topic

    tasks, offset = [], 0
    for name, make, k in (("sentiment", make_sentiment, 2), ("topic", make_topic, 4)):
        data = make(seed=seed, sizes=sizes)
        shift = [(text, label + offset) for text, label in data["train"]], [(t, y + offset) for t, y in data["test"]]
        tasks.append(Task(name, text_loader(shift[0], tokenizer, batch_size=batch_size, shuffle=True, seed=seed),
                          text_loader(shift[1], tokenizer, batch_size=64), list(range(offset, offset + k))))
        offset += k
    return tasks


# Classroom budgets and options per sequence. lr 3e-3 for the ResNet is high on purpose: at 1e-3
# naive fine-tuning forgot only 8 points of digits 0-4 task-incrementally (at 3e-3: 31). ewc_lambda
# follows the Fisher's scale: its entries sum to about 16 for the ResNet after digits 0-4, and to
# about 0.004 for MiniLM after sentiment (a confident model has tiny gradients).
SEQUENCE_DEFAULTS = {
    "digits": {"num_steps": 60, "lr": 3e-3, "adapter_lr": 3e-3, "ewc_lambda": 1e6, "buffer_size": 100},
    "text": {"num_steps": 40, "lr": 1e-4, "adapter_lr": 1e-3, "ewc_lambda": 1e5, "buffer_size": 100},
}


def check_sequence(sequence: str, setting: str) -> None:
    """Raise ValueError unless ``sequence`` is one of ``SEQUENCE_DEFAULTS`` and ``setting`` one of ``SETTINGS``."""
    if sequence not in SEQUENCE_DEFAULTS:
        raise ValueError(f"sequence must be one of {list(SEQUENCE_DEFAULTS)}, got {sequence!r}")
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")


def run_strategy(sequence: str, setting: str, strategy: Naive, seed: int, *, num_steps: int, lr: float,
                 adapter_lr: float, progress: bool = False, tokenizer=None) -> dict:
    """One run of ``compare_strategies``: a fresh pretrained model, fresh loaders of seed ``seed`` and a fresh copy
    of ``strategy`` (left as it was) on one sequence and setting; returns ``run_sequence``'s result.

    Fresh loaders too: a loader's shuffling generator advances, and every strategy must see the same batches.
    ``tokenizer``: MiniLM's, for the text sequence (loaded when not given).
    """
    from ftlab.zoo import load_bert, load_resnet

    if sequence == "digits":
        tasks = digit_tasks(seed=seed)
    else:
        tasks = text_tasks(tokenizer if tokenizer is not None else load_bert(num_labels=6, seed=seed)[1], seed=seed)
    scenario = Scenario(tasks, setting)
    strategy = copy.deepcopy(strategy)
    seed_everything(seed)
    model = load_resnet(num_classes=10, seed=seed) if sequence == "digits" else load_bert(num_labels=6, seed=seed)[0]
    if isinstance(strategy, AdapterPerTask):
        model = adapter_model(model, tasks, seed=seed, r=8, lora_alpha=16)
    return run_sequence(model, scenario, strategy, num_steps=num_steps, progress=progress,
                        lr=adapter_lr if isinstance(strategy, AdapterPerTask) else lr)


def compare_strategies(sequence: str = "digits", setting: str = "task", strategies: dict | None = None, *,
                       num_steps: int | None = None, lr: float | None = None, adapter_lr: float | None = None,
                       seeds=(0,), progress: bool = False) -> dict:
    """Run every strategy on one sequence and setting for each seed, each run from a fresh pretrained model and
    fresh loaders.

    ``sequence``: ``"digits"`` (glyph ResNet-18, digits 0-4 then 5-9) or ``"text"`` (MiniLM,
    sentiment then topic). ``strategies``: ``{name: strategy object}``; by default naive, EWC,
    replay, LwF and, task-incrementally, one LoRA adapter per task (r=8, lora_alpha=16). Each run
    gets a fresh copy of the strategy object (a strategy keeps state: Fisher, buffer, old model).
    ``num_steps`` (per task), ``lr`` and ``adapter_lr`` (for ``AdapterPerTask``), and the default
    strategies' ``ewc_lambda`` and ``buffer_size`` come from ``SEQUENCE_DEFAULTS`` unless given.
    Seed s fixes the data, the new head and the batch order, the same for every strategy.

    Returns ``{"runs", "summary", "R", "R_runs"}``: ``runs`` has one row per strategy and seed
    (``strategy``, ``seed``, ``setting``, ``acc``, ``bwt``, ``forgetting`` (mean over earlier tasks),
    ``forgetting_first``); ``summary`` the same columns as means over seeds, one row per strategy,
    plus ``n`` (seeds); ``R``: ``{name: (T, T) accuracy matrix, mean over seeds}``; ``R_runs``:
    ``{(name, seed): (T, T) matrix}``. ``ftlab.compare.summarize(result["runs"], "acc")`` gives
    the spread of a column.
    """
    from ftlab.zoo import load_bert

    check_sequence(sequence, setting)
    seeds = check_seeds(seeds)
    defaults = SEQUENCE_DEFAULTS[sequence]
    num_steps = num_steps or defaults["num_steps"]
    lr, adapter_lr = lr or defaults["lr"], adapter_lr or defaults["adapter_lr"]
    if strategies is None:
        strategies = {"naive": Naive(), "ewc": EWC(defaults["ewc_lambda"]), "replay": Replay(defaults["buffer_size"]),
                      "lwf": LwF()}
        if setting == "task":
            strategies["adapters"] = AdapterPerTask()
    R_runs, rows = {}, []
    for seed in seeds:
        tokenizer = load_bert(num_labels=6, seed=seed)[1] if sequence == "text" else None
        for name, pristine in strategies.items():
            result = run_strategy(sequence, setting, pristine, seed, num_steps=num_steps, lr=lr,
                                  adapter_lr=adapter_lr, progress=progress, tokenizer=tokenizer)
            R_runs[name, seed] = result["R"]
            rows.append({"strategy": name, "seed": seed, "setting": setting, "acc": result["acc"],
                         "bwt": result["bwt"], "forgetting": float(result["forgetting"].mean()),
                         "forgetting_first": float(result["forgetting"][0])})
    runs = pd.DataFrame(rows)
    order = {name: i for i, name in enumerate(strategies)}
    runs = runs.sort_values("strategy", key=lambda col: col.map(order), kind="stable", ignore_index=True)
    summary = runs.groupby(["strategy", "setting"], sort=False)[["acc", "bwt", "forgetting", "forgetting_first"]].mean()
    summary = summary.assign(n=runs.groupby(["strategy", "setting"], sort=False).size()).reset_index()
    R = {name: np.mean([R_runs[name, seed] for seed in seeds], axis=0) for name in strategies}
    return {"runs": runs, "summary": summary, "R": R, "R_runs": R_runs}


# ---------------------------------------------------------------- reference results: EWC's lambda and the buffer size

# The grids of ``sweep_continual``: EWC's lambda (the Fisher's scale differs by sequence, see SEQUENCE_DEFAULTS) and
# the replay buffer's size in examples (digits 0-4 has about 500 training images).
SWEEP_GRID = {
    "digits": {"ewc_lambda": [1e2, 1e3, 1e4, 1e5, 1e6, 1e7], "buffer_size": [10, 30, 100, 300]},
    "text": {"ewc_lambda": [1e2, 1e3, 1e4, 1e5, 1e6, 1e7], "buffer_size": [10, 30, 100, 300]},
}
FISHER_EXAMPLES = 200  # examples in EWC's Fisher (EWC's default max_examples)
MATRIX_COLUMNS = ["R_0_0", "R_0_1", "R_1_0", "R_1_1"]  # R[i, j] of a two-task sequence, row by row
SWEEP_COLUMNS = ["sequence", "setting", "strategy", "ewc_lambda", "buffer_size", "seed", "num_steps", "lr", "acc",
                 "bwt", "forgetting", "forgetting_first", *MATRIX_COLUMNS, "seconds"]
SWEEP_KEY = ["setting", "strategy", "ewc_lambda", "buffer_size", "seed"]  # what makes a row a different run


def sweep_runs(sequence: str, setting: str, ewc_lambdas, buffer_sizes) -> list[tuple[dict, Naive]]:
    """The runs of a sweep in one setting, as ``[(labels, strategy)]``: naive, EWC at each lambda, replay with each
    buffer size, LwF and (task-incrementally) one adapter per task. ``labels``: ``strategy`` (the class's
    ``name``), ``ewc_lambda`` and ``buffer_size`` (None where they do not apply)."""
    runs = [(Naive(), None, None)]
    fisher_examples = sweep_settings(sequence)["fisher_examples"]
    runs += [(EWC(lam, max_examples=fisher_examples), float(lam), None) for lam in ewc_lambdas]
    runs += [(Replay(size), None, size) for size in buffer_sizes]
    runs += [(LwF(), None, None)] + ([(AdapterPerTask(), None, None)] if setting == "task" else [])
    return [({"strategy": strategy.name, "ewc_lambda": lam, "buffer_size": size}, strategy)
            for strategy, lam, size in runs]


def sweep_row(sequence: str, setting: str, labels: dict, strategy: Naive, seed: int) -> dict:
    """Train one run of the sweep (``run_strategy`` with the classroom budget of ``SEQUENCE_DEFAULTS``, shrunk in
    FAST mode) and return its row: ``SWEEP_COLUMNS``, the accuracy matrix flattened into ``MATRIX_COLUMNS``."""
    budget = sweep_budget(sequence)
    lr = budget["adapter_lr"] if isinstance(strategy, AdapterPerTask) else budget["lr"]
    start = time.perf_counter()
    result = run_strategy(sequence, setting, strategy, seed, num_steps=budget["num_steps"], lr=budget["lr"],
                          adapter_lr=budget["adapter_lr"])
    R = result["R"]
    if R.shape != (2, 2):
        raise ValueError(f"the sweep stores two-task sequences, got an accuracy matrix of shape {R.shape}")
    return {"sequence": sequence, "setting": setting, **labels, "seed": seed, "num_steps": budget["num_steps"],
            "lr": lr, "acc": result["acc"], "bwt": result["bwt"], "forgetting": float(result["forgetting"].mean()),
            "forgetting_first": float(result["forgetting"][0]), **dict(zip(MATRIX_COLUMNS, R.reshape(-1).tolist())),
            "seconds": round(time.perf_counter() - start, 1)}


def sweep_budget(sequence: str, run_mode: str | None = None) -> dict:
    """``num_steps`` per task, ``lr``, ``adapter_lr`` of a sweep in ``run_mode`` (default the current one): the
    sequence's classroom defaults, 2 steps per task in FAST mode."""
    defaults = SEQUENCE_DEFAULTS[sequence]
    num_steps = 2 if (run_mode or mode()) == "FAST" else defaults["num_steps"]
    return {"num_steps": num_steps, "lr": defaults["lr"], "adapter_lr": defaults["adapter_lr"]}


def sweep_settings(sequence: str, run_mode: str | None = None) -> dict:
    """What every row of a sweep file depends on besides its key, in ``run_mode`` (default the current one): the
    budget, the options of the strategies that are not swept, the mode. Two commands may add rows to one file
    only when these are equal."""
    run_mode = run_mode or mode()
    return {"kind": "continual", "sequence": sequence, "mode": run_mode, **sweep_budget(sequence, run_mode),
            "batch_size": 32 if sequence == "digits" else 16,
            "fisher_examples": 20 if run_mode == "FAST" else FISHER_EXAMPLES,
            "lwf": {"alpha": 1.0, "T": 2.0}, "adapters": {"method": "lora", "r": 8, "lora_alpha": 16},
            "replay_batch_size": "the current batch's size"}


def sweep_paths(sequence: str, out: str | Path) -> tuple[Path, Path]:
    """``(csv, json)`` paths of a sweep's results: ``out/continual_<sequence>.csv`` and ``.json``."""
    return Path(out) / f"continual_{sequence}.csv", Path(out) / f"continual_{sequence}.json"


def _row_key(row) -> tuple:
    def number(value):
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

    return (row["setting"], row["strategy"], number(row["ewc_lambda"]), number(row["buffer_size"]), int(row["seed"]))


def sweep_continual(sequence: str = "digits", *, settings=SETTINGS, seeds=(0, 1, 2), ewc_lambdas=None,
                    buffer_sizes=None, out: str | Path | None = None, command: str | None = None,
                    progress: bool = True) -> pd.DataFrame:
    """Every strategy of ``sweep_runs`` (EWC at each of ``ewc_lambdas``, replay with each of ``buffer_sizes``; default
    ``SWEEP_GRID``) in each setting for each seed, with the classroom budget, into ``out/continual_<sequence>.csv``.

    ``out``: default ``data/results`` (refused in FAST mode). The provenance goes beside it in a ``.json`` (the
    commands with ftlab's commit, torch version and threads, date; the checkpoint's SHA-256; ``sweep_settings``), as
    ``ftlab.sweep`` records it. Rows are appended as runs finish and runs already in the file are skipped, so an
    interrupted command picks up where it stopped. Returns every row of the file.
    """
    from ftlab.sweep import (
        RESULTS_DIR,
        append_rows,
        check_writable,
        checkpoint_hashes,
        open_results_file,
        record_provenance,
        refuse_fast_writes,
    )

    settings = [settings] if isinstance(settings, str) else list(settings)
    for setting in settings:
        check_sequence(sequence, setting)
    seeds = check_seeds(seeds)
    grid = SWEEP_GRID[sequence]
    ewc_lambdas = grid["ewc_lambda"] if ewc_lambdas is None else list(ewc_lambdas)
    buffer_sizes = grid["buffer_size"] if buffer_sizes is None else list(buffer_sizes)
    for lam in ewc_lambdas:
        check_number("ewc_lambda", lam, minimum=0)
    for size in buffer_sizes:
        check_positive_int("buffer_size", size)
    out = Path(RESULTS_DIR if out is None else out)
    refuse_fast_writes(out)
    csv_path, json_path = sweep_paths(sequence, out)
    check_writable([csv_path, json_path])
    checkpoints = checkpoint_hashes("digits" if sequence == "digits" else "sentiment")
    rows = open_results_file(csv_path, json_path, SWEEP_COLUMNS, sweep_settings(sequence), checkpoints, "check_sweep")
    done = {_row_key(row) for row in rows.to_dict("records")}
    command = command or (f"ftlab.continual.sweep_continual({sequence!r}, settings={settings!r}, seeds={seeds!r}, "
                          f"ewc_lambdas={ewc_lambdas!r}, buffer_sizes={buffer_sizes!r})")
    tried = json.loads(json_path.read_text())["grid"] if json_path.exists() else {"ewc_lambda": [], "buffer_size": []}
    tried = {"ewc_lambda": sorted(set(tried["ewc_lambda"]) | {float(v) for v in ewc_lambdas}),
             "buffer_size": sorted(set(tried["buffer_size"]) | set(buffer_sizes))}
    new = {"file": csv_path.name, "columns": SWEEP_COLUMNS, "settings": sweep_settings(sequence),
           "checkpoints": checkpoints, "grid": tried, "commands": []}
    record_provenance(json_path, new, command, {"grid": tried})
    for seed in seeds:
        for setting in settings:
            for labels, strategy in sweep_runs(sequence, setting, ewc_lambdas, buffer_sizes):
                if _row_key({"setting": setting, "seed": seed, **labels}) in done:
                    continue
                row = sweep_row(sequence, setting, labels, strategy, seed)
                append_rows(csv_path, [row], SWEEP_COLUMNS)
                if progress:
                    knob = (f" lambda {row['ewc_lambda']:g}" if row["ewc_lambda"] is not None else
                            f" buffer {row['buffer_size']}" if row["buffer_size"] is not None else "")
                    print(f"  {setting:5s} {row['strategy']}{knob} seed {seed}: forgetting {row['forgetting']:.3f}, "
                          f"acc {row['acc']:.3f} ({row['seconds']:.0f} s)", flush=True)
    return load_sweep(sequence, out)


def load_sweep(sequence: str = "digits", out: str | Path | None = None) -> pd.DataFrame:
    """The rows of ``out/continual_<sequence>.csv`` (default ``data/results``), provenance in
    ``df.attrs["provenance"]``. A missing file raises FileNotFoundError naming the command that makes it."""
    from ftlab.sweep import RESULTS_DIR, load_results_file

    csv_path, json_path = sweep_paths(sequence, RESULTS_DIR if out is None else out)
    return load_results_file(csv_path, json_path, f"make them with python -m ftlab.continual --sequence {sequence} "
                                                  f"(see --help)")


def check_sweep(json_path: str | Path) -> list[str]:
    """What no longer matches between a shipped sweep file (its ``.json`` and ``.csv``) and the code: the
    checkpoint's SHA-256, ``sweep_settings`` in classroom mode, the columns. Empty: the file is current."""
    from ftlab.sweep import checkpoint_hashes, provenance_problems

    json_path = Path(json_path)
    stored = json.loads(json_path.read_text())
    sequence = stored["settings"]["sequence"]
    problems = provenance_problems(stored, sweep_settings(sequence, "classroom"),
                                   checkpoint_hashes("digits" if sequence == "digits" else "sentiment"))
    rows = pd.read_csv(json_path.with_suffix(".csv"))
    if list(rows.columns) != SWEEP_COLUMNS:
        problems.append(f"{json_path.with_suffix('.csv').name}: columns {list(rows.columns)}, expected {SWEEP_COLUMNS}")
    return problems


def sweep_point(ewc_lambda: float, buffer_size: int, setting: str = "task", *, seed: int = 0,
                sequence: str = "digits") -> pd.DataFrame:
    """Train EWC with ``ewc_lambda`` and replay with ``buffer_size`` for one seed, as the sweep does (a live run to
    draw over the stored sweep); returns their two rows (``SWEEP_COLUMNS``)."""
    check_sequence(sequence, setting)
    check_number("ewc_lambda", ewc_lambda, minimum=0)
    check_positive_int("buffer_size", buffer_size)
    runs = [run for run in sweep_runs(sequence, setting, [ewc_lambda], [buffer_size])
            if run[0]["strategy"] in ("ewc", "replay")]
    return pd.DataFrame([sweep_row(sequence, setting, labels, strategy, seed) for labels, strategy in runs],
                        columns=SWEEP_COLUMNS)


def mean_matrix(rows: pd.DataFrame) -> np.ndarray:
    """The mean (2, 2) accuracy matrix of rows of the sweep's schema (``MATRIX_COLUMNS``), e.g. over seeds."""
    return rows[MATRIX_COLUMNS].to_numpy(dtype=float).mean(axis=0).reshape(2, 2)


def mean_matrices(rows: pd.DataFrame, by: str = "strategy") -> dict:
    """``{group: mean_matrix of its rows}`` for each group of column ``by`` (e.g. the seeds of each strategy), in the
    order the groups first appear."""
    return {name: mean_matrix(group) for name, group in rows.groupby(by, sort=False)}


def default_rows(rows: pd.DataFrame, sequence: str = "digits") -> pd.DataFrame:
    """The rows of a sweep (``load_sweep``) of ``compare_strategies``' default strategies: naive, EWC at the
    sequence's default ``ewc_lambda``, replay with its default ``buffer_size``, LwF and one adapter per task."""
    defaults = SEQUENCE_DEFAULTS[sequence]
    keep = (rows.strategy.isin(["naive", "lwf", "adapters"])
            | ((rows.strategy == "ewc") & np.isclose(rows.ewc_lambda, defaults["ewc_lambda"]))
            | ((rows.strategy == "replay") & (rows.buffer_size == defaults["buffer_size"])))
    return rows[keep].reset_index(drop=True)


def as_sweep_rows(result: dict, strategies: dict) -> pd.DataFrame:
    """``compare_strategies``' result as rows of the sweep's schema, to draw a live run over ``load_sweep``'s rows:
    ``strategy`` (the key of ``strategies``), ``setting``, ``seed``, ``ewc_lambda`` and ``buffer_size`` read from the
    strategy (None where it has none), the metrics, and the accuracy matrix in ``MATRIX_COLUMNS``."""
    rows = []
    for run in result["runs"].to_dict("records"):
        strategy = strategies[run["strategy"]]
        R = result["R_runs"][run["strategy"], run["seed"]]
        rows.append({**run, "ewc_lambda": strategy.ewc_lambda if isinstance(strategy, EWC) else None,
                     "buffer_size": strategy.buffer.size if isinstance(strategy, Replay) else None,
                     **dict(zip(MATRIX_COLUMNS, np.asarray(R).reshape(-1).tolist()))})
    return pd.DataFrame(rows)


def sweep_matrices(rows: pd.DataFrame, setting: str, ewc_lambda: float, buffer_size: int) -> dict:
    """``{"naive": R, "EWC lambda=...": R, "replay, ... images": R}``: the mean accuracy matrix (2, 2) over the
    seeds of naive fine-tuning, EWC at ``ewc_lambda`` and replay with ``buffer_size`` in ``setting``, from the rows
    of a sweep (``load_sweep``). Raises ValueError when the sweep has no such run."""
    rows = rows[rows.setting == setting]
    chosen = {"naive": rows[rows.strategy == "naive"],
              f"EWC, lambda={ewc_lambda:.0e}": rows[(rows.strategy == "ewc") & np.isclose(rows.ewc_lambda, ewc_lambda)],
              f"replay, {buffer_size} images": rows[(rows.strategy == "replay") & (rows.buffer_size == buffer_size)]}
    for name, picked in chosen.items():
        if picked.empty:
            grid = {key: sorted(rows[key].dropna().unique().tolist()) for key in ("ewc_lambda", "buffer_size")}
            raise ValueError(f"the sweep has no {setting!r} runs for {name}; it has ewc_lambda {grid['ewc_lambda']} "
                             f"and buffer_size {grid['buffer_size']}")
    return {name: mean_matrix(picked) for name, picked in chosen.items()}


def main(argv: list[str] | None = None) -> None:
    """``python -m ftlab.continual``: the sweep of ``sweep_continual`` (see ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m ftlab.continual",
        description="Reference results of continual fine-tuning: every strategy, EWC at each lambda and replay with "
                    "each buffer size, in both settings, over seeds, into OUT/continual_<sequence>.csv (+ .json "
                    "provenance). Resumable: runs already in the file are skipped.")
    parser.add_argument("--sequence", default="digits", choices=list(SEQUENCE_DEFAULTS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--settings", default="task,class", help="comma-separated: task, class (default both)")
    parser.add_argument("--ewc-lambdas", default=None, help="comma-separated (default SWEEP_GRID's)")
    parser.add_argument("--buffer-sizes", default=None, help="comma-separated (default SWEEP_GRID's)")
    parser.add_argument("--out", default=None, help="folder (default data/results; FAST mode needs another)")
    args = parser.parse_args(argv)
    lambdas = None if args.ewc_lambdas is None else [float(v) for v in args.ewc_lambdas.split(",")]
    sizes = None if args.buffer_sizes is None else [int(v) for v in args.buffer_sizes.split(",")]
    command = "python -m ftlab.continual " + " ".join(sys.argv[1:] if argv is None else argv)
    sweep_continual(args.sequence, settings=args.settings.split(","), seeds=list(range(args.seeds)),
                    ewc_lambdas=lambdas, buffer_sizes=sizes, out=args.out, command=command.strip())


if __name__ == "__main__":
    main()
