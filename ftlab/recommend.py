"""Which fine-tuning method for this model, this GPU, this much data and this many tasks?

``recommend`` answers with a table, one row per method, each cell backed by a number:

* **fits**: from ``ftlab.estimate_memory``, with the first setting on ``LADDER`` that fits into
  the GPU (bf16-mixed, then gradient checkpointing, then smaller batches, then pure bf16), leaving
  ``headroom`` free for what the estimate does not count (CUDA context, temporary buffers).
  fp32 is not tried: on a GPU, bf16-mixed costs the same 16 bytes per trainable parameter and
  halves the rest (fp16-mixed, for GPUs without bf16, takes the same memory);
* **storage**: bytes kept per task (the whole model for full fine-tuning, else only what trains)
  and for all tasks (one shared base plus the per-task parts);
* **quality**: the difference to full fine-tuning measured by this lab at the nearest data size
  (``data/results/*.csv``, one row per run, averaged over seeds). Where no measurement lies
  within a factor of 2 of the asked data size, the cell is empty and the reasons say so: the
  table never invents a number;
* **reasons**: the same in words.

A GPU's advertised size is in GiB (a "24 GB" card has 24 x 2^30 bytes), so memory is in GiB here.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import pandas as pd
from torch import nn

from ftlab.compare import load_learning_rates
from ftlab.estimate import PRECISIONS, estimate_memory, is_classifier, meta_model
from ftlab.methods import available
from ftlab.methods.base import ALL_LINEAR, DEFAULT_TARGETS, model_family
from ftlab.validate import check_number, check_positive_int
from ftlab.zoo import DATA_DIR

GIB, MIB = 2**30, 2**20
RESULTS_DIR = DATA_DIR / "results"
RESULT_COLUMNS = ["task", "method", "seed", "train_examples", "labels_per_class", "metric", "value"]
# Settings tried in order, each cheaper in memory than the one before and each costing something:
# (precision, gradient checkpointing, halve the batch). Checkpointing recomputes the forward pass (about a
# third more compute); a smaller batch with gradient accumulation gives the same update, more slowly;
# pure bf16 keeps the optimizer's moments in 16 bits, a less precise update.
LADDER = (("bf16-mixed", False, False), ("bf16-mixed", True, True), ("bf16", True, True))
NOT_SWITCHABLE = ("full",)  # every task is a whole model: serving several means several models
LORA_FAMILY = ("lora", "dora", "loha", "lokr")
COLUMNS = ["method", "fits", "precision", "gradient_checkpointing", "batch_size", "memory_gib", "trainable_parameters",
           "storage_per_task_mib", "storage_all_tasks_gib", "switchable", "quality_vs_full", "quality_spread",
           "reasons"]


# ---------------------------------------------------------------- memory: the cheapest setting that fits

@functools.lru_cache(maxsize=1024)
def _cached_estimate(name: str, method: str, options: tuple, settings: tuple) -> dict:
    return estimate_memory(name, method, **{k: list(v) if isinstance(v, tuple) else v for k, v in options},
                           **dict(settings))


def estimate(model, method: str, options: dict, **settings) -> dict:
    """``estimate_memory``, remembered for catalogue names (a widget asks the same questions again)."""
    if isinstance(model, str):
        key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))
        return dict(_cached_estimate(model, method, key, tuple(sorted(settings.items()))))
    return estimate_memory(model, method, **options, **settings)


def batch_sizes(batch_size: int) -> list[int]:
    """``batch_size`` halved down to 1: 8 -> [8, 4, 2, 1]."""
    sizes = [batch_size]
    while sizes[-1] > 1:
        sizes.append(sizes[-1] // 2)
    return sizes


def cheapest_fit(model, method: str, options: dict, budget: float, batch_size: int, length: dict) -> tuple[dict, bool]:
    """``(estimate, fits)``: the first setting on ``LADDER`` whose total is within ``budget`` bytes, or, when
    none is, the last one tried (pure bf16, checkpointing, batch 1).

    Activations grow with the batch, at most linearly: ``b`` times those of batch 1 is an upper
    bound, so each setting costs one estimate at batch 1 and one at the batch chosen.
    """
    for precision, checkpointing, smaller_batches in LADDER:
        settings = {"precision": precision, "gradient_checkpointing": checkpointing, "device": "cuda", **length}
        one = estimate(model, method, options, batch_size=1, **settings)
        fixed = one["total"] - one["activations"]
        for b in batch_sizes(batch_size) if smaller_batches else [batch_size]:
            if fixed + b * one["activations"] <= budget:
                row = one if b == 1 else estimate(model, method, options, batch_size=b, **settings)
                return row, True
    return one, False


# ---------------------------------------------------------------- quality: the lab's measured results

def shipped_results() -> pd.DataFrame:
    """The shipped runs that compare methods at their chosen learning rates: ``data/results/sweep_*.csv`` (made
    with those rates) and, from each ``data/results/lr_grid_<task>.csv``, only the rows at the rate
    ``ftlab/learning_rates.json`` chose for the method (the other rates of the grid are not the method at its best).
    Other results files (continual, alignment, scenarios) measure other things and are left out."""
    rates = load_learning_rates()
    frames = [pd.read_csv(p) for p in sorted(RESULTS_DIR.glob("sweep_*.csv"))]
    for path in sorted(RESULTS_DIR.glob("lr_grid_*.csv")):
        rows = pd.read_csv(path)
        chosen = rows.apply(lambda r: math.isclose(r["lr"], rates.get(r["task"], {}).get(r["method"], math.nan),
                                                   rel_tol=1e-6), axis=1)
        frames.append(rows[chosen.astype(bool)])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RESULT_COLUMNS)


def load_results(results=None) -> pd.DataFrame:
    """The lab's reference results (``results=None``: ``shipped_results()``), a folder of CSVs, a list of CSV
    paths, or a DataFrame; one row per run (columns ``RESULT_COLUMNS`` at least)."""
    if isinstance(results, pd.DataFrame):
        frame = results
    elif results is None:
        frame = shipped_results()
    else:
        if isinstance(results, (str, Path)):
            paths = sorted(Path(results).glob("*.csv")) if Path(results).is_dir() else [Path(results)]
        else:
            paths = [Path(p) for p in results]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"no results file {', '.join(missing)}; give a folder of CSVs, CSV paths or a "
                                    f"DataFrame")
        frames = [pd.read_csv(p) for p in paths]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RESULT_COLUMNS)
    absent = [c for c in RESULT_COLUMNS if c not in frame.columns]
    if absent:
        raise ValueError(f"reference results need the columns {RESULT_COLUMNS}; these are missing: {absent}")
    return frame


def quality_vs_full(results: pd.DataFrame, method: str, *, image: bool, size: float,
                    task: str | None = None) -> tuple[float, float, str]:
    """``(difference, spread, evidence)``: ``method``'s metric minus full fine-tuning's, measured at the data
    size nearest ``size`` (labels per class for image tasks, training examples for text tasks).

    Per task of the same kind (or only ``task``): the runs of both methods at the nearest size that
    both were measured at, within a factor of 2 of ``size``; the difference is averaged over the
    seeds both have (paired), then over tasks; ``spread`` is the standard deviation of the per-seed
    differences (pooled over tasks). Without such a measurement: ``(nan, nan, why)``.
    """
    column = "labels_per_class" if image else "train_examples"
    kind = "labels per class" if image else "examples"
    rows = results[results["labels_per_class"].notna() == image]
    if task is not None:
        rows = rows[rows["task"] == task]
    if rows.empty:
        which = f"task {task!r}" if task else ("image" if image else "text") + " tasks"
        return math.nan, math.nan, f"no measured results for {which} yet"
    found, nearest_sizes = [], []
    for name, group in rows.groupby("task"):
        full, mine = group[group["method"] == "full"], group[group["method"] == method]
        common = sorted(set(full[column]) & set(mine[column]))
        if not common:
            continue
        nearest = min(common, key=lambda s: abs(math.log(s / size)))
        nearest_sizes.append(f"{name}: {nearest:g}")
        if abs(math.log(nearest / size)) > math.log(2):
            continue
        by_seed = {label: part[part[column] == nearest].groupby("seed")["value"].mean()
                   for label, part in (("full", full), ("mine", mine))}
        seeds = by_seed["full"].index.intersection(by_seed["mine"].index)
        diffs = by_seed["mine"][seeds] - by_seed["full"][seeds]
        if len(seeds) == 0:
            continue
        metric = group["metric"].iloc[0]
        found.append((name, nearest, len(seeds), diffs.mean(), diffs.std(ddof=1) if len(seeds) > 1 else 0.0, metric))
    if not found:
        measured = f" (nearest measured: {'; '.join(nearest_sizes)})" if nearest_sizes else ""
        return math.nan, math.nan, (f"no measurement of {method} and full fine-tuning within a factor of 2 of "
                                    f"{size:g} {kind}{measured}")
    difference = sum(f[3] for f in found) / len(found)
    spread = math.sqrt(sum(f[4] ** 2 for f in found) / len(found))
    where = "; ".join(f"{name} with {nearest:g} {kind}, {n} seed{'s' * (n > 1)}, {metric}"
                      for name, nearest, n, _, _, metric in found)
    return difference, spread, f"measured on {where}"


# ---------------------------------------------------------------- the table

def method_options(model: nn.Module, method: str) -> tuple[dict, str]:
    """``(options, note)`` for ``method`` on ``model`` (a meta model): a new classification head trains in full
    (``modules_to_save``, as ``ftlab.compare`` does), and LoRA goes on every linear layer (as QLoRA does)
    where ftlab has no default places for the model's family."""
    options, note = {}, ""
    head = "fc" if model_family(model) == "resnet" else "classifier" if is_classifier(model) else None
    if head and method not in ("full", "freeze"):
        options["modules_to_save"] = [head]
    if method in LORA_FAMILY and model_family(model) not in DEFAULT_TARGETS:
        options["targets"] = ALL_LINEAR
        note = "LoRA on every linear layer (no default places for this model family). "
    return options, note


