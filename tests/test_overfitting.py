"""ftlab.overfitting: one digits run measures what overfitting is measured by (the accuracy gap, the validation-loss
rise and its step); rates are chosen on the validation split; verdicts say confirmed / not confirmed / within
noise from the seeds' ranges; a FAST sweep writes the reference columns with provenance, picks up where it stopped
and refuses the shipped folder; a sentiment run without warm-up is compare's run. Plots of stored results."""
import json

import pandas as pd
import pytest

from ftlab import overfitting
from ftlab.overfitting import (
    ALL_COLUMNS,
    at_chosen_rates,
    choose_rates,
    curve_text,
    curve_values,
    digits_run,
    freezing_verdicts,
    overfits_less,
)
from ftlab.viz import plot_lr_finds, plot_lr_grid, plot_stored_curves


def test_a_curve_is_stored_as_text_and_read_back():
    assert curve_text([0.5, 1.23456, 10]) == "0.5 1.235 10"
    assert curve_values("0.5 1.235 10") == [0.5, 1.235, 10.0]


def test_a_digits_run_scores_train_validation_and_test_and_measures_the_gap_and_the_rise():
    row = digits_run("full", 1, seed=0, lr=1e-3, num_steps=4, eval_every=2)
    assert list(row) == ALL_COLUMNS
    assert row["train_examples"] == 10 and row["labels_per_class"] == 1 and row["metric"] == "test accuracy"
    assert row["gap"] == pytest.approx(row["train_accuracy"] - row["value"])
    validation = curve_values(row["validation_curve"])
    assert curve_values(row["eval_steps"]) == [2, 4] and len(curve_values(row["train_curve"])) == 2
    assert row["validation_loss_min"] == pytest.approx(min(validation), rel=1e-3)
    assert row["loss_rise"] == pytest.approx(validation[-1] - min(validation), abs=1e-3)
    assert row["best_step"] == [2, 4][validation.index(min(validation))]
    assert row["validation_loss"] == pytest.approx(validation[-1], rel=1e-3)  # the last evaluation is the final model


def test_a_recipe_with_its_own_optimizer_refuses_weight_decay():
    with pytest.raises(ValueError, match="brings its own optimizer"):
        digits_run("discriminative lr", 1, seed=0, lr=1e-3, num_steps=1, weight_decay=0.1)
    with pytest.raises(ValueError, match="unknown recipe 'everything'"):
        digits_run("everything", 1, seed=0, lr=1e-3)


def test_the_rate_with_the_best_mean_validation_wins_ties_go_to_the_lower_loss_then_the_smaller_rate():
    rows = pd.DataFrame([
        {"method": "full", "lr": 1e-4, "validation": 0.80, "validation_loss": 0.5},
        {"method": "full", "lr": 1e-4, "validation": 0.90, "validation_loss": 0.5},
        {"method": "full", "lr": 3e-4, "validation": 0.90, "validation_loss": 0.4},
        {"method": "full", "lr": 3e-4, "validation": 0.80, "validation_loss": 0.4},
        {"method": "full", "lr": 1e-3, "validation": 0.95, "validation_loss": 0.9},
        {"method": "full", "lr": 1e-3, "validation": 0.60, "validation_loss": 0.9},
        {"method": "head only", "lr": 1e-3, "validation": 0.7, "validation_loss": 1.0},
        {"method": "head only", "lr": 3e-3, "validation": 0.7, "validation_loss": 1.0},
    ])
    rates = choose_rates(rows)
    assert rates["full"]["lr"] == 3e-4  # 1e-4 and 3e-4 tie at 0.85; 3e-4 has the lower loss; 1e-3's mean is 0.775
    assert rates["full"]["validation"] == {"0.0001": 0.85, "0.0003": 0.85, "0.001": 0.775}
    assert rates["head only"]["lr"] == 1e-3  # a full tie: the smaller rate


def gaps(head, full):
    return pd.DataFrame([{"method": m, "seed": s, "labels_per_class": 2, "gap": g, "loss_rise": 0.0}
                         for m, values in (("head only", head), ("full", full)) for s, g in enumerate(values)])


def test_freezing_overfits_less_only_when_every_seed_says_so():
    assert overfits_less(gaps([0.1, 0.2, 0.15], [0.3, 0.25, 0.4]), "head only", "full") == "less"
    assert overfits_less(gaps([0.5, 0.45, 0.6], [0.3, 0.25, 0.4]), "head only", "full") == "more"
    assert overfits_less(gaps([0.1, 0.3, 0.15], [0.3, 0.25, 0.4]), "head only", "full") == "within noise"
    table = freezing_verdicts(pd.concat([gaps([0.1, 0.2, 0.15], [0.3, 0.25, 0.4]),
                                         gaps([0.5, 0.45, 0.6], [0.3, 0.25, 0.4]).assign(labels_per_class=5)]))
    assert list(table["claim"]) == ["confirmed", "not confirmed"]
    assert list(table["n"]) == [3, 3] and table["gap of full"].iloc[0] == pytest.approx(0.95 / 3)


