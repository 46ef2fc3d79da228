"""Multi-task fine-tuning: one shared backbone, one head per task, trained on a mixture of tasks.

A ``MultiHeadModel`` computes ``logits = heads[task](backbone(x))``: the backbone maps a batch to
features ``(B, d)`` and each task has its own ``nn.Linear(d, classes of the task)``. Every batch
names its task (``batch["task"]``), so one model call runs one head, and ``ftlab.train.fit`` /
``evaluate`` work unchanged: a batch is a dict, the model is called as ``model(**batch)``.

A ``Mixture`` feeds ``fit`` with batches of several tasks, one task per batch, chosen by a sampler:

* proportional: ``p_i = n_i / sum_j n_j`` (``n_i`` training examples of task i), as if the tasks
  were pooled into one data set, so a small task is seen rarely;
* temperature: ``p_i ~ n_i^(1/T)``, T = 1 is proportional, T -> infinity is uniform
  (Arivazhagan et al. 2019 use it to balance languages in multilingual translation);
* round-robin: tasks take turns, ``p_i = 1/N`` exactly, whatever the sizes.

The parameter-efficient alternative (``add_task_adapters``): the backbone is frozen and shared,
and each task gets its own adapter (LoRA by default) named after it, switched by name in every
forward call. Nothing one task trains is used by another, so tasks are trained one at a time
(``train_task_adapters``) and cannot interfere; the price is N adapters to store, far less than
N full copies (``storage_cost``).
"""
from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import torch
from torch import nn

from ftlab.compare import check_seeds
from ftlab.config import seed_everything
from ftlab.methods import apply
from ftlab.methods.base import active_adapter, adapter_names, set_adapter, tuned_layers
from ftlab.train import cycle, evaluate, fit

HEAD_ATTRIBUTES = ("classifier", "score", "fc")  # transformers' and torchvision's classification heads
SAMPLINGS = ("proportional", "temperature", "round_robin")


def _check_task_name(task) -> None:
    if not isinstance(task, str) or not task or "." in task:
        raise ValueError(f"a task name must be a non-empty string without '.' (it names a head and an adapter), "
                         f"got {task!r}")


class MultiHeadModel(nn.Module):
    """A shared ``backbone`` (inputs -> features ``(B, d)``) and one linear head per task.

    ``forward(task, x=None, labels=None, **inputs)``: features from ``backbone(x)`` (images) or
    ``backbone(**inputs)`` (text: ``input_ids``, ``attention_mask``), then ``heads[task]``;
    returns the logits ``(B, classes of task)``. ``labels`` is accepted and ignored so that
    ``model(**batch)`` works; ``ftlab.train`` computes the loss from ``batch["labels"]``.

    With ``freeze_statistics`` (the default) the backbone's BatchNorm layers stay in eval mode
    when the model trains: they normalise with their pretrained running statistics. Why: a
    running average over a mixture of tasks (grey digits, pink cells) fits none of them, so at
    test time every task would be normalised with statistics of the others; and with one
    adapter per task the shared base must not change at all.

    With ``adapter_per_task`` (set by ``add_task_adapters``) the backbone's adapter called
    ``task`` is switched on first.
    """

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module], freeze_statistics: bool = True):
        super().__init__()
        if not heads:
            raise ValueError("a MultiHeadModel needs at least one task head")
        for task in heads:
            _check_task_name(task)
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        self.freeze_statistics = freeze_statistics
        self.adapter_per_task = False

    @property
    def tasks(self) -> list[str]:
        return list(self.heads)

    def check_task(self, task) -> None:
        """Raise ValueError unless ``task`` has a head."""
        if task not in self.heads:
            raise ValueError(f"unknown task {task!r}: this model has heads for {self.tasks}; "
                             f"add a head for a new task with add_task()")

    def add_task(self, task: str, num_classes: int) -> None:
        """Add a new linear head for ``task`` with ``num_classes`` outputs (before ``add_task_adapters``)."""
        _check_task_name(task)
        if self.adapter_per_task:
            raise ValueError(f"this model already has one adapter per task ({self.tasks}); add every task's head "
                             f"before add_task_adapters")
        if task in self.heads:
            raise ValueError(f"task {task!r} already has a head; choose another name")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive whole number, got {num_classes!r}")
        any_head = next(iter(self.heads.values()))
        like = {"device": any_head.weight.device, "dtype": any_head.weight.dtype}
        self.heads[task] = nn.Linear(any_head.in_features, num_classes).to(**like)

    def features(self, x=None, **inputs) -> torch.Tensor:
        """The backbone's features ``(B, d)``: what every head sees."""
        out = self.backbone(x) if x is not None else self.backbone(**inputs)
        return out.logits if hasattr(out, "logits") else out  # transformers: the head was replaced by Identity

    def forward(self, task: str, x=None, labels=None, **inputs) -> torch.Tensor:
        self.check_task(task)
        if self.adapter_per_task and active_adapter(self.backbone) != task:
            set_adapter(self.backbone, task)
        return self.heads[task](self.features(x, **inputs))  # (B, classes of task)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_statistics:
            for module in self.backbone.modules():
                if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                    module.eval()
        return self


