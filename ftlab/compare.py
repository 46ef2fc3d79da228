"""Run several methods on one task under one budget, and tabulate what each costs and reaches.

Every method gets a fresh copy of the same pretrained model (same seed, same new head), the
same batches and the same number of optimizer steps; only the method and its learning rate
differ. The new classification head trains in full for every method (``modules_to_save``),
so the comparison is about how each method adapts the encoder.
"""
from __future__ import annotations

import time

import pandas as pd

from ftlab.config import seed_everything
from ftlab.measure import count_parameters
from ftlab.methods import apply
from ftlab.tasks import text_loader
from ftlab.tasks.sentiment import make_sentiment
from ftlab.train import evaluate, fit
from ftlab.zoo import load_bert

# Learning rates measured on sentiment (MiniLM, 150 steps, batch 16, classifier trained in full).
SETTINGS: dict[str, dict] = {
    "lora": {"lr": 1e-3, "r": 8},
    "dora": {"lr": 1e-3, "r": 8},
    "loha": {"lr": 1e-2, "r": 8},
    "lokr": {"lr": 3e-3, "r": 8},
    "ia3": {"lr": 1e-2},
    "bitfit": {"lr": 3e-3},
}
TASKS = ("sentiment",)


def compare(methods: list[str] | dict[str, dict], task: str = "sentiment", *, num_steps: int = 80,
            batch_size: int = 16, sizes: dict | None = None, model: str = "minilm", seed: int = 0,
            progress: bool = False) -> pd.DataFrame:
    """Fine-tune one fresh model per method on ``task`` and return one row per method.

    ``methods``: a list of method names (each run with ``SETTINGS[name]``), or a dict mapping a
    label to options: ``{"lora r=2": {"method": "lora", "lr": 1e-3, "r": 2}, ...}`` (``method``
    defaults to the label, ``lr`` to the method's ``SETTINGS`` rate). ``sizes`` sets the split
    sizes, e.g. ``{"train": 400, "test": 120}``.

    Columns: ``method`` (the label), ``trainable``, ``total``, ``trainable %``, ``test accuracy``
    (after ``num_steps`` steps) and ``seconds`` (training time).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; compare supports: {', '.join(TASKS)}")
    if isinstance(methods, (list, tuple)):
        methods = {name: {} for name in methods}
    if not isinstance(methods, dict) or not methods:
        raise TypeError("methods must be a non-empty list of method names or a dict of label -> options")
    runs = {}
    for label, options in methods.items():
        options = dict(options)
        name = options.pop("method", label)
        if name not in SETTINGS and "lr" not in options:
            raise ValueError(f"no measured settings for {name!r} (known: {', '.join(SETTINGS)}); pass 'lr' for it")
        runs[label] = (name, {**SETTINGS.get(name, {}), **options})  # validated before any training

    data = make_sentiment(seed=seed, sizes=sizes)
    rows = []
    for label, (name, options) in runs.items():
        lr = options.pop("lr")
        seed_everything(seed)
        net, tokenizer = load_bert(model, num_labels=2, seed=seed)
        apply(net, name, modules_to_save=["classifier"], **options)
        counts = count_parameters(net)
        train_loader = text_loader(data["train"], tokenizer, batch_size=batch_size, shuffle=True, seed=seed)
        test_loader = text_loader(data["test"], tokenizer, batch_size=64)
        start = time.perf_counter()
        fit(net, train_loader, num_steps=num_steps, lr=lr, progress=progress)
        seconds = time.perf_counter() - start
        rows.append({"method": label, "trainable": counts["trainable"], "total": counts["total"],
                     "trainable %": counts["percent"], "test accuracy": evaluate(net, test_loader)["accuracy"],
                     "seconds": seconds})
    return pd.DataFrame(rows)


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
    df = compare(runs, **kwargs)
    df.insert(1, "r", list(ranks))
    df.insert(2, "alpha", alphas)
    return df