def small_grid(monkeypatch):
    monkeypatch.setattr(overfitting, "RECIPES", ("head only", "full"))
    monkeypatch.setattr(overfitting, "LR_GRID", {"head only": (3e-3,), "full": (1e-4, 1e-3)})


def test_a_fast_freezing_sweep_writes_the_columns_and_provenance_and_resumes(tmp_path, monkeypatch):
    small_grid(monkeypatch)
    rows, rates = overfitting.freezing_sweep([0], [1, 2], grid_seeds=[0], out=tmp_path, progress=False)
    assert list(rows.columns) == ALL_COLUMNS
    assert len(rows) == 3 + 2  # the grid at 1 label per class (3 runs), then 2 per class at the chosen rates
    stored = json.loads((tmp_path / "overfitting_digits.json").read_text())
    assert stored["learning_rates"] == rates and set(rates) == {"head only", "full"}
    assert len(stored["checkpoints"]) == 1 and stored["settings"]["mode"] == "FAST"
    assert stored["commands"][0]["command"] == "python tools/overfitting.py freezing"
    chosen = at_chosen_rates(rows, rates)
    assert len(chosen) == 4 and set(chosen["labels_per_class"]) == {1, 2}
    loaded = overfitting.load_results("digits", tmp_path)
    assert len(loaded) == len(rows) and loaded.attrs["provenance"]["learning_rates"] == rates
    with pytest.raises(FileNotFoundError, match="python tools/overfitting.py schedules"):
        overfitting.load_results("schedules", tmp_path)
    again, _ = overfitting.freezing_sweep([0], [1, 2], grid_seeds=[0], out=tmp_path, progress=False)
    assert len(again) == len(rows)  # nothing ran twice
    assert len(json.loads((tmp_path / "overfitting_digits.json").read_text())["commands"]) == 2


def test_a_sweep_refuses_other_settings_and_the_shipped_folder_in_fast_mode(tmp_path, monkeypatch):
    small_grid(monkeypatch)
    overfitting.freezing_sweep([0], [1], grid_seeds=[0], out=tmp_path, progress=False)
    monkeypatch.setattr(overfitting, "LR_GRID", {"head only": (1e-2,), "full": (1e-4, 1e-3)})
    with pytest.raises(ValueError, match="made with other settings or checkpoints"):
        overfitting.freezing_sweep([0], [1], grid_seeds=[0], out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="FAST mode .* must not write the reference results"):
        overfitting.freezing_sweep([0], [1], grid_seeds=[0], progress=False)


def test_a_fast_schedules_sweep_pairs_each_setting_with_its_baseline(tmp_path, monkeypatch):
    monkeypatch.setattr(overfitting, "WEIGHT_DECAYS", (0.0, 0.1))
    monkeypatch.setattr(overfitting, "WARMUP_RUNS", (("lora", 1e-2),))
    rows = overfitting.schedules_sweep([0], out=tmp_path, progress=False)
    assert list(rows.columns) == ALL_COLUMNS
    assert sorted(zip(rows["task"], rows["weight_decay"], rows["warmup_steps"])) == [
        ("digits", 0.0, 0), ("digits", 0.1, 0), ("sentiment", 0.0, 0), ("sentiment", 0.0, 1)]


def test_a_sentiment_run_without_warmup_is_the_run_compare_makes():
    from ftlab.compare import compare

    sizes = {"train": 32, "validation": 4, "test": 16}
    df = compare(["lora"], "sentiment", num_steps=3, batch_size=8, sizes=sizes, measure=False)
    row = overfitting.sentiment_run("lora", seed=0, lr=df["lr"].iloc[0], num_steps=3, batch_size=8, sizes=sizes)
    assert row["value"] == df["test accuracy"].iloc[0] and row["validation"] == df["validation"].iloc[0]


def stored_rows():
    rows = []
    for lr, scale in ((1e-4, 1.0), (1e-3, 2.0)):
        for seed in range(3):
            rows.append({"method": "full", "lr": lr, "seed": seed, "validation": 0.8 + 0.01 * seed,
                         "value": 0.7 + 0.01 * seed, "eval_steps": "10 20 30",
                         "train_curve": curve_text([scale, scale / 2, scale / 4]),
                         "validation_curve": curve_text([scale, scale * 0.9, scale])})
    return pd.DataFrame(rows)


