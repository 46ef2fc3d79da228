"""Reference results too slow for a classroom run: learning-rate grids and budget sweeps, with their provenance.

Two commands write them (see ``python -m ftlab tune --help`` and ``sweep --help``)::

    python -m ftlab tune --task sentiment --seeds 3
    python -m ftlab sweep --task sentiment --seeds 5 --steps 30,80,150 --train-examples 16,64,400
    python -m ftlab sweep --task digits --seeds 5 --labels-per-class 1,2,5,20

**Fair learning rates** (``tune``). A method's rank in a comparison says as much about its learning
rate as about the method, so every method gets its rate on every task by one procedure:

1. a grid of 4 rates around the method's starting rate r0 (the hand-set rate it had before tuning),
   on the ladder 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, ... (``LADDER``, steps of about x3): the rung nearest
   to r0, one rung below and two above (``GRID_RUNGS``);
2. every rate trains with ``compare``'s budget for the task (``default_budget``) for each seed
   (3 by default), and is scored on the task's **validation** split, never on the test split;
3. the rate with the best mean validation score wins; where several rates share the best mean
   (a score that saturates, such as 1.000 on an easy validation split), the lower mean validation
   loss decides, then the smaller rate;
4. while the winner lies on an edge of the grid, the grid grows by the next rung beyond that edge,
   at most ``MAX_EXTENSIONS`` times, so that the best rate is bracketed (a winner still on an edge
   is marked ``"at_edge"`` in the rates file).

Every run becomes a row of ``data/results/lr_grid_<task>.csv``; the chosen rates go to
``ftlab/learning_rates.json`` (with the grid's means), which ``ftlab.compare`` reads.

**Budget sweeps** (``sweep``): every method over seeds, numbers of steps and amounts of training
data (training examples for the text tasks, labels per class for the image tasks), with the
chosen rates, into ``data/results/sweep_<task>.csv``. At a constant learning rate the budgets of
one (method, seed, data size) share one run, scored at each number of steps (``run_method``).

**Files.** One row per run, the columns ``COLUMNS``; beside each CSV a JSON file with the
provenance: every command that added rows (with ftlab's git commit, torch version, torch threads,
date), the SHA-256 of the checkpoints the runs fine-tuned, and the settings (budget, method options,
learning rates for a sweep). ``check_results`` says whether a shipped file still matches the code.

**Resumable.** Rows are appended as runs finish; a command run again skips the rows that are
already in the file, so an interrupted command picks up where it stopped and a subset of methods
can run at a time. A file whose recorded settings or checkpoints differ from the current ones is
refused: move it away first.
"""
from __future__ import annotations

import csv
import datetime
import json
import math
import os
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import torch

from ftlab.compare import (
    CHECKPOINTS,
    IMAGE_TASKS,
    LEARNING_RATES_FILE,
    METHOD_OPTIONS,
    METRICS,
    TASK_SETTINGS,
    check_seeds,
    default_budget,
    fit_options,
    load_task_model,
    resolve_methods,
    run_method,
    task_data,
)
from ftlab.config import mode
from ftlab.train import FitError
from ftlab.validate import check_positive_int
from ftlab.zoo import file_sha256

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "data" / "results"
COLUMNS = ["task", "method", "seed", "num_steps", "train_examples", "labels_per_class", "lr", "metric", "value",
           "validation", "validation_loss", "trainable", "total", "seconds"]
KEY = ["method", "seed", "num_steps", "train_examples", "labels_per_class", "lr"]  # what makes a row a different run
LADDER = [float(f"{m}e{k}") for k in range(-7, 1) for m in (1, 3)]  # 1e-07, 3e-07, ..., 0.1, 0.3: about x3 apart
GRID_RUNGS = (-1, 0, 1, 2)
MAX_EXTENSIONS = 2
CHECKPOINT_FILES = ("model.safetensors", "config.json", "tokenizer.json", "vocab.txt")


# ---------------------------------------------------------------- provenance


