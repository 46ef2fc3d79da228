"""Run several methods on one task under one budget, over several seeds, and tabulate what each costs and reaches.

For one seed, every method gets a fresh copy of the same pretrained model (same new head), the
same training data in the same batch order and the same number of optimizer steps; only the
method and its learning rate differ. A new classification head trains in full for every method
(``modules_to_save``), so the comparison is about how each method adapts the pretrained body.
Seed ``s`` fixes the head's initialisation, the training data drawn, the batch order and the
method's own initialisation, the same for every method: seed 0 of LoRA and seed 0 of IA3 see the
same batches. A ranking needs several seeds (``seeds=[0, 1, 2]``): ``summarize`` gives each
method's mean, spread and range, and ``verdict`` says whether two methods' ranges separate.

Tasks (``TASKS``; the model each one fine-tunes in brackets):

* ``"sentiment"`` (MiniLM, a 22.7M-parameter BERT): positive or negative review, test accuracy
  on adjectives never seen in training (``ftlab.tasks.sentiment``);
* ``"digits"`` (the glyph-pretrained ResNet-18): scikit-learn's handwritten digits with
  ``labels_per_class`` training images per class (``ftlab.tasks.images.make_digits``);
* ``"cells"`` (the same ResNet-18): synthetic microscopy, normal or abnormal cell, with
  ``labels_per_class`` training images per class (``ftlab.tasks.images.make_cells``);
* ``"instructions"`` (the tiny 4.0M-parameter GPT-2): supervised fine-tuning on instructions,
  greedy exact match on held-out ones (``ftlab.align.sft``).

Every run also reports the same metric on the task's validation split, which is not the test
split: learning rates are chosen on it (``ftlab.sweep.tune``), never on the test set.

Learning rates come from ``learning_rates.json`` beside this file (written by
``python -m ftlab tune``); every other option of a method (its rank, ...) is set in
``METHOD_OPTIONS`` below. ``TASK_SETTINGS`` joins the two.

Not every method fits every model: prompt and prefix tuning need a transformer, QLoRA's
default targets are linear layers (a ResNet has only convolutions and its head).
``applicable_methods`` finds out by applying each method to a copy of the task's model.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pandas as pd

from ftlab.config import mode as current_mode
from ftlab.config import seed_everything
from ftlab.measure import MEMORY_PARTS, count_parameters, memory_report, time_step
from ftlab.methods import apply, available
from ftlab.train import evaluate, fit
from ftlab.validate import check_choice, check_positive_int

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
IMAGE_TASKS = ("digits", "cells")
# the offline checkpoint each task fine-tunes: (family, name) of ftlab.zoo.OFFLINE
CHECKPOINTS = {"sentiment": ("bert", "minilm"), "digits": ("resnet", "glyphs"), "cells": ("resnet", "glyphs"),
               "instructions": ("gpt2", "tiny")}

# Options of each method other than its learning rate, per task. ``freeze`` trains the top layer group (BERT's
# pooler and classifier, the ResNet's fc); on GPT-2 that would be ln_f alone (512 parameters), so there it trains
# the last block too. The ResNet tasks have no QLoRA, prefix or prompt tuning (see ``applicable_methods``).
_TEXT_OPTIONS = {"full": {}, "freeze": {}, "lora": {"r": 8}, "dora": {"r": 8}, "qlora": {"r": 8}, "loha": {"r": 8},
                 "lokr": {"r": 8}, "ia3": {}, "bitfit": {}, "adapter": {}, "prefix": {}, "prompt": {}}
_IMAGE_OPTIONS = {name: options for name, options in _TEXT_OPTIONS.items() if name not in ("qlora", "prefix", "prompt")}
METHOD_OPTIONS: dict[str, dict[str, dict]] = {
    "sentiment": _TEXT_OPTIONS, "digits": _IMAGE_OPTIONS, "cells": _IMAGE_OPTIONS,
    "instructions": {**_TEXT_OPTIONS, "freeze": {"trainable_groups": 2}},
}
LEARNING_RATES_FILE = Path(__file__).with_name("learning_rates.json")


def load_learning_rates(path: str | Path = LEARNING_RATES_FILE) -> dict[str, dict[str, float]]:
    """``{task: {method: lr}}`` from a learning-rates file (default: the one ``compare`` uses)."""
    stored = json.loads(Path(path).read_text())
    return {task: {name: entry["lr"] for name, entry in stored[task].items()} for task in TASKS if task in stored}


def task_settings(learning_rates: dict[str, dict[str, float]]) -> dict[str, dict[str, dict]]:
    """``{task: {method: {"lr": ..., **METHOD_OPTIONS}}}`` for the methods that have a learning rate."""
    return {task: {name: {"lr": lr, **METHOD_OPTIONS[task].get(name, {})} for name, lr in rates.items()}
            for task, rates in learning_rates.items()}


TASK_SETTINGS: dict[str, dict[str, dict]] = task_settings(load_learning_rates())
DEFAULT_STEPS = {"sentiment": 80, "digits": 60, "cells": 60, "instructions": 200}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; compare supports: {', '.join(TASKS)}")


def check_seeds(seeds) -> list[int]:
    """``seeds`` as a list of distinct whole numbers >= 0 (at least one)."""
    if isinstance(seeds, int) or not hasattr(seeds, "__iter__"):
        raise TypeError(f"seeds must be a list of seeds such as [0, 1, 2], got {seeds!r}")
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of whole numbers >= 0, such as [0, 1, 2]; got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"each seed must appear once, got {seeds!r}")
    return seeds


def load_task_model(task: str, model: str | None = None, seed: int = 0):
    """The pretrained model of ``task`` with its new head, and its tokenizer (None for images)."""
    from ftlab.zoo import load_bert, load_gpt2, load_resnet

    _check_task(task)
    if task == "sentiment":
        return load_bert(model or "minilm", num_labels=2, seed=seed)
    if task in IMAGE_TASKS:
        return load_resnet(model or "glyphs", num_classes=10 if task == "digits" else 2, seed=seed), None
    return load_gpt2(model or "tiny", seed=seed)


def apply_method(net, task: str, name: str, options: dict):
    """``ftlab.apply`` with the task's head trained in full; returns the model to train (maybe a wrapper)."""
    head = {} if name in NO_HEAD_OPTION or HEADS[task] is None else {"modules_to_save": HEADS[task]}
    return apply(net, name, **head, **options)


