"""Overfitting with few labels, measured over seeds (notebook 14): does freezing overfit less than full
fine-tuning, and do weight decay and warm-up change the outcome?

A model overfits when it fits its training examples better than it fits new ones. Two measures,
both taken on every run:

* the **accuracy gap**: training accuracy minus test accuracy at the end of training
  (0 for a model that does as well on new examples as on the ones it trained on);
* the **validation-loss rise**: the validation loss at the end minus its lowest value during
  training (0 when the validation loss never went up again; what early stopping exploits).

``freezing_sweep`` trains the glyph-pretrained ResNet-18 on digits with ``RECIPES`` (ftlab.transfer's
head only, last block and full fine-tuning) at ``LABELS_PER_CLASS`` labels per class, ``NUM_STEPS``
steps each, for several seeds:

1. each recipe's learning rate is chosen on the **validation** split at ``GRID_LABELS_PER_CLASS``
   labels per class: every rate of ``LR_GRID[recipe]`` for every seed, the best mean validation
   accuracy wins (ties: the lower mean validation loss, then the smaller rate);
2. every other label count trains with the chosen rate.

``schedules_sweep`` measures the two training choices notebooks often leave at their defaults,
against the same runs without them: weight decay on digits (full fine-tuning, few labels) and
warm-up on MiniLM sentiment (full fine-tuning and LoRA, at the chosen rate and a higher one).

Both write one row per run to ``data/results/overfitting_<name>.csv`` (the columns of ``ftlab.sweep``
and ``EXTRA_COLUMNS``) with a JSON file beside it: the commands (ftlab's commit, torch, threads,
date), the checkpoints' SHA-256, the settings and, for the freezing sweep, the chosen rates with the
grid's means. Rows are appended as runs finish; a command run again skips the runs already there.
``python tools/overfitting.py`` runs both.
"""
from __future__ import annotations

import copy
import functools
import json
import time
from pathlib import Path

import pandas as pd

from ftlab.compare import METHOD_OPTIONS, apply_method, check_seeds, load_task_model, task_data, verdict
from ftlab.config import mode, pick, seed_everything
from ftlab.measure import count_parameters
from ftlab.progress import progress as progress_bar
from ftlab.sweep import (
    COLUMNS,
    RESULTS_DIR,
    check_writable,
    checkpoint_hashes,
    load_results_file,
    open_results_file,
    provenance_problems,
    record_provenance,
    refuse_fast_writes,
)
from ftlab.tasks.images import image_loader, make_digits
from ftlab.train import evaluate, fit
from ftlab.transfer import FREEZE_RECIPES

RECIPES = ("head only", "last block", "full")
# Learning rates tried per recipe: three rungs, x3 apart, around the rates that train each recipe on digits.
LR_GRID = {"head only": (1e-3, 3e-3, 1e-2), "last block": (3e-4, 1e-3, 3e-3), "full": (1e-4, 3e-4, 1e-3)}
LABELS_PER_CLASS = (1, 2, 5, 20)
GRID_LABELS_PER_CLASS = 5
NUM_STEPS, EVAL_EVERY, BATCH_SIZE = 120, 10, 32
WEIGHT_DECAYS = (0.0, 0.01, 0.1, 1.0)
# Warm-up on sentiment: (method, learning rate) pairs, each with and without WARMUP_FRACTION of the steps.
WARMUP_RUNS = (("full", 1e-4), ("full", 3e-4), ("lora", 3e-3), ("lora", 1e-2))
WARMUP_FRACTION = 0.1
SENTIMENT_STEPS, SENTIMENT_BATCH = 80, 16

# Beyond ftlab.sweep's COLUMNS: the schedule, what overfitting is measured by, and the curves (space-separated
# numbers, one per evaluation: the steps, the mean training loss since the previous evaluation, the validation loss).
EXTRA_COLUMNS = ["weight_decay", "warmup_steps", "train_accuracy", "train_loss", "test_loss", "gap",
                 "validation_loss_min", "loss_rise", "best_step", "eval_steps", "train_curve", "validation_curve"]
ALL_COLUMNS = COLUMNS + EXTRA_COLUMNS
KEY = ["task", "method", "seed", "labels_per_class", "lr", "weight_decay", "warmup_steps"]


def curve_text(values) -> str:
    """Numbers as one space-separated string (4 significant digits), as curves are stored in the CSV."""
    return " ".join(f"{v:.4g}" for v in values)