def multi_head(model: nn.Module, num_classes: dict[str, int], seed: int = 0,
               freeze_statistics: bool = True) -> MultiHeadModel:
    """Turn a classifier into a ``MultiHeadModel`` with one new head per task.

    ``model``: a transformers sequence classifier (head ``classifier`` or ``score``) or a
    torchvision model (head ``fc``); its head is replaced by ``nn.Identity`` (in place), so it
    returns the features the head saw, ``(B, d)``. ``num_classes``: ``{task: classes}``; each
    head is ``nn.Linear(d, classes)``, initialised from ``seed``. ``freeze_statistics``: see
    ``MultiHeadModel``.
    """
    if not isinstance(num_classes, dict) or not num_classes:
        raise ValueError(f"num_classes must be a non-empty dict {{task: number of classes}}, got {num_classes!r}")
    for task, k in num_classes.items():
        _check_task_name(task)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"task {task!r} needs a positive whole number of classes, got {k!r}")
    attribute = next((a for a in HEAD_ATTRIBUTES if isinstance(getattr(model, a, None), nn.Linear)), None)
    if attribute is None:
        raise TypeError(f"{type(model).__name__} has no linear classification head named one of {HEAD_ATTRIBUTES}; "
                        f"pass a transformers sequence classifier or a torchvision classifier")
    old_head = getattr(model, attribute)
    like = {"device": old_head.weight.device, "dtype": old_head.weight.dtype}
    torch.manual_seed(seed)
    heads = {task: nn.Linear(old_head.in_features, k).to(**like) for task, k in num_classes.items()}
    setattr(model, attribute, nn.Identity())
    return MultiHeadModel(model, heads, freeze_statistics)


# ---------------------------------------------------------------- batches that carry their task

def tag(batch, task: str) -> dict:
    """A batch as a dict that names its task: ``(x, y)`` -> ``{"x", "labels", "task"}``; dicts gain ``"task"``."""
    if isinstance(batch, dict):
        return {**batch, "task": task}
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return {"x": batch[0], "labels": batch[1], "task": task}
    raise TypeError(f"a batch must be a dict or an (x, y) pair, got {type(batch).__name__}")


class Tagged:
    """Re-iterable view of ``data`` (a loader or list of batches) whose batches name ``task``.

    ``classes`` (optional, a list of label values) maps each label to its position in the list,
    e.g. digits 5..9 to a 5-way head's 0..4.
    """

    def __init__(self, data: Iterable, task: str, classes: list[int] | None = None):
        _check_task_name(task)
        self.data, self.task = data, task
        self.lookup = None
        if classes is not None:
            self.lookup = torch.full((max(classes) + 1,), -1, dtype=torch.long)
            self.lookup[torch.tensor(classes)] = torch.arange(len(classes))

    def __iter__(self):
        for batch in self.data:
            batch = tag(batch, self.task)
            if self.lookup is not None:
                batch["labels"] = self.lookup[batch["labels"]]
            yield batch

    def __len__(self) -> int:
        return len(self.data)