def checkpoint_hashes(task: str) -> dict[str, str]:
    """SHA-256 of the files of the checkpoint ``task`` fine-tunes (weights, config, tokenizer), by
    ``family/name/file``: ``{"resnet/glyphs/resnet18_glyphs.safetensors": "9f2c..."}``."""
    from ftlab.zoo import OFFLINE

    family, name = CHECKPOINTS[task]
    path = Path(OFFLINE[family][name]())
    files = [path] if path.is_file() else [path / f for f in CHECKPOINT_FILES if (path / f).is_file()]
    return {f"{family}/{name}/{f.name}": file_sha256(f) for f in files}


def git_commit() -> str:
    """ftlab's git commit (``-dirty`` when files differ from it), or ``"unknown"`` outside a git checkout."""
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def _jsonable(value):
    return json.loads(json.dumps(value))  # tuples become lists, as they come back from a file


def run_settings(kind: str, task: str, run_mode: str | None = None) -> dict:
    """What the rows of a ``kind`` (``"lr_grid"`` or ``"sweep"``) file of ``task`` depend on besides their key
    columns: the budget, every method's options, ``fit``'s schedule, the metric, the run mode and, for a sweep,
    the learning rates. Two commands may add rows to one file only when these are equal."""
    run_mode = run_mode or mode()
    budget = default_budget(task, run_mode)
    settings = {"kind": kind, "task": task, "mode": run_mode, "metric": METRICS[task],
                "batch_size": budget["batch_size"], "sizes": budget["sizes"],
                "method_options": METHOD_OPTIONS[task], "fit_options at 100 steps": fit_options(task, 100)}
    if kind == "lr_grid":
        settings.update(num_steps=budget["num_steps"], grid_rungs=list(GRID_RUNGS), max_extensions=MAX_EXTENSIONS,
                        labels_per_class=budget["labels_per_class"] if task in IMAGE_TASKS else None)
    else:
        settings["learning_rates"] = {name: options["lr"] for name, options in TASK_SETTINGS[task].items()}
    return _jsonable(settings)


def results_paths(out: str | Path, kind: str, task: str) -> tuple[Path, Path]:
    """``(csv, json)`` paths of a results file: ``out/<kind>_<task>.csv`` and ``.json``."""
    return Path(out) / f"{kind}_{task}.csv", Path(out) / f"{kind}_{task}.json"


def check_writable(paths: list[str | Path]) -> None:
    """Raise ValueError, before any work, when one of ``paths`` (files to write) cannot be written or created.

    An existing path must be a writable file (not a folder); for a new one, its nearest existing
    parent must be a folder in which a file can be created (tried with a temporary file, removed).
    Nothing is left behind.
    """
    for path in map(Path, paths):
        if path.exists():
            if not path.is_file():
                raise ValueError(f"cannot write {path}: it exists and is not a file (a folder?); choose another --out")
            if not os.access(path, os.W_OK):
                raise ValueError(f"cannot write {path}: permission denied; choose another --out")
            continue
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise ValueError(f"cannot create {path}: {parent} is a file, not a folder; choose another --out")
        try:
            with tempfile.TemporaryFile(dir=parent):
                pass
        except OSError as err:
            raise ValueError(f"cannot create files in {parent} ({err.strerror}); choose another --out") from err


def refuse_fast_writes(out: str | Path, rates_file: str | Path | None = None) -> None:
    """A FAST-mode run (tiny settings) must not write into the shipped ``data/results`` (nor replace the shipped
    learning rates with ``rates_file``): raise ValueError."""
    if mode() != "FAST":
        return
    if Path(out).resolve() == RESULTS_DIR.resolve():
        raise ValueError("FAST mode (FTLAB_FAST=1) must not write the reference results in data/results: "
                         "pass another out folder, or unset FTLAB_FAST")
    if rates_file is not None and Path(rates_file).resolve() == LEARNING_RATES_FILE.resolve():
        raise ValueError(f"FAST mode (FTLAB_FAST=1) must not replace {LEARNING_RATES_FILE.name}: pass another "
                         f"rates file, or unset FTLAB_FAST")


