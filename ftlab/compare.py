"""Run several methods on one task under one budget, and tabulate what each costs and reaches.

Every method gets a fresh copy of the same pretrained model (same seed, same new head), the
same batches and the same number of optimizer steps; only the method and its learning rate
differ. A new classification head trains in full for every method (``modules_to_save``), so
the comparison is about how each method adapts the pretrained body.

Tasks (``TASKS``; the model each one fine-tunes in brackets):

* ``"sentiment"`` (MiniLM, a 22.7M-parameter BERT): positive or negative review, test accuracy
  on adjectives never seen in training (``ftlab.tasks.sentiment``);
* ``"digits"`` (the glyph-pretrained ResNet-18): scikit-learn's handwritten digits with
  ``labels_per_class`` training images per class (``ftlab.tasks.images.make_digits``);
* ``"cells"`` (the same ResNet-18): synthetic microscopy, normal or abnormal cell, with
  ``labels_per_class`` training images per class (``ftlab.tasks.images.make_cells``);
* ``"instructions"`` (the tiny 4.0M-parameter GPT-2): supervised fine-tuning on instructions,
  greedy exact match on held-out ones (``ftlab.align.sft``).

Not every method fits every model: prompt and prefix tuning need a transformer, QLoRA's
default targets are linear layers (a ResNet has only convolutions and its head).
``applicable_methods`` finds out by applying each method to a copy of the task's model.
"""
from __future__ import annotations

import copy
import time

import pandas as pd

from ftlab.config import pick, seed_everything
from ftlab.measure import MEMORY_PARTS, count_parameters, memory_report, time_step
from ftlab.methods import apply, available
from ftlab.train import evaluate, fit

TASKS: dict[str, str] = {
    "sentiment": "MiniLM (BERT) classifies short reviews as positive or negative; test accuracy on unseen adjectives",
    "digits": "glyph-pretrained ResNet-18 on handwritten digits, few labels per class; test accuracy",
    "cells": "glyph-pretrained ResNet-18 on synthetic microscopy cells (normal/abnormal), few labels; test accuracy",
    "instructions": "tiny GPT-2 instruction-tuned (SFT); greedy exact match on held-out instructions",
}
METRICS = {"sentiment": "test accuracy", "digits": "test accuracy", "cells": "test accuracy",
           "instructions": "exact match"}
HEADS = {"sentiment": ["classifier"], "digits": ["fc"], "cells": ["fc"], "instructions": None}
NO_HEAD_OPTION = ("full", "freeze")  # these take no modules_to_save: full trains the head anyway, freeze keeps the top

# Learning rates measured on sentiment (MiniLM, 150 steps, batch 16, classifier trained in full).
SETTINGS: dict[str, dict] = {
    "lora": {"lr": 1e-3, "r": 8},
    "dora": {"lr": 1e-3, "r": 8},
    "loha": {"lr": 1e-2, "r": 8},
    "lokr": {"lr": 3e-3, "r": 8},
    "ia3": {"lr": 1e-2},
    "bitfit": {"lr": 3e-3},
}
# Per task: method -> options (``lr`` and the method's own). The rates beyond SETTINGS are NOT tuned: starting points
# (ftlab.transfer's 1e-3 for the full ResNet, sft_experiment's 2e-3 / 3e-3 for GPT-2, larger rates for methods with
# few parameters, as on sentiment), checked only by one run per task (seed 0, the default budget) in which no
# method diverged. ``freeze`` trains the top layer group (BERT's pooler and classifier, the ResNet's fc); on
# GPT-2 that would be ln_f alone (512 parameters), so there it trains the last block too.
TASK_SETTINGS: dict[str, dict[str, dict]] = {
    "sentiment": {"full": {"lr": 5e-5}, "freeze": {"lr": 3e-3}, **SETTINGS, "adapter": {"lr": 1e-3},
                  "qlora": {"lr": 1e-3, "r": 8}, "prefix": {"lr": 1e-2}, "prompt": {"lr": 3e-2}},
    "digits": {"full": {"lr": 1e-3}, "freeze": {"lr": 1e-2}, "bitfit": {"lr": 1e-2}, "adapter": {"lr": 3e-3},
               "lora": {"lr": 3e-3, "r": 8}, "dora": {"lr": 3e-3, "r": 8}, "loha": {"lr": 3e-3, "r": 8},
               "lokr": {"lr": 1e-2, "r": 8}, "ia3": {"lr": 3e-2}},
    "instructions": {"full": {"lr": 2e-3}, "freeze": {"lr": 3e-3, "trainable_groups": 2}, "bitfit": {"lr": 1e-2},
                     "adapter": {"lr": 3e-3}, "lora": {"lr": 3e-3, "r": 8}, "dora": {"lr": 3e-3, "r": 8},
                     "qlora": {"lr": 3e-3, "r": 8}, "loha": {"lr": 3e-3, "r": 8}, "lokr": {"lr": 1e-2, "r": 8},
                     "ia3": {"lr": 3e-2}, "prefix": {"lr": 1e-2}, "prompt": {"lr": 3e-2}},
}
TASK_SETTINGS["cells"] = TASK_SETTINGS["digits"]
DEFAULT_STEPS = {"sentiment": 80, "digits": 60, "cells": 60, "instructions": 200}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; compare supports: {', '.join(TASKS)}")