def curve_values(text: str) -> list[float]:
    """The numbers of a stored curve (``curve_text``'s inverse)."""
    return [float(v) for v in str(text).split()]


def _curves(history: dict) -> dict:
    """Each evaluation's step, the mean training loss since the one before, the validation loss; the lowest
    validation loss, its step and the rise after it."""
    steps, train, start = history["eval_step"], [], 0
    for step in steps:
        losses = history["loss"][start:step]
        train.append(sum(losses) / len(losses))
        start = step
    validation = [e["loss"] for e in history["eval"]]
    best = min(range(len(validation)), key=validation.__getitem__)
    return {"validation_loss_min": validation[best], "loss_rise": validation[-1] - validation[best],
            "best_step": steps[best], "eval_steps": curve_text(steps), "train_curve": curve_text(train),
            "validation_curve": curve_text(validation)}


def digits_run(recipe: str, labels_per_class: int, *, seed: int, lr: float, num_steps: int = NUM_STEPS,
               eval_every: int = EVAL_EVERY, batch_size: int = BATCH_SIZE, weight_decay: float = 0.0,
               warmup_steps: int = 0) -> dict:
    """Fine-tune the glyph-pretrained ResNet-18 on digits with a ``FREEZE_RECIPES`` recipe; return one row.

    Seed ``s`` fixes the new head, the ``labels_per_class`` training images per class and the batch
    order (the same for every recipe). The validation loss is recorded every ``eval_every`` steps;
    at the end the model is scored on its own training images, the validation and the test split.
    The row has ``ALL_COLUMNS``: ``value`` is the test accuracy, ``gap`` the training minus the test
    accuracy, ``loss_rise`` the final minus the lowest validation loss.
    """
    if recipe not in FREEZE_RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose from: {', '.join(FREEZE_RECIPES)}")
    from ftlab.zoo import load_resnet

    data = make_digits(labels_per_class, seed=seed)
    model = load_resnet("glyphs", num_classes=10, seed=seed)
    optimizer, on_step = FREEZE_RECIPES[recipe](model, lr, num_steps)
    if optimizer is not None and weight_decay:
        raise ValueError(f"recipe {recipe!r} brings its own optimizer: weight_decay applies to fit's AdamW only")
    counts = count_parameters(model)
    seed_everything(seed)
    train = image_loader(data["train"], batch_size=min(batch_size, len(data["train"])), shuffle=True, seed=seed)
    start = time.perf_counter()
    history = fit(model, train, num_steps=num_steps, lr=lr, optimizer=optimizer, on_step=on_step,
                  weight_decay=weight_decay, warmup_steps=warmup_steps,
                  eval_data=image_loader(data["validation"], batch_size=300), eval_every=eval_every, progress=False)
    seconds = time.perf_counter() - start
    scores = {split: evaluate(model, image_loader(data[split], batch_size=250))
              for split in ("train", "validation", "test")}
    return {"task": "digits", "method": recipe, "seed": seed, "num_steps": num_steps,
            "train_examples": len(data["train"]), "labels_per_class": labels_per_class, "lr": lr,
            "metric": "test accuracy", "value": scores["test"]["accuracy"],
            "validation": scores["validation"]["accuracy"], "validation_loss": scores["validation"]["loss"],
            "trainable": counts["trainable"], "total": counts["total"], "seconds": seconds,
            "weight_decay": weight_decay, "warmup_steps": warmup_steps,
            "train_accuracy": scores["train"]["accuracy"], "train_loss": scores["train"]["loss"],
            "test_loss": scores["test"]["loss"], "gap": scores["train"]["accuracy"] - scores["test"]["accuracy"],
            **_curves(history)}