def applicable_methods(task: str, model: str | None = None, seed: int = 0) -> tuple[list[str], dict[str, str]]:
    """``(methods, skipped)``: the methods that apply to ``task``'s model, and ``{method: why not}`` for the rest.

    Found by applying each method (with its ``METHOD_OPTIONS``) to a copy of the model: what
    raises is skipped, with the method's own error message as the reason.
    """
    _check_task(task)
    base, _ = load_task_model(task, model, seed)
    methods, skipped = [], {}
    for name in available():
        try:
            apply_method(copy.deepcopy(base), task, name, METHOD_OPTIONS[task].get(name, {}))
        except (ValueError, TypeError, NotImplementedError) as err:
            skipped[name] = str(err)
            continue
        if name not in TASK_SETTINGS.get(task, {}):
            skipped[name] = f"no learning rate for {name!r} on {task!r} in {LEARNING_RATES_FILE.name}; pass 'lr'"
            continue
        methods.append(name)
    return methods, skipped


def resolve_methods(methods, task: str, model: str | None = None) -> tuple[dict, dict]:
    """``({label: (method, options with "lr")}, skipped)`` for ``compare``'s ``methods`` argument, all checked.

    Raises ValueError for an unknown method, a method that does not apply to the task's model
    (naming those that do), options the method refuses, or a method without a learning rate.
    Each method is applied to a copy of the model here, so nothing fails after training started.
    """
    _check_task(task)
    skipped = {}
    if methods == "all":
        names, skipped = applicable_methods(task, model)
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
        runs[label] = (name, {**TASK_SETTINGS.get(task, {}).get(name, METHOD_OPTIONS[task].get(name, {})), **options})
    base, _ = load_task_model(task, model)
    for name, options in runs.values():
        try:
            apply_method(copy.deepcopy(base), task, name, {k: v for k, v in options.items() if k != "lr"})
        except (ValueError, TypeError) as err:
            fitting, _ = applicable_methods(task, model)
            if name in fitting:  # the method fits the model, its options do not: the method's own message says why
                raise
            raise ValueError(f"method {name!r} does not apply to the {task!r} model: {err}. "
                             f"Methods that apply to {task!r}: {', '.join(fitting)}") from err
        if "lr" not in options:
            known = ", ".join(TASK_SETTINGS.get(task, {}))
            raise ValueError(f"no learning rate for {name!r} on {task!r} (known: {known}); pass 'lr' for it")
    return runs, skipped


