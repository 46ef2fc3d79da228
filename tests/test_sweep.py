"""Reference results (ftlab.sweep): the learning-rate procedure (ladder grid, best validation mean, ties to the smaller
rate, edges extended), FAST runs of ``tune`` and ``sweep`` writing the shipped columns with provenance, resuming
where they stopped, refusing files of other settings, and a check that fails when shipped results no longer match
the code."""
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ftlab import sweep as sweep_module
from ftlab.__main__ import main
from ftlab.align import results as align_results
from ftlab.compare import LEARNING_RATES_FILE, compare, load_learning_rates
from ftlab.sweep import (
    COLUMNS,
    LADDER,
    RESULTS_DIR,
    check_results,
    check_writable,
    checkpoint_hashes,
    choose_rate,
    extend,
    grid,
    load_results,
    rows_from_compare,
)
from ftlab.train import FitError
from ftlab.zoo import file_sha256


def test_grid_takes_one_ladder_rung_below_the_start_and_two_above():
    assert grid(1e-3) == [3e-4, 1e-3, 3e-3, 1e-2]
    assert grid(5e-5) == [1e-5, 3e-5, 1e-4, 3e-4]  # 5e-5 is nearest to 3e-5 in log scale
    assert all(b / a in (pytest.approx(3), pytest.approx(10 / 3)) for a, b in zip(LADDER, LADDER[1:]))


def test_extend_adds_the_next_rung_beyond_the_edge_the_best_rate_lies_on():
    rates = [3e-4, 1e-3, 3e-3, 1e-2]
    assert extend(rates, 3e-4) == [1e-4] + rates
    assert extend(rates, 1e-2) == rates + [3e-2]
    assert extend(rates, 1e-3) is None


def test_choose_rate_takes_the_best_mean_and_on_a_tie_the_smaller_rate():
    rows = pd.DataFrame({"lr": [1e-3, 1e-3, 3e-3, 3e-3, 1e-2, 1e-2],
                         "validation": [0.8, 0.9, 0.9, 0.8, 0.5, 1.0], "validation_loss": [0.3] * 6})
    best, means = choose_rate(rows)
    assert best == 1e-3 and means == {1e-3: pytest.approx(0.85), 3e-3: pytest.approx(0.85), 1e-2: 0.75}
    best, _ = choose_rate(rows.assign(validation=[0.8, 0.8, 0.9, 0.9, 0.5, 0.5]))
    assert best == 3e-3
    best, means = choose_rate(rows.assign(validation=[0.8, 0.8, 0.9, float("nan"), 0.5, 0.5]))
    assert best == 1e-3 and math.isnan(means[3e-3]), "a rate that diverged on one seed never wins"


def test_choose_rate_breaks_a_saturated_score_by_the_lower_validation_loss():
    rows = pd.DataFrame({"lr": [1e-3, 1e-3, 3e-3, 3e-3, 1e-2, 1e-2], "validation": [1.0] * 6,
                         "validation_loss": [0.30, 0.34, 0.10, 0.12, 0.20, 0.90]})
    best, means = choose_rate(rows)
    assert best == 3e-3 and means == {1e-3: 1.0, 3e-3: 1.0, 1e-2: 1.0}
    best, _ = choose_rate(rows.assign(validation=[1.0, 1.0, 0.99, 1.0, 1.0, 1.0]))
    assert best == 1e-3, "the loss only decides between rates with the same best mean score"


