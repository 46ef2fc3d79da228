"""The reference results of notebook 02 (ftlab.transfer.write_freezing_results): a FAST run writes compare_freezing's
columns with provenance and resumes where it stopped, files of other settings are refused and left as they are, and
a check fails when the shipped file no longer matches the checkpoint, the budget or the recipes' code."""
import json

import pandas as pd
import pytest

from ftlab import transfer
from ftlab.sweep import checkpoint_hashes
from ftlab.transfer import (
    FREEZE_RECIPES,
    FREEZING_COLUMNS,
    FREEZING_RESULTS,
    check_freezing_results,
    freezing_settings,
    load_freezing_results,
    write_freezing_results,
)


def test_a_fast_run_writes_every_recipe_per_seed_with_provenance_and_resumes_with_the_missing_seeds(tmp_path, capsys):
    path = tmp_path / "freezing.csv"
    first = write_freezing_results([0], path=path, command="first")
    assert list(first.columns) == FREEZING_COLUMNS
    assert list(zip(first.method, first.seed)) == [(name, 0) for name in FREEZE_RECIPES]
    assert first[["test accuracy", "shifted accuracy", "validation"]].stack().between(0, 1).all()
    capsys.readouterr()
    both = write_freezing_results([0, 1], path=path, command="second")
    assert "seed 0:" not in capsys.readouterr().out  # seed 0 was in the file already
    assert list(both.seed) == [0] * len(FREEZE_RECIPES) + [1] * len(FREEZE_RECIPES)
    pd.testing.assert_frame_equal(both.iloc[:len(FREEZE_RECIPES)], first)
    provenance = both.attrs["provenance"]
    assert [c["command"] for c in provenance["commands"]] == ["first", "second"]
    assert provenance["settings"] == freezing_settings("FAST")
    assert provenance["checkpoints"] == checkpoint_hashes("digits")
    assert set(provenance["commands"][0]) == {"command", "ftlab_commit", "torch", "torch_threads", "date"}


def test_a_file_made_with_other_settings_is_refused_and_left_as_it_is(tmp_path):
    path = tmp_path / "freezing.csv"
    write_freezing_results([0], path=path, progress=False)
    stored = json.loads(path.with_suffix(".json").read_text())
    stored["settings"]["num_steps"] = 99
    path.with_suffix(".json").write_text(json.dumps(stored))
    before = path.read_text()
    with pytest.raises(ValueError, match="made with other settings or checkpoints"):
        write_freezing_results([1], path=path, progress=False)
    assert path.read_text() == before and json.loads(path.with_suffix(".json").read_text()) == stored


def test_fast_mode_refuses_to_write_the_shipped_file():
    with pytest.raises(ValueError, match="FAST mode .* must not write the reference results"):
        write_freezing_results([0], path=FREEZING_RESULTS)


def test_load_names_the_command_that_makes_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="make them with python tools/freezing_results.py"):
        load_freezing_results(tmp_path / "none.csv")


def _classroom_file(tmp_path):
    """A tiny file that claims the current classroom settings: what a current shipped file looks like."""
    rows = pd.DataFrame([{"method": name, "seed": seed, "num_steps": 60, "lr": 1e-3, "labels_per_class": None,
                          "trainable at start": 1, "trainable": 1, "test accuracy": 0.9, "shifted accuracy": 0.7,
                          "validation": 0.9, "seconds": 1.0} for seed in (0, 1) for name in FREEZE_RECIPES])
    path = tmp_path / "freezing.csv"
    rows.to_csv(path, index=False)
    path.with_suffix(".json").write_text(json.dumps({"settings": freezing_settings("classroom"),
                                                     "checkpoints": checkpoint_hashes("digits"), "commands": []}))
    return path


def test_check_passes_a_current_file_and_names_a_changed_checkpoint_budget_recipe_and_missing_row(tmp_path,
                                                                                                  monkeypatch):
    path = _classroom_file(tmp_path)
    assert check_freezing_results(path) == []
    stored = json.loads(path.with_suffix(".json").read_text())
    name = next(iter(stored["checkpoints"]))
    stored["checkpoints"][name] = "0" * 64
    stored["settings"]["lr"] = 3e-3
    path.with_suffix(".json").write_text(json.dumps(stored))
    rows = pd.read_csv(path)
    rows.iloc[:-1].to_csv(path, index=False)  # seed 1 lost its last recipe
    monkeypatch.setitem(transfer.FREEZE_RECIPES, "full", lambda model, lr, num_steps: (None, None))  # edited code
    problems = check_freezing_results(path)
    assert problems[0].startswith(f"checkpoint {name}: made with SHA-256 {'0' * 64}, now ")
    assert problems[1] == "setting 'lr': made with 0.003, now 0.001"
    assert problems[2].startswith("setting 'recipes'")
    assert problems[3].startswith("seed 1: rows for") and len(problems) == 4


def test_the_shipped_results_were_made_with_the_current_checkpoint_budget_and_recipes():
    assert FREEZING_RESULTS.exists(), "no shipped results: run python tools/freezing_results.py"
    assert check_freezing_results() == [], f"{FREEZING_RESULTS.name} is stale: rerun the command in its provenance"
    assert sorted(set(load_freezing_results().seed)) == [0, 1, 2, 3, 4]
