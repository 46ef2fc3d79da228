"""Does pretraining pay? A pretrained and a randomly initialised ResNet-18 fine-tuned on few-label digits.

Both models are torchvision's ResNet-18 with a new 10-class head (``ftlab.zoo.load_resnet``),
trained in full with AdamW by ``ftlab.train.fit`` for the same number of steps, with the same
learning-rate search, on ``make_digits(labels_per_class=k, seed=s)``. Three claims are measured:

* less data: test accuracy against labels per class (mean over seeds);
* faster convergence: the first step at which validation accuracy reaches 90% of its final value;
* generalisation: accuracy on the shifted test set (rotated, noisier digits).
"""
from __future__ import annotations

import pandas as pd
from tqdm.auto import tqdm

from ftlab.config import seed_everything
from ftlab.tasks.images import image_loader, make_digits
from ftlab.train import evaluate, fit
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
                  eval_every=eval_every, device="cpu", progress=False)
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

    Returns ``{"lr": {model: lr}, "search": DataFrame, "runs": DataFrame, "summary": DataFrame}``:
    ``runs`` has one row per (model, labels_per_class, seed); ``summary`` (``summarize``) the
    means over seeds, pretrained next to scratch.
    """
    if not labels_per_class or not seeds or not lrs:
        raise ValueError("labels_per_class, seeds and lrs each need at least one value")
    models = [pretrained, "scratch"]
    jobs = [(m, search_labels_per_class, seeds[0], lr) for m in models for lr in lrs]
    bar = tqdm(total=len(jobs) + len(models) * len(labels_per_class) * len(seeds), disable=not progress,
               desc="compare_pretrained")
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
    return {"lr": best, "search": search, "runs": runs, "summary": summarize(runs, pretrained)}


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