def sentiment_run(method: str, *, seed: int, lr: float, warmup_steps: int = 0, num_steps: int = SENTIMENT_STEPS,
                  batch_size: int = SENTIMENT_BATCH, eval_every: int = 10, sizes: dict | None = None) -> dict:
    """Fine-tune MiniLM on sentiment as ``ftlab.compare`` does (same data, head, batch order and method options),
    with ``warmup_steps`` of linear warm-up (then cosine decay, ``fit``'s schedule); return one row as
    ``digits_run``'s. Without warm-up the run is the one ``compare`` and ``python -m ftlab tune`` make."""
    base, tokenizer = load_task_model("sentiment", seed=seed)
    data = task_data("sentiment", tokenizer, seed=seed, sizes=sizes, batch_size=batch_size)
    seed_everything(seed)
    net = apply_method(copy.deepcopy(base), "sentiment", method, METHOD_OPTIONS["sentiment"][method])
    counts = count_parameters(net)
    start = time.perf_counter()
    history = fit(net, data["train"](), num_steps=num_steps, lr=lr, warmup_steps=warmup_steps, progress=False)
    seconds = time.perf_counter() - start
    train = evaluate(net, data["train"]())
    test_accuracy, validation_accuracy = data["test"](net), data["validation"](net)
    losses = history["loss"]
    steps = list(range(eval_every, num_steps + 1, eval_every))
    return {"task": "sentiment", "method": method, "seed": seed, "num_steps": num_steps,
            "train_examples": data["train_examples"], "labels_per_class": None, "lr": lr,
            "metric": "test accuracy", "value": test_accuracy, "validation": validation_accuracy,
            "validation_loss": data["validation_loss"](net), "trainable": counts["trainable"],
            "total": counts["total"], "seconds": seconds, "weight_decay": 0.0, "warmup_steps": warmup_steps,
            "train_accuracy": train["accuracy"], "train_loss": train["loss"], "test_loss": None,
            "gap": train["accuracy"] - test_accuracy, "validation_loss_min": None, "loss_rise": None,
            "best_step": None, "eval_steps": curve_text(steps),
            "train_curve": curve_text(sum(losses[s - eval_every:s]) / eval_every for s in steps),
            "validation_curve": ""}


# ---------------------------------------------------------------- files


def results_paths(name: str, out: str | Path = RESULTS_DIR) -> tuple[Path, Path]:
    """``(csv, json)`` of a results file: ``out/overfitting_<name>.csv`` and ``.json``."""
    return Path(out) / f"overfitting_{name}.csv", Path(out) / f"overfitting_{name}.json"


def _checkpoints(tasks) -> dict[str, str]:
    return {file: digest for task in tasks for file, digest in checkpoint_hashes(task).items()}


def _open(name: str, out: str | Path, settings: dict, tasks) -> pd.DataFrame:
    """The rows already in the file (none if new); refuse a file made with other settings or checkpoints."""
    csv_path, json_path = results_paths(name, out)
    check_writable([csv_path, json_path])
    refuse_fast_writes(out)
    return open_results_file(csv_path, json_path, ALL_COLUMNS, settings, _checkpoints(tasks),
                             "ftlab.overfitting.check_results")


def _record(name: str, out: str | Path, settings: dict, tasks, command: str, extra: dict | None = None) -> None:
    """Add ``command`` to the provenance file (created if new), with ``extra`` entries."""
    _, json_path = results_paths(name, out)
    new = {"file": f"overfitting_{name}.csv", "columns": ALL_COLUMNS, "settings": settings,
           "checkpoints": _checkpoints(tasks), "commands": []}
    record_provenance(json_path, new, command, extra)


def _key(row: dict) -> tuple:
    lpc = row.get("labels_per_class")
    return (row["task"], row["method"], int(row["seed"]), None if lpc is None or pd.isna(lpc) else int(lpc),
            float(f"{row['lr']:.3g}"), float(row.get("weight_decay", 0.0)), int(row.get("warmup_steps", 0)))


def _run_missing(jobs: list[tuple[dict, callable]], rows: pd.DataFrame, csv_path: Path, progress: bool,
                 desc: str) -> pd.DataFrame:
    """Run each job ``(key, run)`` whose key (``KEY``'s columns) is not in ``rows`` yet; ``run()`` returns a row,
    appended to ``csv_path`` as soon as it is done. Returns every row of the file."""
    done = {_key(row) for row in rows.to_dict("records")}
    todo = [(key, run) for key, run in jobs if _key(key) not in done]
    bar = progress_bar(total=len(todo), disable=not progress, desc=desc, unit="runs")
    for _, run in todo:
        pd.DataFrame([run()], columns=ALL_COLUMNS).to_csv(csv_path, mode="a", header=not csv_path.exists(),
                                                          index=False)
        bar.update()
    bar.close()
    return pd.read_csv(csv_path) if csv_path.exists() else rows


# ---------------------------------------------------------------- does freezing overfit less?


