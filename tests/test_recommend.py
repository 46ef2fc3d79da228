"""recommend: named scenarios, storage arithmetic, quality read from (synthetic) reference results, bad input."""
import math

import pandas as pd
import pytest

from ftlab.estimate import estimate_memory, meta_model
from ftlab.recommend import GIB, MIB, load_results, method_options, quality_vs_full, recommend

# One row per run, the reference-results format (data/results/<name>.csv); values made up for the tests.
DIGITS = {  # labels_per_class -> method -> test accuracy per seed 0, 1, 2
    5: {"full": [0.60, 0.64, 0.62], "freeze": [0.70, 0.69, 0.74], "lora": [0.61, 0.66, 0.60]},
    50: {"full": [0.90, 0.92, 0.91], "freeze": [0.80, 0.81, 0.82], "lora": [0.89, 0.91, 0.90]},
}
SENTIMENT = {1000: {"full": [0.85, 0.86, 0.87], "lora": [0.84, 0.86, 0.85]}}


def runs() -> pd.DataFrame:
    rows = []
    for task, table, image in (("digits", DIGITS, True), ("sentiment", SENTIMENT, False)):
        for size, by_method in table.items():
            for method, values in by_method.items():
                for seed, value in enumerate(values):
                    rows.append({"task": task, "method": method, "seed": seed, "num_steps": 60,
                                 "train_examples": size * 10 if image else size,
                                 "labels_per_class": size if image else None, "lr": 1e-3,
                                 "metric": "test accuracy", "value": value, "validation": value, "trainable": 1,
                                 "total": 2, "seconds": 1.0})
    return pd.DataFrame(rows)


@pytest.fixture
def results_dir(tmp_path):
    runs().to_csv(tmp_path / "synthetic.csv", index=False)
    return tmp_path


def test_7b_llama_on_a_24_gb_gpu_fits_lora_with_checkpointing_and_qlora_but_not_full(results_dir):
    table = recommend("llama-7b", 24, 10_000, methods=("full", "lora", "qlora"), results=results_dir)
    rows = table.set_index("method")
    assert not rows.loc["full", "fits"]
    assert "Does not fit in 24 GiB" in rows.loc["full", "reasons"]
    assert rows.loc["lora", "fits"] and rows.loc["lora", "gradient_checkpointing"]
    assert rows.loc["qlora", "fits"]
    assert rows.loc["qlora", "memory_gib"] < rows.loc["lora", "memory_gib"] <= 0.9 * 24
    assert list(table["method"][:2]) != ["full"] and table["method"].iloc[-1] == "full"
    # each row is estimate_memory at the setting it names
    lora = rows.loc["lora"]
    options, _ = method_options(meta_model("llama-7b"), "lora")
    exact = estimate_memory("llama-7b", "lora", batch_size=int(lora["batch_size"]), seq_len=512,
                            precision=lora["precision"], gradient_checkpointing=True, device="cuda", **options)
    assert lora["memory_gib"] == exact["total"] / GIB
    # no text result lies within a factor of 2 of 10k examples: no number, and the reason says so
    assert math.isnan(rows.loc["lora", "quality_vs_full"])
    assert "within a factor of 2 of 10000 examples (nearest measured: sentiment: 1000)" in rows.loc["lora", "reasons"]


def test_resnet18_with_5_labels_per_class_reads_the_measured_quality(results_dir):
    table = recommend("resnet18", 8, num_examples=50, results=results_dir)  # 10 classes: 5 labels per class
    rows = table.set_index("method")
    freeze_minus_full = [f - g for f, g in zip(DIGITS[5]["freeze"], DIGITS[5]["full"])]
    assert rows.loc["freeze", "quality_vs_full"] == pytest.approx(sum(freeze_minus_full) / 3)
    assert rows.loc["freeze", "quality_spread"] == pytest.approx(pd.Series(freeze_minus_full).std())
    assert rows.loc["full", "quality_vs_full"] == 0
    assert "digits with 5 labels per class, 3 seeds" in rows.loc["freeze", "reasons"]
    assert table["method"].iloc[0] == "freeze"  # it fits, and measured best at 5 labels per class
    assert rows.loc["lora", "reasons"].count("within noise of full fine-tuning") == 1
    for method in ("qlora", "prefix", "prompt"):
        assert not rows.loc[method, "fits"]
        assert rows.loc[method, "reasons"].startswith("does not apply to this model")
    assert math.isnan(rows.loc["adapter", "quality_vs_full"])  # the results have no adapter runs