def _num_examples(data) -> int:
    if hasattr(data, "dataset"):
        return len(data.dataset)
    return sum(len(batch[1] if isinstance(batch, (list, tuple)) else batch["labels"]) for batch in data)


def task_probabilities(sizes: dict[str, int], sampling: str = "temperature", T: float = 2.0) -> dict[str, float]:
    """The probability of drawing each task's batch: ``{task: p}``, summing to 1.

    ``sizes``: ``{task: training examples n_i}``. proportional: ``n_i / sum n``; temperature:
    ``n_i^(1/T) / sum_j n_j^(1/T)``; round_robin: ``1/N`` (exactly, by taking turns).
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if not sizes:
        raise ValueError("no tasks to sample from: give at least one task")
    empty = [task for task, n in sizes.items() if not n or n < 0]
    if empty:
        raise ValueError(f"tasks {empty} have no training examples; every task needs at least one")
    if sampling == "temperature" and not T > 0:
        raise ValueError(f"the temperature T must be positive (1 = proportional, large = uniform), got {T!r}")
    exponent = {"proportional": 1.0, "temperature": 1.0 / T if sampling == "temperature" else 1.0,
                "round_robin": 0.0}[sampling]
    weights = {task: float(n) ** exponent for task, n in sizes.items()}
    total = sum(weights.values())
    return {task: w / total for task, w in weights.items()}


class Mixture:
    """Batches of several tasks for ``fit``: each batch comes from one task, chosen by ``sampling``.

    ``loaders``: ``{task: loader}`` of ``(x, y)`` or dict batches; each is cycled (restarted,
    so a shuffling loader reshuffles) and its batches are tagged with the task. One pass yields
    ``num_batches`` batches (default: all the loaders' batches together); the task order of
    pass k is drawn from ``seed + k``, so runs repeat exactly. ``sizes`` defaults to the number
    of examples of each loader's data set.
    """

    def __init__(self, loaders: dict[str, Iterable], *, sampling: str = "temperature", T: float = 2.0,
                 num_batches: int | None = None, sizes: dict[str, int] | None = None, seed: int = 0):
        if not loaders:
            raise ValueError("a Mixture needs at least one task: loaders={task: loader}")
        for task in loaders:
            _check_task_name(task)
        sizes = sizes if sizes is not None else {task: _num_examples(data) for task, data in loaders.items()}
        if set(sizes) != set(loaders):
            raise ValueError(f"sizes names tasks {sorted(sizes)} but loaders has {sorted(loaders)}")
        self.probabilities = task_probabilities({task: sizes[task] for task in loaders}, sampling, T)
        if num_batches is None:
            num_batches = sum(len(data) for data in loaders.values())
        if num_batches < 1:
            raise ValueError(f"num_batches must be positive, got {num_batches}")
        self.loaders, self.sampling, self.num_batches, self.seed = loaders, sampling, num_batches, seed
        self.passes = 0

    def task_order(self, num_batches: int, seed: int) -> list[str]:
        """The tasks of ``num_batches`` consecutive batches."""
        tasks = list(self.loaders)
        if self.sampling == "round_robin":
            return [tasks[i % len(tasks)] for i in range(num_batches)]
        p = torch.tensor([self.probabilities[task] for task in tasks], dtype=torch.float64)
        draws = torch.multinomial(p, num_batches, replacement=True, generator=torch.Generator().manual_seed(seed))
        return [tasks[i] for i in draws.tolist()]

    def __iter__(self):
        order = self.task_order(self.num_batches, self.seed + self.passes)
        self.passes += 1
        streams = {task: cycle(data) for task, data in self.loaders.items()}
        for task in order:
            yield tag(next(streams[task]), task)

    def __len__(self) -> int:
        return self.num_batches



# ---------------------------------------------------------------- one adapter per task

def add_task_adapters(model: MultiHeadModel, method: str = "lora", **options) -> MultiHeadModel:
    """Freeze the backbone and give it one adapter per task, named after the task (in place).

    ``method`` and ``options`` go to ``ftlab.apply`` (e.g. ``r=8, targets=...``). From now on
    ``model(task=t, ...)`` runs adapter ``t`` and head ``t``.
    """
    existing = adapter_names(model.backbone)
    if existing:
        raise ValueError(f"the backbone already has adapters {existing}; add_task_adapters needs a plain backbone")
    for task in model.tasks:
        apply(model.backbone, method, adapter_name=task, **options)
    model.adapter_per_task = True
    model.freeze_statistics = True  # the shared base, BatchNorm statistics included, must not change
    model.train(model.training)
    return model


def select_task(model: MultiHeadModel, task: str) -> MultiHeadModel:
    """Make ``task`` the one that trains: its head and (with adapters) its adapter; all else frozen."""
    model.check_task(task)
    if not model.adapter_per_task:
        raise ValueError("select_task needs one adapter per task (add_task_adapters); a shared backbone trains "
                         "with every task")
    set_adapter(model.backbone, task)
    for name, head in model.heads.items():
        head.requires_grad_(name == task)
    return model


def train_task_adapters(model: MultiHeadModel, loaders: dict[str, Iterable], *, num_steps: int, lr: float = 1e-3,
                        **fit_options) -> dict[str, dict]:
    """Train each task's adapter and head on that task alone, one task after the other.

    ``loaders``: ``{task: loader}`` of untagged batches. Returns ``{task: fit history}``.
    """
    for task in loaders:
        model.check_task(task)
    histories = {}
    for task, data in loaders.items():
        select_task(model, task)
        histories[task] = fit(model, Tagged(data, task), num_steps=num_steps, lr=lr, **fit_options)
    return histories


def _bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def storage_cost(model: MultiHeadModel) -> dict:
    """Bytes to store N = ``len(model.tasks)`` fine-tuned models, measured from the tensors.

    * ``base``: the backbone's parameters and buffers, adapters excluded;
    * ``heads[t]``, ``adapters[t]``: task t's head and adapter (all injected tensors named t);
    * ``full_copies``: ``sum_t (base + heads[t])``, N fully fine-tuned models;
    * ``base_plus_adapters``: ``base + sum_t (adapters[t] + heads[t])``, one frozen base.
    """
    layers = [layer for _, layer in tuned_layers(model.backbone)]
    adapter_ids = {task: {id(p) for layer in layers if task in layer.adapter_config
                          for p in layer.adapter_parameters(task)} for task in adapter_names(model.backbone)}
    every_adapter = set().union(*adapter_ids.values()) if adapter_ids else set()
    base = _bytes(p for p in model.backbone.parameters() if id(p) not in every_adapter)
    base += _bytes(model.backbone.buffers())
    params = {id(p): p for p in model.backbone.parameters()}
    heads = {task: _bytes(head.parameters()) for task, head in model.heads.items()}
    adapters = {task: _bytes(params[i] for i in adapter_ids.get(task, ())) for task in model.tasks}
    return {
        "num_tasks": len(model.tasks),
        "base": base,
        "heads": heads,
        "adapters": adapters,
        "full_copies": sum(base + heads[t] for t in model.tasks),
        "base_plus_adapters": base + sum(adapters[t] + heads[t] for t in model.tasks),
    }


def storage_curve(cost: dict, num_tasks: Iterable[int] = range(1, 51)) -> pd.DataFrame:
    """Bytes for N tasks from one ``storage_cost`` measurement, each task as big as the measured mean.

    Columns ``num_tasks``, ``full_copies`` = N (base + head), ``base_plus_adapters`` = base + N (adapter + head).
    """
    n = cost["num_tasks"]
    head = sum(cost["heads"].values()) / n
    adapter = sum(cost["adapters"].values()) / n
    rows = [{"num_tasks": k, "full_copies": k * (cost["base"] + head),
             "base_plus_adapters": cost["base"] + k * (adapter + head)} for k in num_tasks]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- drivers for the notebook

def image_tasks(digits_per_class: int = 10, cells_train: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Two image tasks of very different sizes: a small one, digits with ``digits_per_class`` training
    images per class (10 classes), and a big one, cells with ``cells_train`` training images (normal / abnormal).

    Returns ``{task: {"train", "test", "num_classes"}}`` with ``TensorDataset`` splits.
    """
    from ftlab.tasks.images import CELL_CLASSES, DIGIT_CLASSES, make_cells, make_digits

    digits = make_digits(digits_per_class, seed=seed)
    cells = make_cells(seed=seed, sizes={"train": cells_train})
    return {
        "digits": {"train": digits["train"], "test": digits["test"], "num_classes": len(DIGIT_CLASSES)},
        "cells": {"train": cells["train"], "test": cells["test"], "num_classes": len(CELL_CLASSES)},
    }


def compare_sampling(tasks: dict[str, dict] | None = None, *, num_steps: int = 80, lr: float = 1e-3,
                     batch_size: int = 32, T: float = 3.0, samplings=("proportional", "temperature"),
                     seeds=(0,), progress: bool = False) -> pd.DataFrame:
    """Single-task fine-tuning against multi-task training with each sampler, on the glyph ResNet-18, per seed.

    ``tasks``: ``image_tasks(seed=s)`` for each seed s by default (the training images vary with the
    seed); given tasks stay the same for every seed. Each task alone gets ``num_steps`` steps (one
    model per task); each multi-task model gets the same total, ``num_steps * len(tasks)`` steps,
    with batches drawn by the sampler. Every run uses fit's schedule with a warm-up over the first
    10% of its steps and a cosine decay, so final accuracies are not the noise of a constant rate.
    Seed s fixes the heads, the batch order and the sampler's draws. Returns one row per
    (``training``, ``task``, ``seed``), ordered by training then task: ``accuracy`` on the task's
    test set, ``share`` (the sampler's probability of the task; 1 for single-task) and ``batches``
    (how many of the task's batches the model trained on). ``ftlab.compare.summarize(df, "accuracy",
    by=["training", "task"])`` gives the spread over seeds.
    """
    from ftlab.tasks.images import image_loader
    from ftlab.zoo import load_resnet

    seeds = check_seeds(seeds)
    rows = []
    for seed in seeds:
        data = tasks if tasks is not None else image_tasks(seed=seed)
        train = {t: image_loader(d["train"], batch_size=min(batch_size, len(d["train"])), shuffle=True, seed=seed)
                 for t, d in data.items()}
        test = {t: Tagged(image_loader(d["test"], batch_size=250), t) for t, d in data.items()}

        def fresh_model(seed=seed, data=data) -> MultiHeadModel:  # bound to this seed's tasks
            seed_everything(seed)
            return multi_head(load_resnet(num_classes=None), {t: d["num_classes"] for t, d in data.items()}, seed=seed)

        for task in data:
            model = fresh_model()
            fit(model, Tagged(train[task], task), num_steps=num_steps, lr=lr, warmup_steps=max(1, num_steps // 10),
                progress=progress)
            rows.append({"training": "single-task", "task": task, "seed": seed,
                         "accuracy": evaluate(model, test[task])["accuracy"], "share": 1.0, "batches": num_steps})
        for sampling in samplings:
            model = fresh_model()
            mixture = Mixture(train, sampling=sampling, T=T, num_batches=num_steps * len(data), seed=seed)
            order = mixture.task_order(mixture.num_batches, seed)
            fit(model, mixture, num_steps=mixture.num_batches, lr=lr, warmup_steps=max(1, mixture.num_batches // 10),
                progress=progress)
            name = f"multi-task, {sampling}" + (f" T={T:g}" if sampling == "temperature" else "")
            for task in data:
                rows.append({"training": name, "task": task, "seed": seed,
                             "accuracy": evaluate(model, test[task])["accuracy"], "share": mixture.probabilities[task],
                             "batches": order.count(task)})
    first = {pair: i for i, pair in enumerate(dict.fromkeys((row["training"], row["task"]) for row in rows))}
    return pd.DataFrame(sorted(rows, key=lambda row: first[row["training"], row["task"]]))  # stable: seeds in order