def _size(num_bytes: float, unit: str = "GiB") -> str:
    scale = {"GiB": GIB, "MiB": MIB}[unit]
    return f"{num_bytes / scale:.3g} {unit}" if num_bytes >= 0.01 * scale else f"{num_bytes / MIB:.3g} MiB"


def recommend(model, gpu_memory_gb: float, num_examples: int, num_tasks: int = 1,
              switch_tasks_at_serving: bool = False, *, labels_per_class: int | None = None, batch_size: int = 8,
              seq_len: int = 512, image_size: int = 224, methods=None, results=None,
              task: str | None = None, headroom: float = 0.1) -> pd.DataFrame:
    """A table of fine-tuning methods for ``model`` on a GPU of ``gpu_memory_gb`` GiB, best first.

    ``model``: what ``estimate_memory`` takes (a catalogue name such as ``"llama-7b"``, a config or
    a model). ``num_examples``: labelled training examples; for an image model the data size is
    ``labels_per_class`` (default: ``num_examples`` over the number of classes). ``num_tasks``
    tasks share one base model; ``switch_tasks_at_serving``: several tasks must be served by one
    deployment. ``batch_size``, ``seq_len`` (text) or ``image_size`` (images) describe a step;
    ``results``: reference results (``load_results``), ``task`` restricts them to one task;
    ``headroom``: the fraction of the GPU kept free for what the estimate leaves out; ``methods``:
    the methods to consider (default: every method ftlab has, ``ftlab.methods.available()``).

    Columns: ``method``, ``fits``, ``precision``, ``gradient_checkpointing``, ``batch_size`` (the
    cheapest setting that fits, else the last one tried), ``memory_gib``, ``trainable_parameters``,
    ``storage_per_task_mib``, ``storage_all_tasks_gib``, ``switchable`` (tasks served from one base),
    ``quality_vs_full`` and ``quality_spread`` (metric difference to full fine-tuning, measured;
    empty where not measured), ``reasons``. Rows: methods that fit first, then higher quality,
    then less storage; a method that does not apply to the model says why.
    """
    gpu_memory_gb = check_number("gpu_memory_gb", gpu_memory_gb, minimum=0, strict_minimum=True)
    num_examples = check_positive_int("num_examples", num_examples)
    num_tasks = check_positive_int("num_tasks", num_tasks)
    batch_size = check_positive_int("batch_size", batch_size)
    headroom = check_number("headroom", headroom, minimum=0, maximum=0.9)
    if switch_tasks_at_serving not in (True, False):
        raise ValueError(f"switch_tasks_at_serving must be True or False, got {switch_tasks_at_serving!r}")
    methods = available() if methods is None else methods
    unknown = [m for m in methods if m not in available()]
    if isinstance(methods, str) or unknown:
        raise ValueError(f"methods must be a list of method names from {', '.join(available())}; unknown: "
                         f"{unknown or methods!r}")
    base = meta_model(model)
    image = model_family(base) == "resnet"
    if image:
        num_classes = base.fc.out_features
        if labels_per_class is None:
            labels_per_class = max(1, num_examples // num_classes)
        size = check_positive_int("labels_per_class", labels_per_class)
        length = {"image_size": check_positive_int("image_size", image_size)}
    else:
        size, length = num_examples, {"seq_len": check_positive_int("seq_len", seq_len)}
    results = load_results(results)
    budget = (1 - headroom) * gpu_memory_gb * GIB

    rows = []
    for method in methods:
        options, note = method_options(base, method)
        try:
            row, fits = cheapest_fit(model, method, options, budget, batch_size, length)
        except (ValueError, TypeError, NotImplementedError) as err:
            rows.append({"method": method, "fits": False, "switchable": False,
                         "reasons": f"does not apply to this model: {err}"})
            continue
        per_task_bytes = PRECISIONS[row["precision"]].dtype.itemsize * (
            row["parameters"] if method == "full" else row["trainable_parameters"])
        shared = 0 if method == "full" else row["weights_frozen"] + row["buffers"]
        difference, spread, evidence = quality_vs_full(results, method, image=image, size=size, task=task)
        rows.append({
            "method": method, "fits": fits, "precision": row["precision"],
            "gradient_checkpointing": row["gradient_checkpointing"], "batch_size": row["batch_size"],
            "memory_gib": row["total"] / GIB, "trainable_parameters": row["trainable_parameters"],
            "storage_per_task_mib": per_task_bytes / MIB,
            "storage_all_tasks_gib": (shared + num_tasks * per_task_bytes) / GIB,
            "switchable": method not in NOT_SWITCHABLE,
            "quality_vs_full": difference, "quality_spread": spread,
            "reasons": note + reasons(method, row, fits, gpu_memory_gb, budget, per_task_bytes, shared, num_tasks,
                                      switch_tasks_at_serving, difference, spread, evidence),
        })
    table = pd.DataFrame(rows, columns=COLUMNS).astype({"batch_size": "Int64", "trainable_parameters": "Int64"})
    order = pd.DataFrame({
        "fits": table["fits"].astype(bool),
        "serves": ~(switch_tasks_at_serving & (num_tasks > 1) & ~table["switchable"].astype(bool)),
        "quality": table["quality_vs_full"].fillna(-math.inf),
        "storage": table["storage_all_tasks_gib"].fillna(math.inf),
    }).sort_values(["fits", "serves", "quality", "storage"], ascending=[False, False, False, True], kind="stable")
    table = table.loc[order.index].reset_index(drop=True)
    table.attrs.update(gpu_memory_gb=gpu_memory_gb, usable_gib=budget / GIB, num_examples=num_examples,
                       labels_per_class=labels_per_class, num_tasks=num_tasks,
                       switch_tasks_at_serving=switch_tasks_at_serving)
    return table


def reasons(method: str, row: dict, fits: bool, gpu_memory_gb: float, budget: float, per_task_bytes: float,
            shared: float, num_tasks: int, switch_tasks_at_serving: bool, difference: float, spread: float,
            evidence: str) -> str:
    """The row's reasons in words: memory, storage, serving, quality."""
    setting = (f"{row['precision']}{', gradient checkpointing' if row['gradient_checkpointing'] else ''}, "
               f"batch {row['batch_size']}")
    states = row["total"] - row["activations"]
    if fits:
        words = [(f"Fits in {gpu_memory_gb:g} GiB with {setting}: {_size(row['total'])} "
                  f"(weights and optimizer {_size(states)}, activations {_size(row['activations'])}).")]
    else:
        words = [(f"Does not fit in {gpu_memory_gb:g} GiB ({_size(budget)} usable) even with {setting}: needs "
                  f"{_size(row['total'])}, of which weights, gradients and optimizer state {_size(states)}.")]
    if method == "qlora":
        words.append("The frozen weights are stored in 4-bit NF4 (about 0.52 bytes each).")
    if method == "full":
        words.append(f"Stores a whole model per task ({_size(per_task_bytes)}); {num_tasks} task"
                     f"{'s' * (num_tasks > 1)}: {_size(num_tasks * per_task_bytes)}.")
        if switch_tasks_at_serving and num_tasks > 1:
            words.append(f"Serving {num_tasks} tasks means {num_tasks} models in memory or a reload per switch.")
    else:
        words.append(f"Stores {_size(per_task_bytes, 'MiB')} per task on one shared base of {_size(shared)}; "
                     f"{num_tasks} task{'s' * (num_tasks > 1)}: {_size(shared + num_tasks * per_task_bytes)}.")
        if switch_tasks_at_serving:
            words.append("Switches tasks at serving time by swapping the small per-task part on one base model.")
    if method == "full":
        words.append("Quality: the reference the other rows are compared with.")
    elif math.isnan(difference):
        words.append(f"Quality: not measured here ({evidence}).")
    elif abs(difference) <= spread:
        words.append(f"Quality: within noise of full fine-tuning ({difference:+.3f}, spread {spread:.3f}; "
                     f"{evidence}).")
    else:
        words.append(f"Quality: {abs(difference):.3f} {'below' if difference < 0 else 'above'} full fine-tuning "
                     f"(spread {spread:.3f}; {evidence}).")
    return " ".join(words)
