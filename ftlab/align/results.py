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

import datetime
import json
from pathlib import Path

import pandas as pd
import torch

from ftlab.sweep import RESULTS_DIR, append_rows, check_writable, git_commit
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


def refuse_fast_writes(out: str | Path, fast: bool) -> None:
    """A FAST-mode run (tiny settings) must not write into the shipped ``data/results``: raise ValueError."""
    if fast and Path(out).resolve() == RESULTS_DIR.resolve():
        raise ValueError("FAST mode (FTLAB_FAST=1) must not write the reference results in data/results: pass "
                         "another out folder, or unset FTLAB_FAST")


def open_results(name: str, settings: dict, out: str | Path = RESULTS_DIR) -> pd.DataFrame:
    """The rows already in ``out/<name>.csv`` (none if new), after checking that they were made with ``settings``
    and the current shipped models (ValueError otherwise, before anything is written)."""
    csv_path, json_path = results_paths(name, out)
    check_writable([csv_path, json_path])
    if json_path.exists():
        stored = json.loads(json_path.read_text())
        if stored.get("settings") != json.loads(json.dumps(settings)) or stored.get("checkpoints") != shipped_hashes():
            raise ValueError(f"{json_path} was made with other settings or shipped models than the current ones "
                             f"(see ftlab.align.results.check_results); move {csv_path.name} and {json_path.name} "
                             f"away to start afresh")
    if not csv_path.exists():
        return pd.DataFrame(columns=COLUMNS)
    rows = pd.read_csv(csv_path)
    if list(rows.columns) != COLUMNS:
        raise ValueError(f"{csv_path} has columns {list(rows.columns)}, expected {COLUMNS}")
    return rows


def record_command(name: str, settings: dict, command: str, out: str | Path = RESULTS_DIR) -> None:
    """Add ``command`` (with commit, torch version and threads, date) to ``out/<name>.json``, created if new."""
    _, json_path = results_paths(name, out)
    stored = json.loads(json_path.read_text()) if json_path.exists() else {
        "file": f"{name}.csv", "columns": COLUMNS, "settings": settings, "checkpoints": shipped_hashes(),
        "commands": [], "samples": {}}
    stored["commands"].append({"command": command, "ftlab_commit": git_commit(), "torch": torch.__version__,
                               "torch_threads": torch.get_num_threads(),
                               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(stored, indent=1) + "\n")


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
    if not csv_path.exists() or not json_path.exists():
        maker = MAKERS.get(name)
        raise FileNotFoundError(f"no reference results {csv_path.name} in {out}" +
                                (f": make them with {maker}()" if maker else ""))
    rows = pd.read_csv(csv_path)
    rows.attrs["provenance"] = json.loads(json_path.read_text())
    return rows


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
