import pandas as pd
import pytest

from ftlab import transfer
from ftlab.compare import summarize as summarize_runs
from ftlab.transfer import (
    FREEZE_RECIPES,
    compare_freezing,
    compare_pretrained,
    finetune_digits,
    steps_to_fraction,
    summarize,
)


def test_steps_to_fraction_finds_the_first_step_at_90_percent_of_the_final_accuracy():
    assert steps_to_fraction([5, 10, 15, 20], [0.2, 0.5, 0.75, 0.8]) == 15  # 0.72 is the target
    assert steps_to_fraction([5, 10], [0.9, 0.6]) == 5  # already above it at the first evaluation
    with pytest.raises(ValueError, match="one accuracy per evaluated step"):
        steps_to_fraction([5, 10], [0.5])


def test_summarize_puts_the_models_side_by_side_with_the_gain_in_points():
    runs = pd.DataFrame({
        "model": ["glyphs", "glyphs", "scratch", "scratch"],
        "labels_per_class": [5, 5, 5, 5],
        "seed": [0, 1, 0, 1],
        "test": [0.8, 0.6, 0.3, 0.5],
        "test_shifted": [0.5, 0.5, 0.2, 0.2],
        "steps_to_90": [10, 20, 25, 25],
    })
    table = summarize(runs)
    assert table.loc[5, "test_glyphs"] == pytest.approx(0.7)
    assert table.loc[5, "test_scratch"] == pytest.approx(0.4)
    assert table.loc[5, "gain"] == pytest.approx(30.0)
    assert table.loc[5, "steps_to_90_glyphs"] == 15


def test_finetune_digits_trains_and_reports_one_row():
    row = finetune_digits("scratch", 1, seed=0, lr=1e-3, num_steps=2, eval_every=1)
    assert (row["model"], row["labels_per_class"], row["seed"], row["lr"]) == ("scratch", 1, 0, 1e-3)
    assert [step for step, _ in row["curve"]] == [1, 2]
    assert row["validation"] == row["curve"][-1][1]
    assert all(0 <= row[k] <= 1 for k in ("validation", "test", "test_shifted"))
    assert row["steps_to_90"] in (1, 2)


def test_compare_pretrained_searches_the_same_rates_for_both_and_runs_every_setting(monkeypatch):
    calls = []

    def fake_finetune(model_name, labels_per_class, *, seed, lr, num_steps, batch_size, eval_every):
        calls.append((model_name, labels_per_class, seed, lr))
        validation = {("glyphs", 1e-3): 0.9, ("glyphs", 3e-3): 0.5, ("scratch", 1e-3): 0.2, ("scratch", 3e-3): 0.4}
        return {"model": model_name, "labels_per_class": labels_per_class, "seed": seed, "lr": lr,
                "validation": validation[model_name, lr], "test": 0.5, "test_shifted": 0.3, "steps_to_90": 10,
                "curve": []}

    monkeypatch.setattr(transfer, "finetune_digits", fake_finetune)
    result = compare_pretrained(labels_per_class=(1, 2), seeds=(0, 1), lrs=(1e-3, 3e-3), search_labels_per_class=5,
                                progress=False)
    search = [c for c in calls if c[1] == 5]
    assert sorted(search) == sorted([(m, 5, 0, lr) for m in ("glyphs", "scratch") for lr in (1e-3, 3e-3)])
    assert result["lr"] == {"glyphs": 1e-3, "scratch": 3e-3}  # each model keeps its best validation rate
    runs = result["runs"]
    assert sorted(zip(runs.model, runs.labels_per_class, runs.seed, runs.lr)) == sorted(
        [("glyphs", k, s, 1e-3) for k in (1, 2) for s in (0, 1)]
        + [("scratch", k, s, 3e-3) for k in (1, 2) for s in (0, 1)])
    assert list(result["summary"].index) == [1, 2] and (result["summary"].gain == 0).all()
    spread = result["spread"]
    assert list(zip(spread.model, spread.labels_per_class, spread.n)) == [("glyphs", 1, 2), ("glyphs", 2, 2),
                                                                          ("scratch", 1, 2), ("scratch", 2, 2)]


def test_compare_pretrained_needs_values_to_compare():
    with pytest.raises(ValueError, match="at least one value"):
        compare_pretrained(labels_per_class=(), progress=False)


def test_compare_freezing_gives_one_row_per_recipe_and_seed_with_what_each_recipe_trains():
    df = compare_freezing(["head only", "gradual unfreezing", "head + train_bn"], seeds=[0, 1], labels_per_class=1,
                          num_steps=2, batch_size=8)
    assert list(zip(df.method, df.seed)) == [("head only", 0), ("head only", 1), ("gradual unfreezing", 0),
                                             ("gradual unfreezing", 1), ("head + train_bn", 0), ("head + train_bn", 1)]
    rows = df.drop_duplicates("method").set_index("method")
    assert rows.loc["head only", "trainable at start"] == rows.loc["head only", "trainable"] == 5_130
    assert rows.loc["head + train_bn", "trainable"] == 5_130 + 9_600  # gamma and beta of 4,800 BatchNorm channels
    assert rows.loc["gradual unfreezing", "trainable"] > rows.loc["gradual unfreezing", "trainable at start"] == 5_130
    assert df[["test accuracy", "shifted accuracy", "validation"]].stack().between(0, 1).all()
    assert list(summarize_runs(df, "test accuracy", by=["method"])["n"]) == [2, 2, 2]


def test_compare_freezing_rejects_an_unknown_recipe_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown recipes \\['head'\\]; choose from: head only, last block"):
        compare_freezing(["head"], seeds=[0])
    assert len(FREEZE_RECIPES) == 8