def freezing_settings(num_steps: int, eval_every: int, grid_labels_per_class: int, grid_seeds: list[int]) -> dict:
    """What the freezing sweep's rows depend on besides their key columns."""
    return {"kind": "overfitting", "task": "digits", "mode": mode(), "recipes": list(RECIPES),
            "lr_grid": {name: list(rates) for name, rates in LR_GRID.items()}, "num_steps": num_steps,
            "eval_every": eval_every, "batch_size": BATCH_SIZE, "grid_labels_per_class": grid_labels_per_class,
            "grid_seeds": grid_seeds, "optimizer": "AdamW (fit's), constant rate, weight_decay 0"}


def choose_rates(rows: pd.DataFrame) -> dict[str, dict]:
    """``{recipe: {"lr": chosen, "validation": {lr: mean validation accuracy}}}`` from grid rows of one label count:
    the best mean validation accuracy over seeds; ties by the lower mean validation loss, then the smaller rate."""
    chosen = {}
    for recipe, group in rows.groupby("method", sort=False):
        means = group.groupby("lr")[["validation", "validation_loss"]].mean()
        best = min(means.index, key=lambda lr: (-round(means.loc[lr, "validation"], 9),
                                                means.loc[lr, "validation_loss"], lr))
        chosen[recipe] = {"lr": float(best), "validation": {f"{lr:g}": round(float(v), 4)
                                                            for lr, v in means["validation"].items()}}
    return chosen


def freezing_sweep(seeds=(0, 1, 2, 3, 4), labels_per_class=LABELS_PER_CLASS, *, grid_seeds=(0, 1, 2),
                   out: str | Path = RESULTS_DIR,
                   num_steps: int | None = None, eval_every: int | None = None,
                   grid_labels_per_class: int | None = None, progress: bool = True,
                   command: str = "python tools/overfitting.py freezing") -> tuple[pd.DataFrame, dict]:
    """Head only, last block and full fine-tuning on digits at each label count and seed; returns ``(rows, rates)``.

    First the learning-rate grid (``LR_GRID`` for each of ``grid_seeds``, at ``grid_labels_per_class``), scored
    on the validation split (``choose_rates``); then every label count and seed with each recipe's chosen rate.
    Rows go to ``out/overfitting_digits.csv`` as they finish; the chosen rates to the JSON file beside it.
    """
    seeds, grid_seeds = check_seeds(seeds), check_seeds(grid_seeds)
    num_steps = num_steps or pick(NUM_STEPS, 4)
    eval_every = eval_every or pick(EVAL_EVERY, 2)
    grid_labels_per_class = grid_labels_per_class or pick(GRID_LABELS_PER_CLASS, 1)
    settings = freezing_settings(num_steps, eval_every, grid_labels_per_class, grid_seeds)
    csv_path, _ = results_paths("digits", out)
    rows = _open("digits", out, settings, ["digits"])
    _record("digits", out, settings, ["digits"], command)

    def jobs(labels, seeds, lrs):
        """``(key, run)`` for each label count, seed, recipe and rate; ``lrs[recipe]`` the rates of a recipe."""
        return [({"task": "digits", "method": recipe, "seed": seed, "labels_per_class": k, "lr": lr},
                 functools.partial(digits_run, recipe, k, seed=seed, lr=lr, num_steps=num_steps,
                                   eval_every=eval_every))
                for k in labels for seed in seeds for recipe in RECIPES for lr in lrs[recipe]]

    rows = _run_missing(jobs([grid_labels_per_class], grid_seeds, LR_GRID), rows, csv_path, progress, "lr grid")
    grid = rows[(rows["labels_per_class"] == grid_labels_per_class) & rows["seed"].isin(grid_seeds)
                & (rows["weight_decay"] == 0) & (rows["warmup_steps"] == 0)]
    rates = choose_rates(grid)
    _record_rates(out, rates)
    chosen = {recipe: [entry["lr"]] for recipe, entry in rates.items()}
    rows = _run_missing(jobs(labels_per_class, seeds, chosen), rows, csv_path, progress, "freezing")
    return rows, rates


def _record_rates(out: str | Path, rates: dict) -> None:
    _, json_path = results_paths("digits", out)
    stored = json.loads(json_path.read_text())
    stored["learning_rates"] = rates
    json_path.write_text(json.dumps(stored, indent=1) + "\n")