def test_twenty_tasks_on_one_base_model_store_adapters_instead_of_copies(results_dir):
    table = recommend("gpt2", 16, 1000, num_tasks=20, switch_tasks_at_serving=True,
                      methods=("full", "lora", "adapter", "prefix"), results=results_dir)
    rows = table.set_index("method")
    full = estimate_memory("gpt2", "full", batch_size=1, seq_len=512, precision="bf16-mixed")
    assert rows.loc["full", "storage_per_task_mib"] == 2 * full["parameters"] / MIB
    assert rows.loc["full", "storage_all_tasks_gib"] == 20 * 2 * full["parameters"] / GIB
    lora = estimate_memory("gpt2", "lora", batch_size=1, seq_len=512, precision="bf16-mixed")
    assert rows.loc["lora", "storage_per_task_mib"] == 2 * lora["trainable_parameters"] / MIB
    assert rows.loc["lora", "storage_all_tasks_gib"] == \
        (lora["weights_frozen"] + lora["buffers"] + 20 * 2 * lora["trainable_parameters"]) / GIB
    assert rows.loc["lora", "storage_all_tasks_gib"] < rows.loc["full", "storage_all_tasks_gib"] / 10
    assert not rows.loc["full", "switchable"] and rows.loc["lora", "switchable"]
    assert "20 models in memory" in rows.loc["full", "reasons"]
    assert table["method"].iloc[-1] == "full"  # fits, but cannot serve 20 tasks from one base
    assert "swapping the small per-task part" in rows.loc["lora", "reasons"]


def test_quality_pairs_seeds_and_needs_a_measurement_within_a_factor_of_2():
    results = runs()
    difference, spread, evidence = quality_vs_full(results, "lora", image=False, size=1500)
    diffs = [m - f for m, f in zip(SENTIMENT[1000]["lora"], SENTIMENT[1000]["full"])]
    assert difference == pytest.approx(sum(diffs) / 3)
    assert spread == pytest.approx(pd.Series(diffs).std())
    assert evidence == "measured on sentiment with 1000 examples, 3 seeds, test accuracy"
    difference, _, evidence = quality_vs_full(results, "lora", image=False, size=2001)
    assert math.isnan(difference) and "nearest measured: sentiment: 1000" in evidence
    difference, _, evidence = quality_vs_full(results, "lora", image=True, size=5, task="cells")
    assert math.isnan(difference) and evidence == "no measured results for task 'cells' yet"


def test_without_reference_results_the_quality_is_not_invented(tmp_path):
    table = recommend("resnet18", 8, num_examples=50, methods=("full", "lora"), results=tmp_path)
    assert table["quality_vs_full"].isna().all()
    assert all("no measured results for image tasks yet" in r
               for method, r in zip(table["method"], table["reasons"]) if method != "full")


def test_by_default_every_method_of_ftlab_is_considered_and_each_row_says_why(tmp_path):
    from ftlab.methods import available

    table = recommend("gpt2", 16, 100, results=tmp_path)
    assert sorted(table["method"]) == sorted(available())  # DoRA, LoHa, LoKr too: none left out silently
    assert table["reasons"].str.len().gt(0).all()
    assert table.set_index("method").loc["full", "reasons"].endswith("the reference the other rows are compared with.")


def test_bad_input_errors_say_what_would_be_right(results_dir, tmp_path):
    with pytest.raises(ValueError, match="gpu_memory_gb must be greater than 0"):
        recommend("gpt2", 0, 100, results=results_dir)
    with pytest.raises(ValueError, match="num_examples must be at least 1"):
        recommend("gpt2", 16, 0, results=results_dir)
    with pytest.raises(ValueError, match="unknown: \\['lorax'\\]"):
        recommend("gpt2", 16, 100, methods=["lora", "lorax"], results=results_dir)
    with pytest.raises(ValueError, match="switch_tasks_at_serving must be True or False"):
        recommend("gpt2", 16, 100, switch_tasks_at_serving="yes", results=results_dir)
    runs().drop(columns=["seed"]).to_csv(tmp_path / "broken.csv", index=False)
    with pytest.raises(ValueError, match="missing: \\['seed'\\]"):
        load_results(tmp_path / "broken.csv")
    with pytest.raises(FileNotFoundError, match="no results file"):
        load_results([tmp_path / "absent.csv"])


def test_recommendation_plot_has_a_bar_per_applicable_method(results_dir):
    import matplotlib.pyplot as plt

    from ftlab.viz import plot_recommendation

    table = recommend("resnet18", 8, num_examples=50, results=results_dir)
    before = plt.get_fignums()
    fig = plot_recommendation(table)
    assert plt.get_fignums() == before
    memory, storage, quality = fig.axes
    applicable = table["memory_gib"].notna().sum()
    assert len(memory.patches) == len(storage.patches) == applicable
    assert [t.get_text() for t in memory.get_yticklabels()] == list(table["method"][table["memory_gib"].notna()])
    assert len(quality.patches) == table["quality_vs_full"].notna().sum()
    assert sum(t.get_text() == "not measured" for t in quality.texts) == applicable - len(quality.patches)


def test_shipped_results_keep_only_each_methods_chosen_rate_of_the_learning_rate_grids():
    from ftlab.compare import load_learning_rates
    from ftlab.recommend import RESULTS_DIR, shipped_results

    rows = shipped_results()
    grids = pd.concat([pd.read_csv(p) for p in RESULTS_DIR.glob("lr_grid_*.csv")], ignore_index=True)
    assert grids.groupby(["task", "method"])["lr"].nunique().max() > 1  # the grids hold several rates per method
    rates = load_learning_rates()
    per_method = rows.groupby(["task", "method"])["lr"].unique()
    assert len(per_method) > 0
    for (task, method), lrs in per_method.items():
        assert list(lrs) == [pytest.approx(rates[task][method])], (task, method, lrs)
    assert rows.equals(load_results())