def open_results_file(csv_path: Path, json_path: Path, columns: list[str], settings: dict, checkpoints: dict,
                      checker: str) -> pd.DataFrame:
    """The rows already in a results file ``csv_path`` (an empty table with ``columns`` if new), after checking its
    provenance ``json_path``: a file made with other ``settings`` (compared as JSON stores them) or other
    ``checkpoints`` (SHA-256 by file), or a CSV with other columns, raises ValueError, before anything is written,
    naming ``checker``, the function that says what differs. Every results file of ftlab is opened this way."""
    if json_path.exists():
        stored = json.loads(json_path.read_text())
        if stored.get("settings") != json.loads(json.dumps(settings)) or stored.get("checkpoints") != checkpoints:
            raise ValueError(f"{json_path} was made with other settings or checkpoints than the current ones "
                             f"(see {checker}); move {csv_path.name} and {json_path.name} away to start afresh")
    if not csv_path.exists():
        return pd.DataFrame(columns=columns)
    rows = pd.read_csv(csv_path)
    if list(rows.columns) != columns:
        raise ValueError(f"{csv_path} has columns {list(rows.columns)}, expected {columns}")
    return rows


def record_provenance(json_path: Path, new: dict, command: str, extra: dict | None = None) -> dict:
    """Add ``command`` (with ftlab's git commit, torch version and threads, date) to the provenance file
    ``json_path``, which starts as ``new`` (with an empty ``"commands"`` list) when there is none yet; ``extra``
    entries replace the stored ones. Writes the file and returns its content."""
    stored = json.loads(json_path.read_text()) if json_path.exists() else new
    stored["commands"].append({"command": command, "ftlab_commit": git_commit(), "torch": torch.__version__,
                               "torch_threads": torch.get_num_threads(),
                               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    stored.update(extra or {})
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(stored, indent=1) + "\n")
    return stored


def provenance_problems(stored: dict, settings: dict, checkpoints: dict) -> list[str]:
    """What differs between a results file's provenance ``stored`` and the current ``checkpoints`` (SHA-256 by
    file) and ``settings``: one sentence per checkpoint or setting (empty: the file was made with the current ones).
    Every ``check_...`` of a results file starts with it."""
    problems = []
    for name in sorted(set(checkpoints) | set(stored["checkpoints"])):
        if stored["checkpoints"].get(name) != checkpoints.get(name):
            problems.append(f"checkpoint {name}: made with SHA-256 {stored['checkpoints'].get(name)}, "
                            f"now {checkpoints.get(name)}")
    for name in sorted(set(settings) | set(stored["settings"])):
        if stored["settings"].get(name) != settings.get(name):
            problems.append(f"setting {name!r}: made with {stored['settings'].get(name)!r}, now {settings.get(name)!r}")
    return problems


def load_results_file(csv_path: Path, json_path: Path, how_to_make: str) -> pd.DataFrame:
    """The rows of a results file ``csv_path`` with its provenance ``json_path`` in ``df.attrs["provenance"]``. A
    missing file raises FileNotFoundError that says ``how_to_make`` it."""
    if not csv_path.exists() or not json_path.exists():
        raise FileNotFoundError(f"no reference results {csv_path}: {how_to_make}")
    rows = pd.read_csv(csv_path)
    rows.attrs["provenance"] = json.loads(json_path.read_text())
    return rows


def open_results(kind: str, task: str, out: str | Path) -> pd.DataFrame:
    """The rows already in ``out/<kind>_<task>.csv`` (none if new). Raises ValueError when the file was made
    with other settings or checkpoints than the current ones, or has other columns than ``COLUMNS``."""
    csv_path, json_path = results_paths(out, kind, task)
    return open_results_file(csv_path, json_path, COLUMNS, run_settings(kind, task), checkpoint_hashes(task),
                             "check_results")


def record_command(kind: str, task: str, out: str | Path, command: str, extra: dict | None = None) -> dict:
    """Add ``command`` to the provenance file ``out/<kind>_<task>.json`` (created if new) and return its content."""
    _, json_path = results_paths(out, kind, task)
    new = {"file": f"{kind}_{task}.csv", "columns": COLUMNS, "settings": run_settings(kind, task),
           "checkpoints": checkpoint_hashes(task), "commands": []}
    return record_provenance(json_path, new, command, extra)


def append_rows(csv_path: Path, rows: list[dict], columns: list[str] = COLUMNS) -> None:
    """Append ``rows`` (dicts with ``columns``, default this module's ``COLUMNS``) to ``csv_path``, writing the
    header if the file is new. Every results file of ftlab grows this way, one finished run at a time."""
    new = not csv_path.exists()
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerows([{c: row[c] for c in columns} for row in rows])


def _key(method, seed, num_steps, train_examples, labels_per_class, lr) -> tuple:
    missing = labels_per_class is None or (isinstance(labels_per_class, float) and math.isnan(labels_per_class))
    return (method, int(seed), int(num_steps), int(train_examples), None if missing else int(labels_per_class),
            float(f"{lr:.3g}"))


def done_keys(rows: pd.DataFrame) -> set[tuple]:
    """The runs a results table already holds, as comparable keys."""
    return {_key(*values) for values in rows[KEY].itertuples(index=False)}


# ---------------------------------------------------------------- running rows


def _run_rows(task: str, runs: dict, seeds: list[int], lrs: dict[str, list[float]], steps: list[int],
              sizes: list, budget: dict, done: set, csv_path: Path, progress: bool) -> int:
    """Train every (seed, data size, method, lr) with work left, append its rows as it finishes; return rows added.

    ``runs``: ``resolve_methods``'s; ``lrs``: the rates to try per label; ``sizes``: the labels per
    class (image tasks) or training examples (text tasks; None = all) to sweep.
    """
    added = 0
    for seed in seeds:
        base = tokenizer = None
        for size in sizes:
            data = None
            for label, (name, options) in runs.items():
                for lr in lrs[label]:
                    if base is None:  # loaded only when this seed has work left
                        base, tokenizer = load_task_model(task, None, seed)
                    if data is None:
                        size_option = ({"labels_per_class": size} if task in IMAGE_TASKS else
                                       {"labels_per_class": budget["labels_per_class"], "train_examples": size})
                        data = task_data(task, tokenizer, seed=seed, sizes=budget["sizes"],
                                         batch_size=budget["batch_size"], **size_option,
                                         max_length=base.config.n_positions if task == "instructions" else None)
                    todo = [n for n in steps if _key(label, seed, n, data["train_examples"], data["labels_per_class"],
                                                     lr) not in done]
                    if not todo:
                        continue
                    try:
                        results = run_method(base, task, name, {**options, "lr": lr}, data, seed=seed, num_steps=todo)
                    except FitError as err:  # the loss or a gradient stopped being finite: this rate diverged
                        print(f"  {label} seed {seed} lr {lr:.3g} diverged: {err}", flush=True)
                        results = [{"num_steps": n, "lr": lr, "value": math.nan, "validation": math.nan,
                                    "validation_loss": math.nan,
                                    "seconds": math.nan, "trainable": math.nan, "total": math.nan} for n in todo]
                    rows = [{"task": task, "method": label, "seed": seed, "train_examples": data["train_examples"],
                             "labels_per_class": data["labels_per_class"], "metric": METRICS[task], **row}
                            for row in results]
                    append_rows(csv_path, rows)
                    added += len(rows)
                    if progress:
                        for row in rows:
                            print(f"  {label:<8} seed {seed} lr {lr:.3g} steps {row['num_steps']:>4} "
                                  f"examples {row['train_examples']:>4}: validation {row['validation']:.3f} "
                                  f"test {row['value']:.3f} ({row['seconds']:.0f} s)", flush=True)
    return added


def grid(start: float) -> list[float]:
    """The first grid of ``tune`` around ``start``: the ``LADDER`` rungs at ``GRID_RUNGS`` from the rung nearest
    to ``start`` (in log scale), smallest first: ``grid(1e-3) == [3e-4, 1e-3, 3e-3, 1e-2]``."""
    nearest = min(range(len(LADDER)), key=lambda i: abs(math.log(LADDER[i] / start)))
    rungs = [nearest + k for k in GRID_RUNGS]
    if rungs[0] < 0 or rungs[-1] >= len(LADDER):
        raise ValueError(f"start rate {start:g} is too close to the end of the ladder {LADDER[0]:g}..{LADDER[-1]:g}")
    return [LADDER[i] for i in rungs]


def extend(rates: list[float], best: float) -> list[float] | None:
    """``rates`` with the next ``LADDER`` rung beyond the edge that ``best`` lies on; None when ``best`` is inside
    (or the ladder ends)."""
    i = LADDER.index(best)
    if best == rates[0] and i > 0:
        return [LADDER[i - 1]] + rates
    if best == rates[-1] and i + 1 < len(LADDER):
        return rates + [LADDER[i + 1]]
    return None


def choose_rate(rows: pd.DataFrame) -> tuple[float, dict[float, float]]:
    """``(best lr, {lr: mean validation})`` over the rows of one method: the best mean validation score wins;
    among rates that share it, the lower mean validation loss, then the smaller rate.

    A rate with a diverged run (validation NaN: the loss stopped being finite) has mean NaN and never wins."""
    def mean_or_nan(values: pd.Series) -> float:
        return values.mean() if values.notna().all() else math.nan

    means = rows.groupby("lr")["validation"].agg(mean_or_nan).sort_index()
    losses = rows.groupby("lr")["validation_loss"].agg(mean_or_nan).sort_index()

    def rank(lr: float) -> tuple:
        if math.isnan(means[lr]):
            return (-math.inf, -math.inf, -lr)
        loss = losses[lr]
        return (round(means[lr], 10), -math.inf if math.isnan(loss) else -round(loss, 10), -lr)

    best = max(means.index, key=rank)
    return float(best), {float(lr): float(v) for lr, v in means.items()}


def _command(name: str, **arguments) -> str:
    return f"ftlab.sweep.{name}(" + ", ".join(f"{k}={v!r}" for k, v in arguments.items()) + ")"


def tune(task: str, methods="all", *, seeds=(0, 1, 2), out: str | Path = RESULTS_DIR,
         rates_file: str | Path = LEARNING_RATES_FILE, command: str | None = None, progress: bool = True) -> dict:
    """Choose each method's learning rate on ``task`` by the procedure of the module docstring.

    ``methods``: ``"all"`` or a list of names; ``seeds``: the seeds each rate is averaged over.
    Rows go to ``out/lr_grid_<task>.csv`` (skipping those already there), the chosen rates to
    ``rates_file`` (default ``ftlab/learning_rates.json``; entries of other methods and tasks are
    kept). Returns ``{method: {"lr": chosen, "start": r0, "validation": {lr: mean}}}``.
    """
    seeds = check_seeds(seeds)
    refuse_fast_writes(out, rates_file)
    runs, _ = resolve_methods(methods, task)
    csv_path, json_path = results_paths(out, "lr_grid", task)
    check_writable([csv_path, json_path, rates_file])
    rows = open_results("lr_grid", task, out)
    stored = json.loads(Path(rates_file if Path(rates_file).exists() else LEARNING_RATES_FILE).read_text())
    budget = default_budget(task)
    size = budget["labels_per_class"] if task in IMAGE_TASKS else None  # the budget's data: tuned where compared
    record_command("lr_grid", task, out, command or _command("tune", task=task, methods=methods, seeds=seeds))
    chosen = {}
    for label, (name, options) in runs.items():
        start = stored[task][name].get("start", stored[task][name]["lr"])
        lrs = grid(start)
        for extensions in range(MAX_EXTENSIONS + 1):
            _run_rows(task, {label: (name, options)}, seeds, {label: lrs}, [budget["num_steps"]], [size], budget,
                      done_keys(rows), csv_path, progress)
            rows = open_results("lr_grid", task, out)
            mine = rows[(rows.method == label) & rows.seed.isin(seeds) & rows.lr.isin(lrs)]
            best, means = choose_rate(mine)
            wider = extend(lrs, best)
            if wider is None or extensions == MAX_EXTENSIONS:
                break
            lrs = wider
        chosen[name] = {"lr": best, "start": start, "validation": means}
        stored[task][name] = {"lr": best, "start": start, "seeds": seeds, "num_steps": budget["num_steps"],
                              "validation": {f"{lr:.3g}": None if math.isnan(v) else round(v, 4)
                                             for lr, v in means.items()}}
        if wider is not None:  # still on an edge after MAX_EXTENSIONS: a better rate may lie beyond
            stored[task][name]["at_edge"] = True
        write_learning_rates(stored, rates_file)
        if progress:
            print(f"{task} {name}: lr {best:.3g} (validation mean {means[best]:.3f} over {len(seeds)} seeds)",
                  flush=True)
    return chosen


def write_learning_rates(stored: dict, path: str | Path) -> None:
    """Write a learning-rates file (``{"about": ..., task: {method: entry}}``), one method per line."""
    lines = ["{", f' "about": {json.dumps(stored["about"])},']
    tasks = [task for task in stored if task != "about"]
    for i, task in enumerate(tasks):
        lines.append(f' "{task}": {{')
        methods = list(stored[task])
        for j, name in enumerate(methods):
            lines.append(f'  "{name}": {json.dumps(stored[task][name])}' + ("," if j + 1 < len(methods) else ""))
        lines.append(" }" + ("," if i + 1 < len(tasks) else ""))
    Path(path).write_text("\n".join(lines + ["}"]) + "\n")


def sweep(task: str, methods="all", *, seeds=(0, 1, 2, 3, 4), steps: list[int] | None = None,
          train_examples: list[int] | None = None, labels_per_class: list[int] | None = None,
          out: str | Path = RESULTS_DIR, command: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Every method x seed x number of steps x data size on ``task``, with the chosen learning rates.

    ``steps``: default the task's budget; ``train_examples`` (text tasks; default all) or
    ``labels_per_class`` (image tasks; default the budget's). Rows go to ``out/sweep_<task>.csv``
    (skipping those already there); returns every row of the file.
    """
    seeds = check_seeds(seeds)
    refuse_fast_writes(out)
    budget = default_budget(task)
    steps = sorted({check_positive_int("steps", n) for n in (steps or [budget["num_steps"]])})
    if task in IMAGE_TASKS:
        if train_examples is not None:
            raise ValueError(f"{task!r} is an image task: sweep its data with labels_per_class, not train_examples")
        sizes = [check_positive_int("labels_per_class", k) for k in (labels_per_class or [budget["labels_per_class"]])]
    else:
        if labels_per_class is not None:
            raise ValueError(f"{task!r} is a text task: sweep its data with train_examples, not labels_per_class")
        sizes = [check_positive_int("train_examples", n) for n in train_examples] if train_examples else [None]
    runs, _ = resolve_methods(methods, task)
    csv_path, json_path = results_paths(out, "sweep", task)
    check_writable([csv_path, json_path])
    rows = open_results("sweep", task, out)
    record_command("sweep", task, out, command or _command("sweep", task=task, methods=methods, seeds=seeds,
                                                           steps=steps, train_examples=train_examples,
                                                           labels_per_class=labels_per_class))
    lrs = {label: [options["lr"]] for label, (_, options) in runs.items()}
    _run_rows(task, runs, seeds, lrs, steps, sizes, budget, done_keys(rows), csv_path, progress)
    return open_results("sweep", task, out)


# ---------------------------------------------------------------- reading results in a notebook


def load_results(kind: str, task: str, out: str | Path = RESULTS_DIR) -> pd.DataFrame:
    """The rows of ``out/<kind>_<task>.csv`` (``kind``: ``"sweep"`` or ``"lr_grid"``) with the provenance in
    ``df.attrs["provenance"]``. A missing file raises FileNotFoundError naming the command that makes it."""
    command = "tune" if kind == "lr_grid" else "sweep"
    csv_path, json_path = results_paths(out, kind, task)
    return load_results_file(csv_path, json_path, f"make them with python -m ftlab {command} --task {task} "
                                                  f"(see python -m ftlab {command} --help)")


def rows_from_compare(df: pd.DataFrame) -> pd.DataFrame:
    """``ftlab.compare.compare``'s table as reference-result rows (``COLUMNS``), e.g. a live run to draw over a
    stored sweep with ``ftlab.viz.plot_sweep(rows, live=rows_from_compare(df))``."""
    metric = df.attrs["metric"]
    rows = df.rename(columns={metric: "value"}).assign(
        task=df.attrs["task"], metric=metric, num_steps=df.attrs["num_steps"],
        train_examples=df.attrs["train_examples"], labels_per_class=df.attrs["labels_per_class"])
    return rows[COLUMNS].reset_index(drop=True)


# ---------------------------------------------------------------- are shipped results still valid?


def check_results(json_path: str | Path, rates_file: str | Path = LEARNING_RATES_FILE) -> list[str]:
    """What no longer matches between a results file (its ``.json`` provenance and ``.csv`` rows) and the code.

    Checks: the checkpoints' SHA-256 and the settings (``run_settings``, classroom mode) equal the
    current ones; the CSV has ``COLUMNS``; a sweep's rows use the current learning rates; for a
    grid, each tuned method's rate in ``rates_file`` is the one ``choose_rate`` picks from the grid's
    rows. Returns the problems found, one sentence each (empty: the file is current). A continual sweep's file
    (``kind`` ``"continual"``) is checked by ``ftlab.continual.check_sweep``, a scenario's reference file by
    ``ftlab.scenarios.check_reference``.
    """
    json_path = Path(json_path)
    stored = json.loads(json_path.read_text())
    if stored["settings"]["kind"] == "continual":
        from ftlab.continual import check_sweep  # continual imports this module's helpers

        return check_sweep(json_path)
    if stored["settings"]["kind"] == "scenarios":  # notebook 17's files: one experiment's rows each
        from ftlab import scenarios  # here: ftlab.scenarios imports this module

        return scenarios.check_reference(json_path)
    if stored["settings"]["kind"].startswith("overfitting"):  # notebook 14's files have their own settings
        from ftlab import overfitting  # here: ftlab.overfitting imports this module

        return overfitting.check_results(json_path)
    kind, task = stored["settings"]["kind"], stored["settings"]["task"]
    settings = run_settings(kind, task, "classroom")
    problems = provenance_problems(stored, settings, checkpoint_hashes(task))
    csv_path = json_path.with_suffix(".csv")
    rows = pd.read_csv(csv_path)
    if list(rows.columns) != COLUMNS:
        return problems + [f"{csv_path.name}: columns {list(rows.columns)}, expected {COLUMNS}"]
    if kind == "sweep":
        rates = settings.get("learning_rates", {})
        for name, lr in rows.groupby("method")["lr"].first().items():
            if name in rates and not math.isclose(lr, rates[name], rel_tol=1e-6):
                problems.append(f"method {name}: rows use lr {lr:g}, the current rate is {rates[name]:g}")
    else:
        stored_rates = json.loads(Path(rates_file).read_text()).get(task, {})
        for name, entry in stored_rates.items():
            if "validation" not in entry:
                continue
            own = rows[(rows.method == name) & rows.seed.isin(entry.get("seeds", rows.seed))]
            if own.empty:
                problems.append(f"method {name}: {Path(rates_file).name} says it was tuned, the grid has no rows "
                                f"for it")
                continue
            picked, _ = choose_rate(own)
            if not math.isclose(picked, entry["lr"], rel_tol=1e-6):
                problems.append(f"method {name}: {Path(rates_file).name} says lr {entry['lr']:g}, the grid's rows "
                                f"pick {picked:g}")
    return problems