def test_plot_stored_curves_draws_every_seed_and_the_mean_on_one_scale_per_method():
    (ax,) = plot_stored_curves(stored_rows(), "full", 1e-4).axes
    assert len(ax.lines) == 2 * (3 + 1)
    assert ax.get_ylim()[1] == pytest.approx(2.1)  # the largest loss of any rate of the method, plus 5%
    assert "81.0%" in ax.get_title()
    with pytest.raises(ValueError, match="no runs of 'full' at lr 0.003; stored rates: 0.0001, 0.001"):
        plot_stored_curves(stored_rows(), "full", 3e-3)


def test_plot_lr_grid_draws_each_seed_the_mean_and_the_marks():
    rows = stored_rows()
    (ax,) = plot_lr_grid(rows, marks={"full": 3e-4}).axes
    assert ax.get_xscale() == "log"
    assert len(ax.collections) == 2  # the band and the points
    assert len(ax.collections[1].get_offsets()) == 6
    assert any("lr_find suggests 3.0e-04" in text.get_text() for text in ax.get_legend().get_texts())


def test_plot_lr_finds_puts_each_result_in_its_own_panel():
    result = {"lrs": [1e-5, 1e-4, 1e-3], "losses": [1.0, 0.8, 2.0], "smoothed": [1.0, 0.9, 1.2], "lr_min": 1e-4,
              "suggestion": 1e-5}
    fig = plot_lr_finds({"full": result, "LoRA": result})
    assert [ax.get_title() for ax in fig.axes] == ["full", "LoRA"]


def test_check_results_passes_a_current_file_and_names_a_changed_setting_and_a_rate_the_grid_does_not_pick(tmp_path):
    from ftlab.sweep import check_results  # the checker every shipped file in data/results goes through

    grid = [{**dict.fromkeys(ALL_COLUMNS), "task": "digits", "method": recipe, "seed": seed, "labels_per_class": 5,
             "lr": lr, "validation": 0.9 if i == 1 else 0.5, "validation_loss": 0.3, "weight_decay": 0.0,
             "warmup_steps": 0} for recipe, rates in overfitting.LR_GRID.items() for i, lr in enumerate(rates)
            for seed in (0, 1, 2)]
    rows = pd.DataFrame(grid, columns=ALL_COLUMNS)
    rows.to_csv(tmp_path / "overfitting_digits.csv", index=False)
    settings = overfitting.freezing_settings(120, 10, 5, [0, 1, 2]) | {"mode": "classroom"}
    json_path = tmp_path / "overfitting_digits.json"
    stored = {"settings": settings, "checkpoints": overfitting.checkpoint_hashes("digits"), "commands": [],
              "learning_rates": choose_rates(rows)}
    json_path.write_text(json.dumps(stored))
    assert check_results(json_path) == []
    stored["settings"]["num_steps"] = 60
    stored["learning_rates"]["full"]["lr"] = overfitting.LR_GRID["full"][0]
    json_path.write_text(json.dumps(stored))
    assert check_results(json_path) == [
        "setting 'num_steps': made with 60, now 120",
        f"recipe full: the file records lr {overfitting.LR_GRID['full'][0]}, the grid's rows pick "
        f"{overfitting.LR_GRID['full'][1]:g}"]


def test_schedule_runs_labels_each_run_and_plot_schedules_keeps_the_files_order():
    import matplotlib.pyplot as plt

    from ftlab.overfitting import schedule_runs
    from ftlab.viz import plot_schedules

    rows = pd.DataFrame({"task": ["digits"] * 4 + ["sentiment"] * 4, "method": ["full"] * 4 + ["lora"] * 4,
                         "lr": [3e-4] * 4 + [3e-3] * 4, "weight_decay": [0.0, 0.1, 0.0, 0.1] + [0.0] * 4,
                         "warmup_steps": [0] * 4 + [0, 8, 0, 8], "value": [0.9, 0.8, 0.85, 0.95, 0.7, 0.6, 0.8, 0.9]})
    decay, warm = schedule_runs(rows)
    assert list(decay["setting"]) == ["weight decay 0", "weight decay 0.1"] * 2
    assert list(warm["setting"]) == ["lora lr 0.003, constant", "lora lr 0.003, warm-up 8 + cosine"] * 2
    left, right = plot_schedules(decay, warm).axes
    assert [t.get_text() for t in left.get_yticklabels()] == ["weight decay 0.1", "weight decay 0"]  # first on top
    assert right.get_title().startswith("sentiment: warm-up then cosine decay")
    plt.close("all")