def test_a_run_whose_loss_stops_being_finite_is_recorded_as_diverged_and_the_sweep_goes_on(tmp_path, monkeypatch,
                                                                                        capsys):
    def run_method(base, task, name, options, data, *, seed, num_steps):
        raise FitError(f"loss is nan at step 2 (lr {options['lr']})", step=2, history={})

    monkeypatch.setattr(sweep_module, "run_method", run_method)
    rows = sweep_module.sweep("cells", ["freeze"], seeds=[0, 1], steps=[1, 2], out=tmp_path, progress=False)
    assert len(rows) == 4 and rows[["value", "validation"]].isna().all().all()
    assert "freeze seed 1 lr" in capsys.readouterr().out

    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not a divergence")

    monkeypatch.setattr(sweep_module, "run_method", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        sweep_module.sweep("cells", ["freeze"], seeds=[2], steps=[1], out=tmp_path, progress=False)


def test_check_writable_refuses_a_folder_in_place_of_a_file_and_a_file_in_place_of_a_folder(tmp_path):
    (tmp_path / "taken.csv").mkdir()
    (tmp_path / "plain").write_text("x")
    with pytest.raises(ValueError, match="taken.csv: it exists and is not a file"):
        check_writable([tmp_path / "taken.csv"])
    with pytest.raises(ValueError, match="plain is a file, not a folder"):
        check_writable([tmp_path / "plain" / "deeper" / "out.csv"])
    check_writable([tmp_path / "new" / "folder" / "out.csv", tmp_path / "plain"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "taken.csv"]  # nothing created


def test_fast_mode_refuses_to_write_the_reference_results_or_the_shipped_rates(tmp_path):
    rates = LEARNING_RATES_FILE.read_text()
    with pytest.raises(ValueError, match="must not write the reference results in data/results"):
        sweep_module.sweep("cells", ["freeze"], seeds=[0])
    with pytest.raises(ValueError, match="must not replace learning_rates.json"):
        sweep_module.tune("cells", ["freeze"], seeds=[0], out=tmp_path)
    assert LEARNING_RATES_FILE.read_text() == rates and not list(tmp_path.iterdir())


def test_tune_fast_run_writes_the_grid_with_provenance_and_the_chosen_rates_and_resumes(tmp_path, capsys):
    out, rates = tmp_path / "results", tmp_path / "rates.json"
    argv = ["tune", "--task", "cells", "--methods", "freeze", "--seeds", "2", "--out", str(out), "--rates", str(rates),
            "--threads", "1"]
    assert main(argv) == 0
    rows = pd.read_csv(out / "lr_grid_cells.csv")
    assert list(rows.columns) == COLUMNS
    assert set(rows.method) == {"freeze"} and set(rows.seed) == {0, 1} and set(rows.task) == {"cells"}
    start = load_learning_rates()["cells"]["freeze"]
    assert set(grid(start)) <= set(rows.lr) and len(rows) == 2 * rows.lr.nunique()
    chosen = json.loads(rates.read_text())["cells"]["freeze"]
    best, means = choose_rate(rows)
    assert chosen["lr"] == best and chosen["start"] == start and chosen["seeds"] == [0, 1]
    assert chosen["validation"] == {f"{lr:.3g}": round(v, 4) for lr, v in means.items()}
    assert json.loads(rates.read_text())["sentiment"] == json.loads(LEARNING_RATES_FILE.read_text())["sentiment"]
    provenance = json.loads((out / "lr_grid_cells.json").read_text())
    (command,) = provenance["commands"]
    assert command["command"] == "python -m ftlab " + " ".join(argv)
    assert set(command) == {"command", "ftlab_commit", "torch", "torch_threads", "date"}
    assert command["torch_threads"] == 1 and len(command["ftlab_commit"]) >= 7
    assert provenance["checkpoints"] == checkpoint_hashes("cells")
    assert provenance["settings"]["num_steps"] == 3 and provenance["settings"]["mode"] == "FAST"
    assert main(argv) == 0  # run again: every row is there, nothing trains
    assert len(pd.read_csv(out / "lr_grid_cells.csv")) == len(rows)
    assert len(json.loads((out / "lr_grid_cells.json").read_text())["commands"]) == 2


def test_sweep_fast_run_writes_the_columns_and_an_interrupted_run_resumes_with_the_missing_rows(tmp_path, capsys):
    out = tmp_path / "results"
    argv = ["sweep", "--task", "sentiment", "--methods", "lora", "--seeds", "2", "--steps", "1,2",
            "--train-examples", "8,16", "--out", str(out), "--threads", "1"]
    assert main(argv) == 0
    path = out / "sweep_sentiment.csv"
    rows = pd.read_csv(path)
    assert list(rows.columns) == COLUMNS and len(rows) == 2 * 2 * 2  # seeds x steps x training examples
    assert sorted(set(rows.train_examples)) == [8, 16] and rows.labels_per_class.isna().all()
    assert set(rows.lr) == {load_learning_rates()["sentiment"]["lora"]}
    assert "mean" in capsys.readouterr().out
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")  # the run was stopped before its last row
    assert main(argv) == 0
    resumed = pd.read_csv(path)
    assert len(resumed) == len(rows)
    pd.testing.assert_series_equal(resumed.iloc[-1].drop("seconds"), rows.iloc[-1].drop("seconds"))
    check_results(out / "sweep_sentiment.json")  # readable by the checker


def test_an_image_sweep_takes_labels_per_class_and_refuses_train_examples(tmp_path):
    with pytest.raises(ValueError, match="image task: sweep its data with labels_per_class"):
        sweep_module.sweep("digits", ["freeze"], seeds=[0], train_examples=[8], out=tmp_path)
    with pytest.raises(ValueError, match="text task: sweep its data with train_examples"):
        sweep_module.sweep("sentiment", ["lora"], seeds=[0], labels_per_class=[2], out=tmp_path)
    rows = sweep_module.sweep("digits", ["freeze"], seeds=[0], steps=[1], labels_per_class=[1, 2], out=tmp_path,
                              progress=False)
    assert list(rows.labels_per_class) == [1, 2] and list(rows.train_examples) == [10, 20]


def test_results_made_with_other_settings_are_refused_and_left_as_they_are(tmp_path):
    sweep_module.sweep("cells", ["freeze"], seeds=[0], steps=[1], out=tmp_path, progress=False)
    provenance = tmp_path / "sweep_cells.json"
    stored = json.loads(provenance.read_text())
    stored["settings"]["batch_size"] = 64
    provenance.write_text(json.dumps(stored))
    before = (tmp_path / "sweep_cells.csv").read_text()
    with pytest.raises(ValueError, match="made with other settings or checkpoints"):
        sweep_module.sweep("cells", ["freeze"], seeds=[1], steps=[1], out=tmp_path, progress=False)
    assert (tmp_path / "sweep_cells.csv").read_text() == before and json.loads(provenance.read_text()) == stored


def _classroom_copy(tmp_path: Path, kind: str, task: str) -> Path:
    """A tiny results file that claims the current classroom settings: what a current shipped file looks like."""
    rates = load_learning_rates()[task]
    rows = pd.DataFrame([{"task": task, "method": m, "seed": s, "num_steps": 60, "train_examples": 20,
                          "labels_per_class": 10, "lr": lr, "metric": "test accuracy", "value": 0.5,
                          "validation": 0.5, "validation_loss": 0.7, "trainable": 1, "total": 2, "seconds": 1.0}
                         for m, lr in list(rates.items())[:2] for s in (0, 1)])
    rows.to_csv(tmp_path / f"{kind}_{task}.csv", index=False)
    json_path = tmp_path / f"{kind}_{task}.json"
    json_path.write_text(json.dumps({"settings": sweep_module.run_settings(kind, task, "classroom"),
                                     "checkpoints": checkpoint_hashes(task), "commands": []}))
    return json_path


def test_check_results_passes_a_current_file_and_names_a_changed_checkpoint_setting_and_rate(tmp_path):
    json_path = _classroom_copy(tmp_path, "sweep", "cells")
    assert check_results(json_path) == []
    stored = json.loads(json_path.read_text())
    name = next(iter(stored["checkpoints"]))
    stored["checkpoints"][name] = "0" * 64
    stored["settings"]["method_options"]["lora"] = {"r": 4}
    json_path.write_text(json.dumps(stored))
    rows = pd.read_csv(json_path.with_suffix(".csv"))
    rows.loc[rows.method == rows.method.iloc[0], "lr"] = 0.5
    rows.to_csv(json_path.with_suffix(".csv"), index=False)
    problems = check_results(json_path)
    assert len(problems) == 3
    assert problems[0].startswith(f"checkpoint {name}: made with SHA-256 {'0' * 64}, now ")
    assert problems[1].startswith("setting 'method_options'")
    assert problems[2].startswith(f"method {rows.method.iloc[0]}: rows use lr 0.5, the current rate is")


def test_check_results_names_a_tuned_rate_that_the_grid_rows_do_not_pick(tmp_path):
    json_path = _classroom_copy(tmp_path, "lr_grid", "digits")
    rows = pd.read_csv(json_path.with_suffix(".csv"))
    method = rows.method.iloc[0]
    rows = pd.concat([rows, rows[rows.method == method].assign(lr=0.1, validation=0.9)], ignore_index=True)
    rows.to_csv(json_path.with_suffix(".csv"), index=False)
    other = next(name for name in load_learning_rates()["digits"] if name not in set(rows.method))
    rates = {"digits": {method: {"lr": rows.lr.iloc[0], "validation": {}},  # claims the grid chose the first rate
                        other: {"lr": 1e-3, "validation": {}}}}  # claims a tuning the grid has no rows for
    (tmp_path / "rates.json").write_text(json.dumps(rates))
    assert check_results(json_path, tmp_path / "rates.json") == [
        f"method {method}: rates.json says lr {rows.lr.iloc[0]:g}, the grid's rows pick 0.1",
        f"method {other}: rates.json says it was tuned, the grid has no rows for it"]


# The alignment notebooks' reference results have their own format, checked in tests/test_align_results.py.
# the alignment files are checked by test_align_results; the notebook timings are a record, not results of runs
SWEEP_FILES = [path for path in sorted(RESULTS_DIR.glob("*.json"))
               if path.stem not in align_results.MAKERS and path.stem != "notebook_times"]


@pytest.mark.parametrize("json_path", SWEEP_FILES, ids=lambda p: p.name)
def test_shipped_results_were_made_with_the_current_checkpoints_settings_and_learning_rates(json_path):
    assert check_results(json_path) == [], f"{json_path.name} is stale: rerun the command in its provenance"


def test_file_sha256_is_the_full_hex_digest_of_the_file(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert file_sha256(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert shutil.which("git") is None or sweep_module.git_commit() != "unknown"


def test_a_live_compare_run_becomes_rows_of_the_reference_schema_beside_the_loaded_sweep(tmp_path):
    with pytest.raises(FileNotFoundError, match="make them with python -m ftlab sweep --task cells"):
        load_results("sweep", "cells", tmp_path)
    stored = sweep_module.sweep("cells", ["freeze"], seeds=[0], steps=[1], out=tmp_path, progress=False)
    loaded = load_results("sweep", "cells", tmp_path)
    pd.testing.assert_frame_equal(loaded, stored)
    assert loaded.attrs["provenance"]["settings"]["task"] == "cells"
    live = rows_from_compare(compare(["freeze"], "cells", num_steps=1, batch_size=8, labels_per_class=2,
                                     sizes={"validation": 4, "test": 40}, measure=False))
    assert list(live.columns) == COLUMNS
    same = ["task", "method", "seed", "num_steps", "train_examples", "labels_per_class", "lr", "metric", "value",
            "validation", "trainable", "total"]
    assert live[same].iloc[0].tolist() == loaded[same].iloc[0].tolist()  # the FAST budget is the sweep's budget


def test_check_results_hands_a_continual_sweep_to_its_own_checker(tmp_path):
    from ftlab.continual import SWEEP_COLUMNS, sweep_settings

    (tmp_path / "continual_digits.csv").write_text(",".join(SWEEP_COLUMNS) + "\n")
    stored = {"settings": sweep_settings("digits", "classroom"), "checkpoints": checkpoint_hashes("digits")}
    (tmp_path / "continual_digits.json").write_text(json.dumps(stored))
    assert check_results(tmp_path / "continual_digits.json") == []
    stored["settings"]["num_steps"] = 30
    (tmp_path / "continual_digits.json").write_text(json.dumps(stored))
    assert check_results(tmp_path / "continual_digits.json") == ["setting 'num_steps': made with 30, now 60"]
