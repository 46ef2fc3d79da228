"""Reference results of the alignment notebooks: runs too slow for a classroom, stored with their provenance.

Notebooks 11 and 12 draw conclusions from several seeds of PPO and DPO runs; a classroom run
has time for one. ``ftlab.align.rlhf.ppo_kl_sweep`` and ``ftlab.align.dpo.dpo_nll_sweep`` run all
seeds from the shipped SFT and reward models (``data/sft_tiny``, ``data/reward_tiny``) and write
``data/results/<name>.csv`` with one row per measurement (long format)::

    setting, seed, iteration, metric, value, seconds

(``iteration``: the PPO iteration or DPO step at which ``metric`` was measured; ``seconds``: the
whole run's training time), and beside it ``<name>.json``: every command that added rows (with
ftlab's git commit, torch version, torch threads, date), the SHA-256 of the shipped models, the
settings of the runs, and what the runs printed besides numbers (``"samples"``: greedy answers).

Rows are appended run by run; a command run again skips the (setting, seed) runs already in the
file, so an interrupted sweep picks up where it stopped. A file made with other settings or
other shipped models is refused (move it away first), and ``check_results`` says what no longer
matches, for the test that keeps the shipped files current. The provenance helpers are those of
``ftlab.sweep``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ftlab.sweep import (
    RESULTS_DIR,
    append_rows,
    check_writable,
    load_results_file,
    open_results_file,
    record_provenance,
    refuse_fast_writes,
)
from ftlab.zoo import DATA_DIR, file_sha256

COLUMNS = ["setting", "seed", "iteration", "metric", "value", "seconds"]
SHIPPED_MODELS = ("sft_tiny", "reward_tiny")
# The reference results of this format in data/results, by name, and the function that makes each (the other
# files there are ftlab.sweep's, with their own format and check).
MAKERS = {"ppo_kl": "ftlab.align.rlhf.ppo_kl_sweep", "dpo_nll": "ftlab.align.dpo.dpo_nll_sweep"}


def shipped_hashes() -> dict[str, str]:
    """SHA-256 of the shipped SFT and reward models' weights, by path: ``{"data/sft_tiny/model.safetensors": ...}``."""
    return {f"data/{name}/model.safetensors": file_sha256(DATA_DIR / name / "model.safetensors")
            for name in SHIPPED_MODELS}


def results_paths(name: str, out: str | Path = RESULTS_DIR) -> tuple[Path, Path]:
    """``(out/<name>.csv, out/<name>.json)``."""
    return Path(out) / f"{name}.csv", Path(out) / f"{name}.json"


def open_results(name: str, settings: dict, out: str | Path = RESULTS_DIR) -> pd.DataFrame:
    """The rows already in ``out/<name>.csv`` (none if new), after checking that they were made with ``settings``
    and the current shipped models (ValueError otherwise, before anything is written)."""
    csv_path, json_path = results_paths(name, out)
    check_writable([csv_path, json_path])
    return open_results_file(csv_path, json_path, COLUMNS, settings, shipped_hashes(),
                             "ftlab.align.results.check_results")


def record_command(name: str, settings: dict, command: str, out: str | Path = RESULTS_DIR) -> None:
    """Add ``command`` (with commit, torch version and threads, date) to ``out/<name>.json``, created if new."""
    _, json_path = results_paths(name, out)
    new = {"file": f"{name}.csv", "columns": COLUMNS, "settings": settings, "checkpoints": shipped_hashes(),
           "commands": [], "samples": {}}
    record_provenance(json_path, new, command)


def start_sweep(name: str, settings: dict, command: str, out: str | Path | None = None) -> tuple[Path, set]:
    """Open ``out/<name>.csv`` (default ``data/results``, refused in FAST mode) for a sweep made with ``settings``
    and record ``command`` in its provenance. Returns ``(out, done)``: the folder and the (setting, seed) runs
    already in the file, which the sweep skips."""
    out = Path(RESULTS_DIR if out is None else out)
    refuse_fast_writes(out)
    rows = open_results(name, settings, out)
    record_command(name, settings, command, out)
    return out, done_runs(rows)


def add_run(name: str, rows: list[dict], samples, out: str | Path = RESULTS_DIR) -> None:
    """Append one run's ``rows`` (dicts with ``COLUMNS``) to the CSV and its ``samples`` to the JSON under
    ``samples[setting][seed]``."""
    csv_path, json_path = results_paths(name, out)
    append_rows(csv_path, rows, COLUMNS)
    stored = json.loads(json_path.read_text())
    setting, seed = rows[0]["setting"], str(rows[0]["seed"])
    stored.setdefault("samples", {}).setdefault(setting, {})[seed] = samples
    json_path.write_text(json.dumps(stored, indent=1) + "\n")


def done_runs(rows: pd.DataFrame) -> set[tuple[str, int]]:
    """The (setting, seed) runs a results table already holds."""
    return {(str(setting), int(seed)) for setting, seed in rows[["setting", "seed"]].drop_duplicates().itertuples(
        index=False)}


def load_results(name: str, out: str | Path = RESULTS_DIR) -> pd.DataFrame:
    """The rows of ``out/<name>.csv``, with the JSON provenance in ``df.attrs["provenance"]``. A missing file raises
    FileNotFoundError naming the function that makes it."""
    csv_path, json_path = results_paths(name, out)
    maker = MAKERS.get(name)
    return load_results_file(csv_path, json_path, f"make them with {maker}()" if maker else
                             "no function of ftlab makes them")


def check_results(name: str, settings: dict, out: str | Path = RESULTS_DIR) -> list[str]:
    """What no longer matches between ``out/<name>`` and the code: the shipped models' SHA-256, the ``settings``
    (the classroom ones), the columns. Returns one sentence per problem (empty: the file is current)."""
    csv_path, json_path = results_paths(name, out)
    stored = json.loads(json_path.read_text())
    problems = []
    current = shipped_hashes()
    for path in sorted(set(current) | set(stored.get("checkpoints", {}))):
        if stored.get("checkpoints", {}).get(path) != current.get(path):
            problems.append(f"{path}: made with SHA-256 {stored.get('checkpoints', {}).get(path)}, now "
                            f"{current.get(path)}")
    settings = json.loads(json.dumps(settings))
    for key in sorted(set(settings) | set(stored.get("settings", {}))):
        if stored.get("settings", {}).get(key) != settings.get(key):
            problems.append(f"setting {key!r}: made with {stored.get('settings', {}).get(key)!r}, now "
                            f"{settings.get(key)!r}")
    columns = list(pd.read_csv(csv_path, nrows=0).columns)
    if columns != COLUMNS:
        problems.append(f"{csv_path.name}: columns {columns}, expected {COLUMNS}")
    return problems