def load_task_model(task: str, model: str | None = None, seed: int = 0):
    """The pretrained model of ``task`` with its new head, and its tokenizer (None for images)."""
    from ftlab.zoo import load_bert, load_gpt2, load_resnet

    _check_task(task)
    if task == "sentiment":
        return load_bert(model or "minilm", num_labels=2, seed=seed)
    if task in ("digits", "cells"):
        return load_resnet(model or "glyphs", num_classes=10 if task == "digits" else 2, seed=seed), None
    return load_gpt2(model or "tiny", seed=seed)


def apply_method(net, task: str, name: str, options: dict):
    """``ftlab.apply`` with the task's head trained in full; returns the model to train (maybe a wrapper)."""
    head = {} if name in NO_HEAD_OPTION or HEADS[task] is None else {"modules_to_save": HEADS[task]}
    return apply(net, name, **head, **options)


def applicable_methods(task: str, model: str | None = None, seed: int = 0) -> tuple[list[str], dict[str, str]]:
    """``(methods, skipped)``: the methods that apply to ``task``'s model, and ``{method: why not}`` for the rest.

    Found by applying each method (with its ``TASK_SETTINGS`` options) to a copy of the model:
    what raises is skipped, with the method's own error message as the reason.
    """
    _check_task(task)
    base, _ = load_task_model(task, model, seed)
    methods, skipped = [], {}
    for name in available():
        options = {k: v for k, v in TASK_SETTINGS[task].get(name, {}).items() if k != "lr"}
        try:
            apply_method(copy.deepcopy(base), task, name, options)
        except (ValueError, TypeError, NotImplementedError) as err:
            skipped[name] = str(err)
            continue
        if name not in TASK_SETTINGS[task]:
            skipped[name] = f"no measured learning rate for {name!r} on {task!r}; pass it as {{'lr': ...}}"
            continue
        methods.append(name)
    return methods, skipped


def _resolve_runs(methods, task: str, model: str | None, seed: int) -> tuple[dict, dict]:
    """``({label: (method, options)}, skipped)``; raises ValueError for an unknown method name."""
    skipped = {}
    if methods == "all":
        names, skipped = applicable_methods(task, model, seed)
        methods = {name: {} for name in names}
    elif isinstance(methods, (list, tuple)):
        methods = {name: {} for name in methods}
    if not isinstance(methods, dict) or not methods:
        raise TypeError("methods must be 'all', a non-empty list of method names or a dict of label -> options")
    runs = {}
    for label, options in methods.items():
        options = dict(options)
        name = options.pop("method", label)
        if name not in available():
            raise ValueError(f"unknown method {name!r}; choose from: {', '.join(available())}")
        runs[label] = (name, {**TASK_SETTINGS[task].get(name, {}), **options})
    return runs, skipped