def first_balanced(examples: list, n: int, key) -> list:
    """The first ``n`` of ``examples`` in order, taking the same number from each class ``key(example)``
    (the first classes one more when ``n`` does not divide evenly). Raises ValueError when there are too few."""
    counts = {}
    for example in examples:
        counts[key(example)] = counts.get(key(example), 0) + 1
    quota = {c: n // len(counts) + (i < n % len(counts)) for i, c in enumerate(counts)}
    short = [c for c in counts if quota[c] > counts[c]]
    if short:
        raise ValueError(f"train_examples={n} needs {quota[short[0]]} examples of class {short[0]!r}, the training "
                         f"set has {counts[short[0]]}; ask for at most {len(counts) * min(counts.values())} "
                         f"or raise sizes['train']")
    chosen = []
    for example in examples:
        if quota[key(example)] > 0:
            quota[key(example)] -= 1
            chosen.append(example)
    return chosen


def task_data(task: str, tokenizer, *, seed: int, sizes: dict | None = None, batch_size: int = 16,
              labels_per_class: int = 10, train_examples: int | None = None, max_length: int | None = None) -> dict:
    """The data of one seed of ``task``.

    Returns ``{"train": () -> fresh shuffled loader, "test": model -> metric, "validation":
    model -> metric, "validation_loss": model -> mean loss, "train_examples": int, "labels_per_class":
    int or None}``; both metrics are in [0, 1] (accuracy, or exact match for ``instructions``). The
    validation loss (cross-entropy of the labels, or of the responses for ``instructions``) still
    ranks models when the validation metric saturates (every rate at 1.000). A fresh loader per run gives
    every method the same batch order (a loader's shuffling generator advances as it is read).
    ``train_examples`` (text tasks) keeps the first that many training examples, balanced over
    classes (sentiment) or instruction kinds, so validation and test stay the same for every size;
    image tasks take ``labels_per_class`` instead.
    """
    _check_task(task)
    if train_examples is not None:
        if task in IMAGE_TASKS:
            raise ValueError(f"train_examples is for the text tasks; {task!r} takes labels_per_class "
                             f"(training images per class)")
        check_positive_int("train_examples", train_examples)
    if task == "sentiment":
        from ftlab.tasks import text_loader
        from ftlab.tasks.sentiment import make_sentiment

        data = make_sentiment(seed=seed, sizes=sizes)
        train = data["train"] if train_examples is None else first_balanced(data["train"], train_examples,
                                                                            key=lambda e: e[1])
        test, validation = text_loader(data["test"], tokenizer, batch_size=64), \
            text_loader(data["validation"], tokenizer, batch_size=64)
        return {"train": lambda: text_loader(train, tokenizer, batch_size=batch_size, shuffle=True, seed=seed),
                "test": lambda net: evaluate(net, test)["accuracy"],
                "validation": lambda net: evaluate(net, validation)["accuracy"],
                "validation_loss": lambda net: evaluate(net, validation)["loss"],
                "train_examples": len(train), "labels_per_class": None}
    if task in IMAGE_TASKS:
        from ftlab.tasks.images import image_loader, make_cells, make_digits

        check_positive_int("labels_per_class", labels_per_class)
        if task == "digits":
            data = make_digits(labels_per_class, seed=seed)
        else:
            data = make_cells(seed, sizes={**(sizes or {}), "train": 2 * labels_per_class})
        train = data["train"]
        test, validation = image_loader(data["test"], batch_size=250), image_loader(data["validation"], batch_size=250)
        return {"train": lambda: image_loader(train, batch_size=min(batch_size, len(train)), shuffle=True, seed=seed),
                "test": lambda net: evaluate(net, test)["accuracy"],
                "validation": lambda net: evaluate(net, validation)["accuracy"],
                "validation_loss": lambda net: evaluate(net, validation)["loss"],
                "train_examples": len(train), "labels_per_class": labels_per_class}
    from ftlab.align.sft import evaluate_exact_match, sft_loader
    from ftlab.tasks.instructions import make_instructions

    data = make_instructions(seed, sizes=sizes)
    validation = sft_loader(data["validation"], tokenizer, max_length=max_length, batch_size=64)
    train = data["train"] if train_examples is None else first_balanced(data["train"], train_examples,
                                                                        key=lambda e: e["kind"])
    return {"train": lambda: sft_loader(train, tokenizer, max_length=max_length, batch_size=batch_size, shuffle=True,
                                        seed=seed),
            "test": lambda net: evaluate_exact_match(net, tokenizer, data["test"])["all"],
            "validation": lambda net: evaluate_exact_match(net, tokenizer, data["validation"])["all"],
            "validation_loss": lambda net: evaluate(net, validation)["loss"],
            "train_examples": len(train), "labels_per_class": None}


def fit_options(task: str, num_steps: int) -> dict:
    """``fit``'s options for ``task`` beyond the learning rate: GPT-2 (instructions) warms up over 5% of the
    steps, then decays (cosine); the other tasks train at a constant rate."""
    return {"warmup_steps": max(1, num_steps // 20)} if task == "instructions" else {}


def run_method(base, task: str, name: str, options: dict, data: dict, *, seed: int, num_steps: list[int],
               measure: bool = False, progress: bool = False) -> list[dict]:
    """Fine-tune a fresh copy of ``base`` with method ``name`` and return one row per budget in ``num_steps``.

    ``options`` hold the method's options and its ``lr``; ``data`` is ``task_data``'s. Each row:
    ``num_steps``, ``lr``, ``trainable``, ``total``, ``trainable %``, ``value`` (test metric),
    ``validation``, ``seconds`` (training time to that step, evaluations excluded); with ``measure``
    the last row also gets the bytes of one step (``MEMORY_PARTS``) and ``step ms``. At a constant
    learning rate the model after k steps of a longer run is the model a k-step run would give (same
    batches, same optimizer state), so all budgets share one run, scored at each budget; with a
    schedule over the whole run (``fit_options``) every budget trains on its own.
    """
    budgets = sorted(set(num_steps))
    options = dict(options)
    lr = options.pop("lr")
    runs = [budgets] if not fit_options(task, budgets[-1]) else [[steps] for steps in budgets]
    rows = []
    for run in runs:
        seed_everything(seed)
        net = apply_method(copy.deepcopy(base), task, name, options)
        counts = count_parameters(net)
        clock = {"start": time.perf_counter(), "paused": 0.0}

        def score(model, steps: int, counts=counts, clock=clock) -> None:  # bound to this run's counts and clock
            pause = time.perf_counter()
            rows.append({"num_steps": steps, "lr": lr, "trainable": counts["trainable"], "total": counts["total"],
                         "trainable %": counts["percent"], "value": data["test"](model),
                         "validation": data["validation"](model),
                         "validation_loss": data["validation_loss"](model),
                         "seconds": pause - clock["start"] - clock["paused"]})
            clock["paused"] += time.perf_counter() - pause

        def on_step(step: int, model, optimizer, run=run) -> None:  # before step `step`: `step` steps are done
            if step in run[:-1]:
                score(model, step)

        fit(net, data["train"](), num_steps=run[-1], lr=lr, progress=progress,
            on_step=on_step if len(run) > 1 else None, **fit_options(task, run[-1]))
        score(net, run[-1])
        if measure:  # after evaluation: a trial step in train mode moves BatchNorm statistics
            batch = next(iter(data["train"]()))
            memory = memory_report(net, batch, lr=lr)
            rows[-1].update({part: memory[part] for part in MEMORY_PARTS})
            rows[-1]["step ms"] = 1000 * time_step(net, batch, lr=lr, num_steps=3, warmup=1)
    return rows


def compare(methods: str | list[str] | dict[str, dict], task: str = "sentiment", *, num_steps: int = 80,
            batch_size: int = 16, sizes: dict | None = None, labels_per_class: int = 10,
            train_examples: int | None = None, model: str | None = None, seeds=(0,), measure: bool = True,
            progress: bool = False) -> pd.DataFrame:
    """Fine-tune one fresh model per method and seed on ``task``; return one row per method and seed.

    ``methods``: ``"all"`` (every method that applies to the task's model, see
    ``applicable_methods``), a list of method names (each run with ``TASK_SETTINGS[task][name]``),
    or a dict mapping a label to options: ``{"lora r=2": {"method": "lora", "lr": 1e-3, "r": 2}}``
    (``method`` defaults to the label, ``lr`` to the method's chosen rate). ``seeds``: e.g.
    ``[0, 1, 2]``; seed s is the same data, head and batch order for every method. ``sizes`` sets
    split sizes, e.g. ``{"train": 400, "test": 120}``; ``labels_per_class``: training images per
    class of the image tasks; ``train_examples``: the first that many training examples of a text
    task (see ``task_data``). Everything is checked before any training starts.

    Columns: ``method`` (the label), ``seed``, ``lr``, ``trainable``, ``total``, ``trainable %``;
    with ``measure`` the bytes of one training step (``MEMORY_PARTS``, from
    ``ftlab.measure.memory_report``, AdamW) and ``step ms`` (median of ``ftlab.measure.time_step``);
    then the task's metric (``METRICS``: ``test accuracy`` or ``exact match``) after ``num_steps``
    steps, ``validation`` (the same metric on the validation split), ``seconds`` (training time)
    and ``wall seconds`` (the run's whole time: copy, apply, train, evaluate, measure). Rows are
    ordered by method, then by seed in the order given. ``df.attrs`` holds ``task``, ``metric``, ``skipped`` (``{method:
    reason}`` for ``"all"``) and the budget (``num_steps``, ``train_examples``, ``labels_per_class``).
    """
    _check_task(task)
    seeds = check_seeds(seeds)
    check_positive_int("num_steps", num_steps)
    runs, skipped = resolve_methods(methods, task, model)
    metric = METRICS[task]
    rows = []
    for seed in seeds:
        base, tokenizer = load_task_model(task, model, seed)
        data = task_data(task, tokenizer, seed=seed, sizes=sizes, batch_size=batch_size,
                         labels_per_class=labels_per_class, train_examples=train_examples,
                         max_length=base.config.n_positions if task == "instructions" else None)
        for label, (name, options) in runs.items():
            wall = time.perf_counter()
            (row,) = run_method(base, task, name, options, data, seed=seed, num_steps=[num_steps], measure=measure,
                                progress=progress)
            row[metric] = row.pop("value")
            row.update({"validation": row.pop("validation"), "seconds": row.pop("seconds"),
                        "wall seconds": time.perf_counter() - wall})
            rows.append({"method": label, "seed": seed, **{k: v for k, v in row.items() if k != "num_steps"}})
    order = {label: i for i, label in enumerate(runs)}
    df = pd.DataFrame(rows).sort_values("method", key=lambda col: col.map(order), kind="stable", ignore_index=True)
    df.attrs.update(task=task, metric=metric, skipped=skipped, num_steps=num_steps,
                    train_examples=data["train_examples"], labels_per_class=data["labels_per_class"])
    return df


def default_budget(task: str, mode: str | None = None) -> dict:
    """``compare``'s budget options for ``task`` (``num_steps``, ``batch_size``, ``sizes``, ``labels_per_class``)
    in ``mode`` (``"classroom"`` or ``"FAST"``; default: the current run mode, ``ftlab.config.mode()``).
    Classroom mode: every method of ``sentiment`` runs in about 5 minutes on 2 CPU cores."""
    _check_task(task)
    fast = check_choice("mode", mode or current_mode(), ("classroom", "FAST")) == "FAST"
    fast_sizes = {"sentiment": {"train": 64, "validation": 4, "test": 32}, "digits": None,
                  "cells": {"validation": 4, "test": 40}, "instructions": {"train": 64, "validation": 4, "test": 16}}
    sizes = {"sentiment": None, "digits": None, "cells": None, "instructions": {"test": 120}}
    if fast:
        return {"num_steps": 3, "batch_size": 8, "sizes": fast_sizes[task], "labels_per_class": 2}
    return {"num_steps": DEFAULT_STEPS[task], "batch_size": 16, "sizes": sizes[task], "labels_per_class": 10}


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """``compare``'s table for reading: memory in MB (weights, gradients, optimizer, activations), rounded."""
    metric = df.attrs.get("metric", "test accuracy")
    out = df[["method", "seed", "trainable", "total"]].copy()
    out["trainable %"] = df["trainable %"].round(3)
    out["lr"] = df["lr"]
    if "gradients" in df:
        mb = 1e6
        out["weights MB"] = ((df["weights_trainable"] + df["weights_frozen"] + df["buffers"]) / mb).round(1)
        out["gradients MB"] = (df["gradients"] / mb).round(2)
        out["optimizer MB"] = (df["optimizer_state"] / mb).round(2)
        out["activations MB"] = (df["activations"] / mb).round(1)
        out["step ms"] = df["step ms"].round(0).astype(int)
    out[metric] = df[metric].round(3)
    out["validation"] = df["validation"].round(3)
    out["seconds"] = df["seconds"].round(1)
    out["wall seconds"] = df["wall seconds"].round(1)
    return out


# columns that name a setting rather than a result: ``summarize`` keeps apart the rows that differ in one of them
GROUP_COLUMNS = ("task", "method", "model", "strategy", "training", "setting", "r", "alpha", "num_steps",
                 "train_examples", "labels_per_class", "lr")


def summarize(df: pd.DataFrame, value: str | None = None, by: list[str] | None = None) -> pd.DataFrame:
    """Mean, standard deviation (over seeds, n - 1 in the denominator), min, max and n of ``value`` per group.

    ``value``: a column of ``df``; default ``df.attrs["metric"]`` (``compare``'s table) or ``"value"``
    (the reference results of ``ftlab.sweep``). ``by``: default every column of ``GROUP_COLUMNS`` that
    ``df`` has (method, budget, rank, learning rate, ...), in that order. Groups keep the order in
    which they first appear. With one seed, ``std`` is NaN: one run says nothing about the spread.
    """
    value = value or df.attrs.get("metric") or "value"
    if value not in df:
        raise ValueError(f"no column {value!r} to summarize; columns: {', '.join(map(str, df.columns))}")
    by = list(by) if by is not None else [c for c in GROUP_COLUMNS if c in df]
    missing = [c for c in by if c not in df]
    if not by or missing:
        columns = ", ".join(map(str, df.columns))
        raise ValueError(f"cannot group by {missing or by}: give columns of the table ({columns})")
    groups = df.groupby(by, sort=False, dropna=False)[value]
    table = groups.agg(["mean", "std", "min", "max", "count"]).rename(columns={"count": "n"}).reset_index()
    table.attrs.update(df.attrs, value=value)
    return table


def spread_table(df: pd.DataFrame, values: list[str], by: str = "method", digits: int = 3) -> pd.DataFrame:
    """``"mean (min to max)"`` over the seeds of each of ``values``, one row per ``by`` value in the order of ``df``,
    one column per value: ``summarize`` for reading."""
    table = {}
    for value in values:
        s = summarize(df, value, by=[by]).set_index(by)
        table[value] = [f"{m:.{digits}f} ({lo:.{digits}f} to {hi:.{digits}f})"
                        for m, lo, hi in zip(s["mean"], s["min"], s["max"])]
    return pd.DataFrame(table, index=s.index)


def verdict(df: pd.DataFrame, a: str, b: str, value: str | None = None, by: str = "method",
            higher_is_better: bool = True) -> str:
    """``"a beats b"`` when every seed of ``a`` scored above every seed of ``b`` (their ranges separate),
    ``"b beats a"`` the other way round, else ``"a and b are within noise"``. ``higher_is_better=False`` for
    values such as a loss or a perplexity: then "beats" means every seed scored below.

    ``df``: one row per run (``compare``'s table, or rows of one budget of a sweep); ``value`` as in
    ``summarize``. A strict test on purpose: with 3 seeds, two methods whose ranges overlap have not
    been told apart.
    """
    value = value or df.attrs.get("metric") or "value"
    sign = 1 if higher_is_better else -1
    runs = {name: sign * df.loc[df[by] == name, value] for name in (a, b)}
    empty = [name for name, values in runs.items() if values.empty]
    if empty:
        raise ValueError(f"no rows with {by} == {empty[0]!r}; {by} values: {', '.join(map(str, df[by].unique()))}")
    if runs[a].min() > runs[b].max():
        return f"{a} beats {b}"
    if runs[b].min() > runs[a].max():
        return f"{b} beats {a}"
    return f"{a} and {b} are within noise"


def rank_sweep(ranks: list[int], alphas: list[float] | None = None, *, targets: list[str] | str | None = None,
               lr: float | None = None, **kwargs) -> pd.DataFrame:
    """LoRA at several ranks on one task: ``compare`` with one run per (r, alpha) and seed, plus ``r`` and ``alpha``.

    ``alphas`` gives one ``lora_alpha`` per rank (default ``2 * r``, so scaling = alpha / r stays 2
    and only the rank changes). ``targets`` and ``lr`` apply to every run (default ``lr``: LoRA's
    chosen rate for the task, ``TASK_SETTINGS``); ``kwargs`` go to
    ``compare`` (``task``, ``seeds``, ``num_steps``, ``batch_size``, ``sizes``, ...). Trainable parameters grow
    linearly in r: each adapted (out, in) layer adds r * (in + out). ``summarize(df)`` gives the
    spread over seeds per rank.
    """
    if isinstance(ranks, int) or not ranks:
        raise ValueError(f"ranks must be a non-empty list of ranks, e.g. [1, 4, 16], got {ranks!r}")
    alphas = [2 * r for r in ranks] if alphas is None else list(alphas)
    if len(alphas) != len(ranks):
        raise ValueError(f"give one alpha per rank: {len(ranks)} ranks but {len(alphas)} alphas")
    pairs = {f"r={r} alpha={alpha:g}": (r, alpha) for r, alpha in zip(ranks, alphas)}
    if len(pairs) != len(ranks):
        raise ValueError(f"each (r, alpha) pair must appear once, got ranks {ranks} and alphas {alphas}")
    chosen = {} if lr is None else {"lr": lr}  # without lr, compare takes LoRA's rate for the task
    runs = {label: {"method": "lora", "r": r, "lora_alpha": alpha, "targets": targets, **chosen}
            for label, (r, alpha) in pairs.items()}
    kwargs.setdefault("measure", False)
    df = compare(runs, **kwargs)
    df.insert(1, "r", [pairs[label][0] for label in df["method"]])
    df.insert(2, "alpha", [pairs[label][1] for label in df["method"]])
    return df