def load_results(name: str = "digits", out: str | Path = RESULTS_DIR) -> pd.DataFrame:
    """The rows of ``out/overfitting_<name>.csv`` (``"digits"`` or ``"schedules"``) with the provenance in
    ``df.attrs["provenance"]`` (for ``"digits"`` it holds the chosen ``learning_rates``), as
    ``ftlab.sweep.load_results``. A missing file raises FileNotFoundError naming the command that makes it."""
    csv_path, json_path = results_paths(name, out)
    return load_results_file(csv_path, json_path, f"make them with python tools/overfitting.py "
                                                  f"{'freezing' if name == 'digits' else name} (about 30 CPU-minutes "
                                                  f"for both parts)")


def check_results(json_path: str | Path) -> list[str]:
    """What no longer matches between a shipped overfitting results file (``.json`` and ``.csv``) and the code, as
    ``ftlab.sweep.check_results`` for sweeps: the checkpoints' SHA-256, the classroom settings, the columns and,
    for the freezing sweep, the chosen rates (``choose_rates`` on the grid's rows). Returns one sentence per
    problem (empty: the file is current)."""
    json_path = Path(json_path)
    stored = json.loads(json_path.read_text())
    if stored["settings"]["kind"] == "overfitting":
        tasks = ["digits"]
        settings = freezing_settings(NUM_STEPS, EVAL_EVERY, GRID_LABELS_PER_CLASS, [0, 1, 2])
    else:
        tasks = ["digits", "sentiment"]
        settings = schedules_settings(stored["settings"]["digits"]["lr"], NUM_STEPS, GRID_LABELS_PER_CLASS,
                                      SENTIMENT_STEPS)
        settings["digits"]["eval_every"] = EVAL_EVERY
    settings["mode"] = "classroom"
    problems = provenance_problems(stored, settings, _checkpoints(tasks))
    rows = pd.read_csv(json_path.with_suffix(".csv"))
    if list(rows.columns) != ALL_COLUMNS:
        return problems + [f"{json_path.with_suffix('.csv').name}: columns {list(rows.columns)}, "
                           f"expected {ALL_COLUMNS}"]
    if stored["settings"]["kind"] == "overfitting":
        grid = rows[(rows["labels_per_class"] == GRID_LABELS_PER_CLASS) & rows["seed"].isin(settings["grid_seeds"])
                    & (rows["weight_decay"] == 0) & (rows["warmup_steps"] == 0)]  # as freezing_sweep chooses
        for recipe, entry in choose_rates(grid).items():
            recorded = stored.get("learning_rates", {}).get(recipe, {}).get("lr")
            if recorded != entry["lr"]:
                problems.append(f"recipe {recipe}: the file records lr {recorded}, "
                                f"the grid's rows pick {entry['lr']:g}")
    return problems


def at_chosen_rates(rows: pd.DataFrame, rates: dict) -> pd.DataFrame:
    """The freezing sweep's rows trained with each recipe's chosen rate (the grid's other rates left out)."""
    chosen = rows["lr"].round(12) == rows["method"].map({name: entry["lr"] for name, entry in rates.items()})
    return rows[chosen & (rows["weight_decay"] == 0) & (rows["warmup_steps"] == 0)].reset_index(drop=True)


def overfits_less(rows: pd.DataFrame, a: str, b: str, value: str = "gap") -> str:
    """Does recipe ``a`` overfit less than ``b`` by ``value`` (``gap`` or ``loss_rise``; lower is less)?
    ``"less"`` when every seed of ``a`` is below every seed of ``b``, ``"more"`` the other way round,
    else ``"within noise"`` (``ftlab.compare.verdict``'s strict test)."""
    said = verdict(rows, a, b, value)
    if said == f"{b} beats {a}":
        return "less"
    if said == f"{a} beats {b}":
        return "more"
    return "within noise"


def freezing_verdicts(rows: pd.DataFrame, value: str = "gap") -> pd.DataFrame:
    """Per label count, each frozen recipe against full fine-tuning: mean ``value`` of both over seeds, and whether
    the claim "freezing overfits less" is ``confirmed`` (less), ``not confirmed`` (more) or ``within noise``."""
    words = {"less": "confirmed", "more": "not confirmed", "within noise": "within noise"}
    table = []
    for k, group in rows.groupby("labels_per_class"):
        if "full" not in set(group["method"]):
            continue  # nothing to compare with at this label count
        for recipe in [r for r in RECIPES if r != "full" and r in set(group["method"])]:
            means = group.groupby("method")[value].mean()
            table.append({"labels_per_class": int(k), "recipe": recipe, f"{value} of recipe": means[recipe],
                          f"{value} of full": means["full"], "n": int((group["method"] == recipe).sum()),
                          "claim": words[overfits_less(group, recipe, "full", value)]})
    return pd.DataFrame(table)


