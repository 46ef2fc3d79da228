"""compare: the shoot-out of methods on every task (memory measured, bad input refused before training), its
command line (``python -m ftlab compare``), and the rank sweep (trainable parameters exactly r * (in + out) per
adapted layer)."""
import pandas as pd
import pytest

from ftlab.__main__ import main
from ftlab.compare import applicable_methods, compare, rank_sweep, summary_table
from ftlab.measure import MEMORY_PARTS

TINY = {"num_steps": 1, "batch_size": 4, "sizes": {"train": 8, "validation": 4, "test": 8}}


def test_rank_sweep_counts_r_times_in_plus_out_per_layer_and_adds_r_and_alpha_columns():
    df = rank_sweep([1, 2], targets=["query"], **TINY)
    assert list(df["r"]) == [1, 2] and list(df["alpha"]) == [2, 4]
    assert list(df["method"]) == ["r=1 alpha=2", "r=2 alpha=4"]
    # MiniLM: 6 query layers of 384 x 384; the classifier (384 * 2 + 2) trains in full in both runs
    assert df["trainable"].diff().iloc[1] == 6 * (384 + 384)
    assert df["test accuracy"].between(0, 1).all()


@pytest.mark.parametrize("ranks, alphas, message", [
    (4, None, "non-empty list"),
    ([], None, "non-empty list"),
    ([1, 4], [2], "one alpha per rank"),
    ([4, 4], None, "once"),
])
def test_rank_sweep_rejects_bad_ranks_before_training(ranks, alphas, message):
    with pytest.raises(ValueError, match=message):
        rank_sweep(ranks, alphas, num_steps=1)


def test_rank_sweep_reports_a_rank_that_does_not_fit_the_layer():
    with pytest.raises(ValueError, match="does not fit"):
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
    assert list(summary_table(df).columns)[-4:] == ["step ms", "test accuracy", "seconds", "wall seconds"]


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
