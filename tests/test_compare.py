"""compare: the shoot-out of methods on every task over seeds (memory measured, a validation score beside the test
score, bad input refused before training), summaries over seeds, its command line (``python -m ftlab compare``),
and the rank sweep (trainable parameters exactly r * (in + out) per adapted layer)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from ftlab import compare as compare_module
from ftlab.__main__ import main
from ftlab.compare import (
    LEARNING_RATES_FILE,
    METHOD_OPTIONS,
    TASK_SETTINGS,
    applicable_methods,
    compare,
    default_budget,
    first_balanced,
    load_task_model,
    rank_sweep,
    run_method,
    spread_table,
    summarize,
    summary_table,
    task_data,
    verdict,
)
from ftlab.measure import MEMORY_PARTS

TINY = {"num_steps": 1, "batch_size": 4, "sizes": {"train": 8, "validation": 4, "test": 8}}


def test_rank_sweep_counts_r_times_in_plus_out_per_layer_and_adds_r_and_alpha_columns():
    df = rank_sweep([1, 2], targets=["query"], **TINY)
    assert list(df["r"]) == [1, 2] and list(df["alpha"]) == [2, 4]
    assert list(df["method"]) == ["r=1 alpha=2", "r=2 alpha=4"]
    # MiniLM: 6 query layers of 384 x 384; the classifier (384 * 2 + 2) trains in full in both runs
    assert df["trainable"].diff().iloc[1] == 6 * (384 + 384)
    assert df["test accuracy"].between(0, 1).all()



def test_rank_sweep_trains_at_loras_chosen_rate_for_the_task_unless_given_one():
    chosen = TASK_SETTINGS["sentiment"]["lora"]["lr"]
    assert (rank_sweep([1], targets=["query"], **TINY)["lr"] == chosen).all()
    assert (rank_sweep([1], targets=["query"], lr=chosen / 3, **TINY)["lr"] == chosen / 3).all()

@pytest.mark.parametrize("ranks, alphas, message", [
    (4, None, "non-empty list"),
    ([], None, "non-empty list"),
    ([1, 4], [2], "one alpha per rank"),
    ([4, 4], None, "once"),
])
def test_rank_sweep_rejects_bad_ranks_before_training(ranks, alphas, message):
    with pytest.raises(ValueError, match=message):
        rank_sweep(ranks, alphas, num_steps=1)


def test_rank_sweep_warns_that_a_rank_above_the_layer_size_only_adds_parameters():
    with pytest.warns(UserWarning, match="only add parameters"):
        rank_sweep([1000], **TINY)


# ---------------------------------------------------------------- the shoot-out: compare on every task, and its CLI


def test_applicable_methods_on_a_resnet_skips_prompt_prefix_and_qlora_with_their_reasons():
    methods, skipped = applicable_methods("digits")
    assert set(skipped) == {"prompt", "prefix", "qlora"}
    assert "not supported" in skipped["prompt"] and "no linear layer" in skipped["qlora"]
    assert {"full", "freeze", "lora", "ia3"} <= set(methods)


def test_compare_on_digits_measures_adamw_memory_as_twice_the_gradients_and_four_bytes_per_trainable():
    df = compare(["freeze", "lora"], "digits", num_steps=1, batch_size=4, labels_per_class=1)
    assert list(df["method"]) == ["freeze", "lora"] and df.attrs["metric"] == "test accuracy"
    assert set(MEMORY_PARTS) <= set(df.columns)
    assert (df["gradients"] == 4 * df["trainable"]).all()  # float32 gradient per trainable parameter
    assert (df["optimizer_state"] == 8 * df["trainable"]).all()  # AdamW: two float32 moments per parameter
    assert (df["weights_trainable"] + df["weights_frozen"] == 4 * df["total"]).all()
    assert df.loc[0, "trainable"] == 512 * 10 + 10  # freeze: only the new head fc trains
    assert df["test accuracy"].between(0, 1).all() and (df["step ms"] > 0).all()
    assert list(summary_table(df).columns)[-5:] == ["step ms", "test accuracy", "validation", "seconds",
                                                    "wall seconds"]


def test_compare_on_instructions_reports_exact_match():
    df = compare(["lora"], "instructions", num_steps=1, batch_size=4,
                 sizes={"train": 8, "validation": 4, "test": 4}, measure=False)
    assert df.attrs["metric"] == "exact match" and df["exact match"].between(0, 1).all()
    assert "gradients" not in df


@pytest.mark.parametrize("methods, message", [
    (["lora", "bogus"], "unknown method 'bogus'; choose from: full, freeze"),
    (["prompt"], "does not apply to the 'digits' model.*Methods that apply to 'digits': full, freeze"),
])
def test_compare_rejects_unknown_and_unfitting_methods_naming_the_valid_ones(methods, message):
    with pytest.raises(ValueError, match=message):
        compare(methods, "digits", num_steps=1)


def test_cli_compare_prints_the_table_and_writes_csv_and_png(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["compare", "--task", "cells", "--methods", "freeze,ia3", "--steps", "1", "--threads", "1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "freeze" in printed and "ia3" in printed and "optimizer MB" in printed
    table = pd.read_csv(out / "compare_cells.csv")
    assert list(table["method"]) == ["freeze", "ia3"] and (table["optimizer_state"] == 8 * table["trainable"]).all()
    assert (out / "compare_cells.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["--task", "weather"], "invalid choice: 'weather' (choose from 'sentiment', 'digits', 'cells', 'instructions')"),
    (["--task", "digits", "--methods", "lora", "bogus"], "unknown method 'bogus'; choose from: full, freeze"),
    (["--task", "digits", "--methods", "prefix"], "does not apply to the 'digits' model"),
    (["--task", "digits", "--steps", "0"], "--steps must be a positive"),
])
def test_cli_compare_rejects_bad_input_with_exit_code_2_and_writes_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "results"
    with pytest.raises(SystemExit) as exit_:
        main(["compare", *argv, "--out", str(out)])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_compare_checks_that_out_can_be_written_before_training_anything(tmp_path, capsys, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("compare must not start when --out cannot be written")

    monkeypatch.setattr(compare_module, "compare", no_training)
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--task", "cells", "--methods", "freeze", "--out", str(blocker / "results")])
    assert exit_.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err
    out = tmp_path / "results"
    (out / "compare_cells.png").mkdir(parents=True)  # the PNG's name is taken by a folder
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--task", "cells", "--methods", "freeze", "--out", str(out)])
    assert exit_.value.code == 2 and "compare_cells.png: it exists and is not a file" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["compare_cells.png"]  # no CSV written either
    assert blocker.read_text() == "not a folder"


def test_cli_compare_with_two_seeds_writes_one_row_per_method_and_seed_and_prints_the_spread(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["compare", "--task", "cells", "--methods", "freeze", "--steps", "1", "--seeds", "2", "--threads", "1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "over 2 seed(s)" in printed and "mean" in printed and "std" in printed
    table = pd.read_csv(out / "compare_cells.csv")
    assert list(zip(table["method"], table["seed"])) == [("freeze", 0), ("freeze", 1)]
    assert table["validation"].between(0, 1).all()


# ---------------------------------------------------------------- seeds, validation and summaries


def test_compare_gives_one_row_per_method_and_seed_ordered_by_method_with_test_and_validation_scores():
    df = compare(["freeze", "ia3"], "cells", num_steps=1, batch_size=4, labels_per_class=1,
                 sizes={"validation": 6, "test": 8}, seeds=[3, 1], measure=False)
    assert list(zip(df["method"], df["seed"])) == [("freeze", 3), ("freeze", 1), ("ia3", 3), ("ia3", 1)]
    assert df["test accuracy"].between(0, 1).all() and df["validation"].between(0, 1).all()
    assert list(df["lr"]) == [TASK_SETTINGS["cells"]["freeze"]["lr"]] * 2 + [TASK_SETTINGS["cells"]["ia3"]["lr"]] * 2
    assert df.attrs["train_examples"] == 2 and df.attrs["labels_per_class"] == 1 and df.attrs["num_steps"] == 1


def test_seed_s_gives_every_method_the_same_batches_and_the_same_new_head(monkeypatch):
    seen = []

    def recording_fit(net, train, **options):  # the first batch and the head each method starts from
        x, _ = next(iter(train))
        seen.append((x.clone(), net.state_dict()["fc.weight"].clone() if "fc.weight" in net.state_dict() else
                     net.state_dict()["fc.modules_to_save.default.weight"].clone()))
        return {}

    monkeypatch.setattr(compare_module, "fit", recording_fit)
    compare(["freeze", "lora", "ia3"], "digits", num_steps=1, batch_size=4, labels_per_class=1, seeds=[0, 1],
            measure=False)
    by_seed = {0: seen[:3], 1: seen[3:]}  # seeds run one after the other, every method within a seed
    for runs in by_seed.values():
        assert all(torch.equal(x, runs[0][0]) and torch.equal(head, runs[0][1]) for x, head in runs)
    assert not torch.equal(by_seed[0][0][0], by_seed[1][0][0]) and not torch.equal(by_seed[0][0][1], by_seed[1][0][1])


def test_run_method_scores_a_shorter_budget_inside_a_longer_run_exactly_as_a_run_of_that_length():
    base, tokenizer = load_task_model("sentiment")
    data = task_data("sentiment", tokenizer, seed=0, sizes={"train": 16, "validation": 8, "test": 16}, batch_size=4)
    options = {"lr": 1e-3, "r": 2}
    shared = run_method(base, "sentiment", "lora", options, data, seed=0, num_steps=[3, 1])
    (alone,) = run_method(base, "sentiment", "lora", options, data, seed=0, num_steps=[1])
    assert [row["num_steps"] for row in shared] == [1, 3]
    assert (shared[0]["value"], shared[0]["validation"]) == (alone["value"], alone["validation"])
    assert 0 < shared[0]["seconds"] < shared[1]["seconds"]


def test_train_examples_takes_the_first_examples_balanced_over_classes_and_keeps_validation_and_test():
    examples = [("a", 0), ("b", 0), ("c", 0), ("d", 1), ("e", 0), ("f", 1)]
    assert first_balanced(examples, 4, key=lambda e: e[1]) == [("a", 0), ("b", 0), ("d", 1), ("f", 1)]
    with pytest.raises(ValueError, match="needs 3 examples of class 1, the training set has 2; ask for at most 4"):
        first_balanced(examples, 6, key=lambda e: e[1])
    _, tokenizer = load_task_model("sentiment")
    small = task_data("sentiment", tokenizer, seed=0, train_examples=16)
    full = task_data("sentiment", tokenizer, seed=0)
    assert (small["train_examples"], full["train_examples"]) == (16, 400)
    batches = [batch["labels"] for batch in small["train"]()]
    assert int(torch.cat(batches).sum()) == 8  # 8 positive, 8 negative
    with pytest.raises(ValueError, match="takes labels_per_class"):
        task_data("digits", None, seed=0, train_examples=16)


@pytest.mark.parametrize("seeds, error, message", [
    (3, TypeError, "seeds must be a list of seeds such as"),
    ([], ValueError, "non-empty list"),
    ([0, -1], ValueError, "whole numbers >= 0"),
    ([1, 1], ValueError, "each seed must appear once"),
])
def test_compare_rejects_bad_seeds_before_loading_anything(seeds, error, message, monkeypatch):
    monkeypatch.setattr(compare_module, "load_task_model", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(error, match=message):
        compare(["lora"], "digits", seeds=seeds)


def test_summarize_gives_mean_std_min_max_and_n_per_method_and_budget():
    df = pd.DataFrame({"method": ["lora"] * 3 + ["ia3"] * 3 + ["lora"] * 2,
                       "num_steps": [30] * 6 + [80] * 2,
                       "seed": [0, 1, 2, 0, 1, 2, 0, 1],
                       "test accuracy": [0.9, 0.8, 1.0, 0.5, 0.5, 0.5, 0.7, 0.9]})
    df.attrs["metric"] = "test accuracy"
    table = summarize(df)
    assert list(table.columns) == ["method", "num_steps", "mean", "std", "min", "max", "n"]
    lora = table.iloc[0]
    assert (lora["method"], lora["num_steps"], lora["n"]) == ("lora", 30, 3)
    assert lora["mean"] == pytest.approx(0.9) and lora["std"] == pytest.approx(0.1)  # n - 1 in the denominator
    assert (lora["min"], lora["max"]) == (0.8, 1.0)
    assert table.iloc[1]["std"] == 0 and list(table["method"]) == ["lora", "ia3", "lora"]
    assert np.isnan(summarize(df.iloc[:1])["std"].iloc[0]), "one run says nothing about the spread"
    with pytest.raises(ValueError, match="no column 'exact match'"):
        summarize(df, "exact match")


def test_verdict_says_beats_only_when_the_seed_ranges_separate():
    df = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 3 + ["c"] * 3,
                       "value": [0.90, 0.92, 0.95, 0.80, 0.85, 0.89, 0.86, 0.91, 0.97]})
    assert verdict(df, "a", "b") == "a beats b"
    assert verdict(df, "b", "a") == "a beats b"
    assert verdict(df, "a", "c") == "a and c are within noise"
    assert verdict(df, "a", "b", higher_is_better=False) == "b beats a"  # a perplexity: lower is better
    assert verdict(df, "a", "c", higher_is_better=False) == "a and c are within noise"
    with pytest.raises(ValueError, match="no rows with method == 'd'"):
        verdict(df, "a", "d")


def test_spread_table_gives_mean_min_and_max_per_method_in_the_tables_order():
    df = pd.DataFrame({"method": ["b"] * 3 + ["a"] * 3, "seed": [0, 1, 2] * 2,
                       "em": [0.5, 0.7, 0.9, 0.1, 0.2, 0.6], "f1": [1.0, 0.0, 0.5, 0.25, 0.25, 0.25]})
    table = spread_table(df, ["em", "f1"])
    assert list(table.index) == ["b", "a"] and list(table.columns) == ["em", "f1"]
    assert table.loc["b", "em"] == "0.700 (0.500 to 0.900)" and table.loc["a", "em"] == "0.300 (0.100 to 0.600)"
    assert table.loc["b", "f1"] == "0.500 (0.000 to 1.000)"
    assert spread_table(df, ["f1"], digits=1).loc["a", "f1"] == "0.2 (0.2 to 0.2)"
    with pytest.raises(ValueError, match="no column 'chrf'"):
        spread_table(df, ["chrf"])


def test_learning_rates_come_from_the_rates_file_and_other_options_from_the_code():
    stored = json.loads(LEARNING_RATES_FILE.read_text())
    for task, methods in TASK_SETTINGS.items():
        for name, options in methods.items():
            assert options == {"lr": stored[task][name]["lr"], **METHOD_OPTIONS[task][name]}
    assert TASK_SETTINGS["sentiment"]["lora"]["r"] == 8
    assert TASK_SETTINGS["instructions"]["freeze"]["trainable_groups"] == 2


def test_default_budget_can_be_asked_for_the_classroom_mode_from_a_fast_run():
    assert default_budget("sentiment", "classroom") == {"num_steps": 80, "batch_size": 16, "sizes": None,
                                                       "labels_per_class": 10}
    assert default_budget("sentiment")["num_steps"] == 3  # the tests run in FAST mode
    with pytest.raises(ValueError, match="mode must be one of 'classroom', 'FAST'"):
        default_budget("sentiment", "fast")


def test_rank_sweep_over_seeds_keeps_r_and_alpha_on_every_row():
    df = rank_sweep([1, 2], targets=["query"], seeds=[0, 1], **TINY)
    assert list(zip(df["r"], df["alpha"], df["seed"])) == [(1, 2, 0), (1, 2, 1), (2, 4, 0), (2, 4, 1)]
    assert list(summarize(df)["n"]) == [2, 2]