# ---------------------------------------------------------------- weight decay and warm-up


def schedule_runs(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The stored schedules runs (``load_results("schedules")``) as two tables with a ``setting`` label per run:
    the weight-decay runs on digits ("weight decay 0.01") and the warm-up runs on sentiment ("lora lr 0.003,
    constant" / "lora lr 0.003, warm-up 8 + cosine": in ``fit`` a warm-up is followed by a cosine decay), each
    in the order of the file, a run without the option first."""
    decay = rows[rows["task"] == "digits"].assign(
        setting=lambda d: "weight decay " + d["weight_decay"].map("{:g}".format))
    warm = rows[rows["task"] == "sentiment"].assign(
        setting=lambda d: d["method"] + " lr " + d["lr"].map("{:g}".format)
        + d["warmup_steps"].map(lambda w: f", warm-up {w} + cosine" if w else ", constant"))
    return decay, warm


def schedules_settings(full_lr: float, num_steps: int, labels_per_class: int, sentiment_steps: int) -> dict:
    """What the schedules sweep's rows depend on besides their key columns."""
    return {"kind": "overfitting_schedules", "mode": mode(), "digits": {
        "recipe": "full", "lr": full_lr, "labels_per_class": labels_per_class, "num_steps": num_steps,
        "eval_every": pick(EVAL_EVERY, 2), "batch_size": BATCH_SIZE, "weight_decays": list(WEIGHT_DECAYS)},
        "sentiment": {"runs": [list(run) for run in WARMUP_RUNS], "warmup_fraction": WARMUP_FRACTION,
                      "num_steps": sentiment_steps, "batch_size": SENTIMENT_BATCH,
                      "schedule": "fit's: linear warm-up, then cosine decay to 0; 0 warm-up steps: constant rate",
                      "method_options": {name: METHOD_OPTIONS["sentiment"][name] for name, _ in WARMUP_RUNS}}}


def schedules_sweep(seeds=(0, 1, 2), *, full_lr: float = 3e-4, out: str | Path = RESULTS_DIR,
                    progress: bool = True, command: str = "python tools/overfitting.py schedules") -> pd.DataFrame:
    """Weight decay and warm-up against the same runs without them, for each seed; returns the rows.

    * Weight decay (AdamW's decoupled decay, ``fit(weight_decay=...)``): full fine-tuning of the ResNet on
      digits at ``GRID_LABELS_PER_CLASS`` labels per class with ``full_lr``, each of ``WEIGHT_DECAYS``.
    * Warm-up: MiniLM on sentiment (``sentiment_run``), each (method, rate) of ``WARMUP_RUNS`` with no warm-up
      (a constant rate) and with ``WARMUP_FRACTION`` of the steps warming up, then decaying.

    Rows go to ``out/overfitting_schedules.csv`` as they finish.
    """
    seeds = check_seeds(seeds)
    num_steps, labels = pick(NUM_STEPS, 4), pick(GRID_LABELS_PER_CLASS, 1)
    sentiment_steps = pick(SENTIMENT_STEPS, 4)
    sizes = pick(None, {"train": 32, "validation": 4, "test": 16})
    settings = schedules_settings(full_lr, num_steps, labels, sentiment_steps)
    csv_path, _ = results_paths("schedules", out)
    rows = _open("schedules", out, settings, ["digits", "sentiment"])
    _record("schedules", out, settings, ["digits", "sentiment"], command)
    warmup = max(1, round(WARMUP_FRACTION * sentiment_steps))
    jobs = [({"task": "digits", "method": "full", "seed": seed, "labels_per_class": labels, "lr": full_lr,
              "weight_decay": wd},
             functools.partial(digits_run, "full", labels, seed=seed, lr=full_lr, num_steps=num_steps,
                               eval_every=pick(EVAL_EVERY, 2), weight_decay=wd))
            for seed in seeds for wd in WEIGHT_DECAYS]
    jobs += [({"task": "sentiment", "method": method, "seed": seed, "lr": lr, "warmup_steps": w},
              functools.partial(sentiment_run, method, seed=seed, lr=lr, warmup_steps=w, num_steps=sentiment_steps,
                                sizes=sizes))
             for seed in seeds for method, lr in WARMUP_RUNS for w in (0, warmup)]
    return _run_missing(jobs, rows, csv_path, progress, "schedules")