def _task_data(task: str, tokenizer, max_length: int | None, *, seed: int, sizes: dict | None, batch_size: int,
               labels_per_class: int):
    """``(train_loader, evaluate_fn)`` of ``task``: ``evaluate_fn(model)`` returns the task's metric in [0, 1]."""
    if task == "sentiment":
        from ftlab.tasks import text_loader
        from ftlab.tasks.sentiment import make_sentiment

        data = make_sentiment(seed=seed, sizes=sizes)
        train = text_loader(data["train"], tokenizer, batch_size=batch_size, shuffle=True, seed=seed)
        test = text_loader(data["test"], tokenizer, batch_size=64)
        return train, lambda net: evaluate(net, test)["accuracy"]
    if task in ("digits", "cells"):
        from ftlab.tasks.images import image_loader, make_cells, make_digits

        if task == "digits":
            data = make_digits(labels_per_class, seed=seed)
        else:
            data = make_cells(seed, sizes={**(sizes or {}), "train": 2 * labels_per_class})
        train = image_loader(data["train"], batch_size=min(batch_size, len(data["train"])), shuffle=True, seed=seed)
        test = image_loader(data["test"], batch_size=250)
        return train, lambda net: evaluate(net, test)["accuracy"]
    from ftlab.align.sft import evaluate_exact_match, sft_loader
    from ftlab.tasks.instructions import make_instructions

    data = make_instructions(seed, sizes=sizes)
    train = sft_loader(data["train"], tokenizer, max_length=max_length, batch_size=batch_size, shuffle=True, seed=seed)
    return train, lambda net: evaluate_exact_match(net, tokenizer, data["test"])["all"]


