"""Transfer learning on few-label digits, measured over seeds: does pretraining pay (notebook 01), and how much of
the pretrained network should train (notebook 02)?

``compare_pretrained``: the glyph-pretrained and a randomly initialised ResNet-18, each with a new
10-class head (``ftlab.zoo.load_resnet``), trained in full with AdamW by ``ftlab.train.fit`` for the
same number of steps, with the same learning-rate search, on ``make_digits(labels_per_class=k,
seed=s)``. Three claims are measured:

* less data: test accuracy against labels per class (mean and range over seeds);
* faster convergence: the first step at which validation accuracy reaches 90% of its final value;
* generalisation: accuracy on the shifted test set (rotated, noisier digits).

``compare_freezing``: the pretrained ResNet-18 fine-tuned with each of ``FREEZE_RECIPES`` (head
only, last block, gradual unfreezing, discriminative rates, ULMFiT's combination, full, and two
BatchNorm variants of head-only training) under one budget, one row per recipe and seed.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
import time
from pathlib import Path

import pandas as pd
import torch

from ftlab import sweep
from ftlab.compare import check_seeds
from ftlab.compare import summarize as summarize_runs
from ftlab.config import mode, seed_everything
from ftlab.measure import count_parameters
from ftlab.methods.freeze import discriminative_param_groups, freeze_to, gradual_unfreezing
from ftlab.progress import progress as progress_bar
from ftlab.tasks.images import image_loader, make_digits
from ftlab.train import evaluate, fit
from ftlab.validate import check_choice
from ftlab.zoo import load_resnet


def steps_to_fraction(eval_steps: list[int], accuracies: list[float], fraction: float = 0.9) -> int:
    """The first evaluated step whose accuracy is at least ``fraction`` of the final accuracy."""
    if not eval_steps or len(eval_steps) != len(accuracies):
        raise ValueError("need one accuracy per evaluated step, and at least one")
    target = fraction * accuracies[-1]
    return next(step for step, acc in zip(eval_steps, accuracies) if acc >= target)


def finetune_digits(model_name: str, labels_per_class: int | None, *, seed: int = 0, lr: float = 1e-3,
                    num_steps: int = 30, batch_size: int = 32, eval_every: int = 5) -> dict:
    """Fine-tune ``load_resnet(model_name, num_classes=10, seed=seed)`` on digits; return one result row.

    The row: ``model``, ``labels_per_class``, ``seed``, ``lr``, final ``validation``, ``test`` and
    ``test_shifted`` accuracy, ``steps_to_90`` and the validation ``curve`` ``[(step, accuracy), ...]``
    (evaluated every ``eval_every`` steps). Batches hold ``min(batch_size, training examples)`` images.
    """
    data = make_digits(labels_per_class, seed=seed)
    model = load_resnet(model_name, num_classes=10, seed=seed)
    seed_everything(seed)
    train = image_loader(data["train"], batch_size=min(batch_size, len(data["train"])), shuffle=True, seed=seed)
    history = fit(model, train, num_steps=num_steps, lr=lr, eval_data=image_loader(data["validation"], batch_size=300),
                  eval_every=eval_every, progress=False)
    curve = [(step, result["accuracy"]) for step, result in zip(history["eval_step"], history["eval"])]
    return {
        "model": model_name,
        "labels_per_class": labels_per_class,
        "seed": seed,
        "lr": lr,
        "validation": curve[-1][1],
        "test": evaluate(model, image_loader(data["test"], batch_size=250))["accuracy"],
        "test_shifted": evaluate(model, image_loader(data["test_shifted"], batch_size=250))["accuracy"],
        "steps_to_90": steps_to_fraction(*zip(*curve)) if curve else None,
        "curve": curve,
    }


def compare_pretrained(labels_per_class=(1, 2, 5, 10, 20), seeds=(0, 1, 2), *, pretrained: str = "glyphs",
                       num_steps: int = 30, lrs=(3e-4, 1e-3, 3e-3), search_labels_per_class: int = 5,
                       batch_size: int = 32, eval_every: int = 5, progress: bool = True) -> dict:
    """Pretrained (``pretrained``) against ``"scratch"`` on few-label digits, under one budget.

    1. Learning-rate search, the same for both models: each ``lr`` in ``lrs`` is tried at
       ``search_labels_per_class`` labels per class with the first seed; the one with the
       best validation accuracy is kept for that model.
    2. Each model is fine-tuned with its learning rate for every ``labels_per_class`` and seed
       (``finetune_digits``, ``num_steps`` steps each).

    Returns ``{"lr": {model: lr}, "search": DataFrame, "runs": DataFrame, "summary": DataFrame,
    "spread": DataFrame}``: ``runs`` has one row per (model, labels_per_class, seed); ``summary``
    (``summarize``) the means over seeds, pretrained next to scratch; ``spread`` the test accuracy's
    mean, std, min, max and n per (model, labels_per_class) (``ftlab.compare.summarize``).
    """
    if not labels_per_class or not seeds or not lrs:
        raise ValueError("labels_per_class, seeds and lrs each need at least one value")
    seeds = check_seeds(seeds)
    models = [pretrained, "scratch"]
    jobs = [(m, search_labels_per_class, seeds[0], lr) for m in models for lr in lrs]
    bar = progress_bar(total=len(jobs) + len(models) * len(labels_per_class) * len(seeds), disable=not progress,
                       desc="compare_pretrained", unit="runs")
    options = {"num_steps": num_steps, "batch_size": batch_size, "eval_every": eval_every}

    search = []
    for model_name, k, seed, lr in jobs:
        search.append(finetune_digits(model_name, k, seed=seed, lr=lr, **options))
        bar.update()
    search = pd.DataFrame(search)
    best = {m: float(search[search.model == m].sort_values("validation", ascending=False, kind="stable").lr.iloc[0])
            for m in models}

    runs = []
    for model_name in models:
        for k in labels_per_class:
            for seed in seeds:
                runs.append(finetune_digits(model_name, k, seed=seed, lr=best[model_name], **options))
                bar.update()
    bar.close()
    runs = pd.DataFrame(runs)
    return {"lr": best, "search": search, "runs": runs, "summary": summarize(runs, pretrained),
            "spread": summarize_runs(runs, "test", by=["model", "labels_per_class"])}


def summarize(runs: pd.DataFrame, pretrained: str = "glyphs") -> pd.DataFrame:
    """Means over seeds per labels_per_class: test, shifted-test accuracy and steps to 90%, both models.

    Columns ``test_<model>``, ``test_shifted_<model>``, ``steps_to_90_<model>`` for ``pretrained``
    and ``scratch``, and ``gain``: pretrained minus scratch test accuracy, in percentage points.
    """
    means = runs.groupby(["labels_per_class", "model"])[["test", "test_shifted", "steps_to_90"]].mean().unstack("model")
    table = pd.DataFrame(index=means.index)
    for metric in ("test", "test_shifted", "steps_to_90"):
        for model_name in (pretrained, "scratch"):
            table[f"{metric}_{model_name}"] = means[(metric, model_name)]
    table["gain"] = 100 * (table[f"test_{pretrained}"] - table["test_scratch"])
    return table


# ---------------------------------------------------------------- how much should train? (notebook 02)
# A recipe prepares a freshly loaded model: it freezes what must not train and returns
# (optimizer or None for fit's AdamW over the trainable parameters, on_step callback or None).


def head_only(model, lr: float, num_steps: int):
    """Train ``fc`` alone: a linear classifier on frozen features (BatchNorm statistics still adapt)."""
    freeze_to(model, -1)
    return None, None


def last_block(model, lr: float, num_steps: int):
    """Train ``layer4`` and ``fc``."""
    freeze_to(model, -2)
    return None, None


def gradual(model, lr: float, num_steps: int):
    """ULMFiT's gradual unfreezing: the head first, one more group every ``num_steps // 6`` steps, one rate.
    The optimizer holds every parameter, so that a group unfrozen later trains (AdamW skips it until then)."""
    freeze_to(model, -1)
    return torch.optim.AdamW(model.parameters(), lr=lr), gradual_unfreezing(model, every=max(1, num_steps // 6))


def discriminative(model, lr: float, num_steps: int):
    """Everything trains, the head at ``lr`` and each group below 2.6 times slower (ULMFiT's factor)."""
    return torch.optim.AdamW(discriminative_param_groups(model, lr=lr)), None


def ulmfit(model, lr: float, num_steps: int):
    """ULMFiT's recipe: gradual unfreezing with discriminative rates."""
    freeze_to(model, -1)
    return (torch.optim.AdamW(discriminative_param_groups(model, lr=lr)),
            gradual_unfreezing(model, every=max(1, num_steps // 6)))


def full(model, lr: float, num_steps: int):
    """Everything trains at ``lr``."""
    freeze_to(model, 0)
    return None, None


def head_frozen_statistics(model, lr: float, num_steps: int):
    """Head only with the body truly frozen: BatchNorm layers back in eval mode (pretrained statistics) before
    every step, since ``fit`` puts the whole model in train mode."""
    freeze_to(model, -1)

    def batchnorm_eval(step, net, optimizer):
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()

    return None, batchnorm_eval


def head_train_bn(model, lr: float, num_steps: int):
    """Head only plus the affine parameters (gamma, beta) of every BatchNorm layer: fastai's ``train_bn``."""
    freeze_to(model, -1, train_bn=True)
    return None, None


FREEZE_RECIPES = {"head only": head_only, "last block": last_block, "gradual unfreezing": gradual,
                  "discriminative lr": discriminative, "gradual + discriminative": ulmfit, "full": full,
                  "head, BN statistics frozen": head_frozen_statistics, "head + train_bn": head_train_bn}


def compare_freezing(recipes=None, seeds=(0, 1, 2), *, labels_per_class: int | None = None, num_steps: int = 60,
                     lr: float = 1e-3, batch_size: int = 32, progress: bool = False) -> pd.DataFrame:
    """Fine-tune the glyph-pretrained ResNet-18 on digits with each recipe and seed under one budget.

    ``recipes``: names of ``FREEZE_RECIPES`` or ``{name: recipe}`` (default: all of them); a recipe is
    ``prepare(model, lr, num_steps) -> (optimizer or None, on_step or None)``. Seed s fixes the new
    head, the training images (``labels_per_class``; None: all ~100 per class) and the batch order,
    the same for every recipe. Returns one row per recipe and seed: ``method``, ``seed``,
    ``trainable at start``, ``trainable`` (at the end), ``test accuracy``, ``shifted accuracy``
    (the rotated, noisier test digits), ``validation``, ``seconds`` (training time).
    ``ftlab.compare.summarize(df, "test accuracy")`` gives the spread per recipe.
    """
    seeds = check_seeds(seeds)
    if recipes is None:
        recipes = dict(FREEZE_RECIPES)
    elif isinstance(recipes, (list, tuple)):
        unknown = [name for name in recipes if name not in FREEZE_RECIPES]
        if unknown:
            raise ValueError(f"unknown recipes {unknown}; choose from: {', '.join(FREEZE_RECIPES)}")
        recipes = {name: FREEZE_RECIPES[name] for name in recipes}
    if not isinstance(recipes, dict) or not recipes:
        raise TypeError("recipes must be None, a non-empty list of FREEZE_RECIPES names or a dict name -> recipe")
    rows = []
    bar = progress_bar(total=len(recipes) * len(seeds), disable=not progress, desc="compare_freezing", unit="runs")
    for seed in seeds:
        data = make_digits(labels_per_class, seed=seed)
        loaders = {split: image_loader(data[split], batch_size=250) for split in ("validation", "test", "test_shifted")}
        base = load_resnet("glyphs", num_classes=10, seed=seed)
        for name, prepare in recipes.items():
            model = copy.deepcopy(base)
            optimizer, on_step = prepare(model, lr, num_steps)
            trainable_at_start = count_parameters(model)["trainable"]
            seed_everything(seed)
            train = image_loader(data["train"], batch_size=min(batch_size, len(data["train"])), shuffle=True, seed=seed)
            start = time.perf_counter()
            fit(model, train, num_steps=num_steps, lr=lr, optimizer=optimizer, on_step=on_step, progress=False)
            seconds = time.perf_counter() - start
            rows.append({"method": name, "seed": seed, "trainable at start": trainable_at_start,
                         "trainable": count_parameters(model)["trainable"],
                         "test accuracy": evaluate(model, loaders["test"])["accuracy"],
                         "shifted accuracy": evaluate(model, loaders["test_shifted"])["accuracy"],
                         "validation": evaluate(model, loaders["validation"])["accuracy"], "seconds": seconds})
            bar.update()
    bar.close()
    order = {name: i for i, name in enumerate(recipes)}
    return pd.DataFrame(rows).sort_values("method", key=lambda col: col.map(order), kind="stable", ignore_index=True)


# ---------------------------------------------------------------- reference results of compare_freezing (notebook 02)
# Five seeds of every recipe take about eight minutes of CPU, too long for a classroom run: a command runs them once
# and ships the rows with their provenance; notebook 02 loads them and runs one seed live against their spread.
# The folder is apart from data/results/*.csv, whose rows are methods of ftlab.compare (ftlab.sweep's schema).

FREEZING_RESULTS = sweep.RESULTS_DIR / "freezing" / "freezing_digits.csv"
FREEZING_BUDGET = {"num_steps": 60, "lr": 1e-3, "batch_size": 32, "labels_per_class": None}  # the classroom budget
FREEZING_FAST_BUDGET = {"num_steps": 2, "lr": 1e-3, "batch_size": 8, "labels_per_class": 2}
FREEZING_COLUMNS = ["method", "seed", "num_steps", "lr", "labels_per_class", "trainable at start", "trainable",
                    "test accuracy", "shifted accuracy", "validation", "seconds"]


def freezing_settings(run_mode: str | None = None) -> dict:
    """What the rows of a freezing results file depend on besides their seed: the run mode, the budget and each
    recipe, as the SHA-256 of its source code (an edited recipe makes the stored rows stale)."""
    run_mode = check_choice("run_mode", run_mode or mode(), ("classroom", "FAST"))
    budget = FREEZING_BUDGET if run_mode == "classroom" else FREEZING_FAST_BUDGET
    recipes = {name: hashlib.sha256(inspect.getsource(recipe).encode()).hexdigest()
               for name, recipe in FREEZE_RECIPES.items()}
    return {"kind": "freezing", "task": "digits", "mode": run_mode, **budget, "recipes": recipes}


def write_freezing_results(seeds=(0, 1, 2, 3, 4), *, path: str | Path = FREEZING_RESULTS, command: str | None = None,
                           progress: bool = True) -> pd.DataFrame:
    """Run ``compare_freezing`` with every recipe of ``FREEZE_RECIPES`` for each seed under the budget of the run
    mode (``FREEZING_BUDGET``; FAST mode: ``FREEZING_FAST_BUDGET``), appending each seed's rows to ``path`` (a CSV
    with ``FREEZING_COLUMNS``) as it finishes, and the provenance (command, ftlab's commit, torch version and
    threads, date, the checkpoint's SHA-256, ``freezing_settings``) to the JSON file beside it.

    Resumable: seeds already in the file are skipped. A file made with other settings or another checkpoint is
    refused before anything runs, and FAST mode refuses to write the shipped file. Returns every row of the file.
    """
    seeds = check_seeds(seeds)
    path = Path(path)
    if mode() == "FAST" and path.resolve() == FREEZING_RESULTS.resolve():
        raise ValueError(f"FAST mode (FTLAB_FAST=1) must not write the reference results {FREEZING_RESULTS.name}: "
                         f"pass another path, or unset FTLAB_FAST")
    json_path = path.with_suffix(".json")
    settings, checkpoints = freezing_settings(), sweep.checkpoint_hashes("digits")
    rows = sweep.open_results_file(path, json_path, FREEZING_COLUMNS, settings, checkpoints, "check_freezing_results")
    sweep.check_writable([path, json_path])
    done = set(rows["seed"])
    new = {"file": path.name, "columns": FREEZING_COLUMNS, "settings": settings, "checkpoints": checkpoints,
           "commands": []}
    sweep.record_provenance(json_path, new, command or f"ftlab.transfer.write_freezing_results(seeds={seeds!r})")
    budget = {k: settings[k] for k in FREEZING_BUDGET}
    for seed in [s for s in seeds if s not in done]:
        rows = compare_freezing(seeds=[seed], **budget).assign(num_steps=budget["num_steps"], lr=budget["lr"],
                                                                labels_per_class=budget["labels_per_class"])
        rows[FREEZING_COLUMNS].to_csv(path, mode="a", header=not path.exists(), index=False)
        if progress:
            print(f"seed {seed}: " + ", ".join(f"{m} {v:.3f}" for m, v in zip(rows.method, rows["test accuracy"])),
                  flush=True)
    return load_freezing_results(path)


def load_freezing_results(path: str | Path = FREEZING_RESULTS) -> pd.DataFrame:
    """The rows of a freezing results file (``compare_freezing``'s columns, one row per recipe and seed), with its
    provenance in ``df.attrs["provenance"]``. A missing file raises FileNotFoundError naming the command."""
    path = Path(path)
    return sweep.load_results_file(path, path.with_suffix(".json"), "make them with python tools/freezing_results.py")


def check_freezing_results(path: str | Path = FREEZING_RESULTS) -> list[str]:
    """What no longer matches between a freezing results file and the code: the checkpoint's SHA-256, the classroom
    settings (budget, recipes' code), the columns, and each seed having one row per recipe. Returns the problems,
    one sentence each (empty: the file is current)."""
    path = Path(path)
    stored = json.loads(path.with_suffix(".json").read_text())
    problems = sweep.provenance_problems(stored, freezing_settings("classroom"), sweep.checkpoint_hashes("digits"))
    rows = pd.read_csv(path)
    if list(rows.columns) != FREEZING_COLUMNS:
        return problems + [f"{path.name}: columns {list(rows.columns)}, expected {FREEZING_COLUMNS}"]
    for seed, methods in rows.groupby("seed")["method"]:
        if sorted(methods) != sorted(FREEZE_RECIPES):
            problems.append(f"seed {seed}: rows for {sorted(methods)}, expected one for each of {list(FREEZE_RECIPES)}")
    return problems