def compare(methods: str | list[str] | dict[str, dict], task: str = "sentiment", *, num_steps: int = 80,
            batch_size: int = 16, sizes: dict | None = None, labels_per_class: int = 10, model: str | None = None,
            seed: int = 0, measure: bool = True, progress: bool = False) -> pd.DataFrame:
    """Fine-tune one fresh model per method on ``task`` and return one row per method.

    ``methods``: ``"all"`` (every method that applies to the task's model, see
    ``applicable_methods``), a list of method names (each run with ``TASK_SETTINGS[task][name]``),
    or a dict mapping a label to options: ``{"lora r=2": {"method": "lora", "lr": 1e-3, "r": 2}}``
    (``method`` defaults to the label, ``lr`` to the method's measured rate). ``sizes`` sets split
    sizes, e.g. ``{"train": 400, "test": 120}``; ``labels_per_class``: training images per class
    of the image tasks. Everything is checked before any training starts.

    Columns: ``method`` (the label), ``trainable``, ``total``, ``trainable %``; with ``measure``
    the bytes of one training step (``MEMORY_PARTS``, from ``ftlab.measure.memory_report``, AdamW)
    and ``step ms`` (median of ``ftlab.measure.time_step``); then the task's metric (``METRICS``:
    ``test accuracy`` or ``exact match``) after ``num_steps`` steps, ``seconds`` (training time)
    and ``wall seconds`` (the method's whole run: copy, apply, train, evaluate, measure).
    ``df.attrs`` holds ``task``, ``metric`` and ``skipped`` (``{method: reason}`` for ``"all"``).
    """
    _check_task(task)
    runs, skipped = _resolve_runs(methods, task, model, seed)
    base, tokenizer = load_task_model(task, model, seed)
    for label, (name, options) in runs.items():  # a method that does not fit fails here, before any training
        try:
            apply_method(copy.deepcopy(base), task, name, {k: v for k, v in options.items() if k != "lr"})
        except (ValueError, TypeError) as err:
            fitting, _ = applicable_methods(task, model, seed)
            if name in fitting:  # the method fits the model, its options do not: the method's own message says why
                raise
            raise ValueError(f"method {name!r} does not apply to the {task!r} model: {err}. "
                             f"Methods that apply to {task!r}: {', '.join(fitting)}") from err
        if "lr" not in options:
            known = ", ".join(TASK_SETTINGS[task])
            raise ValueError(f"no measured settings for {name!r} on {task!r} (known: {known}); pass 'lr' for it")
    max_length = base.config.n_positions if task == "instructions" else None
    train, score = _task_data(task, tokenizer, max_length, seed=seed, sizes=sizes, batch_size=batch_size,
                              labels_per_class=labels_per_class)
    fit_options = {"warmup_steps": max(1, num_steps // 20)} if task == "instructions" else {}
    metric = METRICS[task]
    rows = []
    for label, (name, options) in runs.items():
        options = dict(options)
        lr = options.pop("lr")
        wall = time.perf_counter()
        seed_everything(seed)
        net = apply_method(copy.deepcopy(base), task, name, options)
        counts = count_parameters(net)
        row = {"method": label, "trainable": counts["trainable"], "total": counts["total"],
               "trainable %": counts["percent"]}
        start = time.perf_counter()
        fit(net, train, num_steps=num_steps, lr=lr, progress=progress, **fit_options)
        seconds = time.perf_counter() - start
        value = score(net)
        if measure:  # after evaluation: a trial step in train mode moves BatchNorm statistics
            batch = next(iter(train))
            memory = memory_report(net, batch, lr=lr)
            row.update({part: memory[part] for part in MEMORY_PARTS})
            row["step ms"] = 1000 * time_step(net, batch, lr=lr, num_steps=3, warmup=1)
        row.update({metric: value, "seconds": seconds, "wall seconds": time.perf_counter() - wall})
        rows.append(row)
        del net
    df = pd.DataFrame(rows)
    df.attrs.update(task=task, metric=metric, skipped=skipped)
    return df


def default_budget(task: str) -> dict:
    """``compare``'s budget options for ``task`` (``num_steps``, ``batch_size``, ``sizes``, ``labels_per_class``),
    shrunk in FAST mode. Classroom mode: every method of ``sentiment`` runs in about 5 minutes on 2 CPU cores."""
    _check_task(task)
    fast_sizes = {"sentiment": {"train": 64, "validation": 4, "test": 32}, "digits": None,
                  "cells": {"validation": 4, "test": 40}, "instructions": {"train": 64, "validation": 4, "test": 16}}
    sizes = {"sentiment": None, "digits": None, "cells": None, "instructions": {"test": 120}}
    return {"num_steps": pick(DEFAULT_STEPS[task], 3), "batch_size": pick(16, 8), "sizes": pick(sizes[task],
            fast_sizes[task]), "labels_per_class": pick(10, 2)}


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """``compare``'s table for reading: memory in MB (weights, gradients, optimizer, activations), rounded."""
    metric = df.attrs.get("metric", "test accuracy")
    out = df[["method", "trainable", "total"]].copy()
    out["trainable %"] = df["trainable %"].round(3)
    if "gradients" in df:
        mb = 1e6
        out["weights MB"] = ((df["weights_trainable"] + df["weights_frozen"] + df["buffers"]) / mb).round(1)
        out["gradients MB"] = (df["gradients"] / mb).round(2)
        out["optimizer MB"] = (df["optimizer_state"] / mb).round(2)
        out["activations MB"] = (df["activations"] / mb).round(1)
        out["step ms"] = df["step ms"].round(0).astype(int)
    out[metric] = df[metric].round(3)
    out["seconds"] = df["seconds"].round(1)
    out["wall seconds"] = df["wall seconds"].round(1)
    return out


def rank_sweep(ranks: list[int], alphas: list[float] | None = None, *, targets: list[str] | str | None = None,
               lr: float = 1e-3, **kwargs) -> pd.DataFrame:
    """LoRA at several ranks on one task: ``compare`` with one run per (r, alpha), plus columns ``r`` and ``alpha``.

    ``alphas`` gives one ``lora_alpha`` per rank (default ``2 * r``, so scaling = alpha / r stays 2
    and only the rank changes). ``targets`` and ``lr`` apply to every run; ``kwargs`` go to
    ``compare`` (``num_steps``, ``batch_size``, ``sizes``, ...). Trainable parameters grow linearly
    in r: each adapted (out, in) layer adds r * (in + out).
    """
    if isinstance(ranks, int) or not ranks:
        raise ValueError(f"ranks must be a non-empty list of ranks, e.g. [1, 4, 16], got {ranks!r}")
    alphas = [2 * r for r in ranks] if alphas is None else list(alphas)
    if len(alphas) != len(ranks):
        raise ValueError(f"give one alpha per rank: {len(ranks)} ranks but {len(alphas)} alphas")
    runs = {f"r={r} alpha={alpha:g}": {"method": "lora", "lr": lr, "r": r, "lora_alpha": alpha, "targets": targets}
            for r, alpha in zip(ranks, alphas)}
    if len(runs) != len(ranks):
        raise ValueError(f"each (r, alpha) pair must appear once, got ranks {ranks} and alphas {alphas}")
    kwargs.setdefault("measure", False)
    df = compare(runs, **kwargs)
    df.insert(1, "r", list(ranks))
    df.insert(2, "alpha", alphas)
    return df
