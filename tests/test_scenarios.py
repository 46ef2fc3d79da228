"""Each scenario experiment runs end to end in FAST mode, one row per run; bad options fail before training."""
import pandas as pd
import pytest

from ftlab import scenarios
from ftlab.config import FAST


def test_the_test_session_runs_in_fast_mode():
    assert FAST  # set by the root conftest: the experiments below use their FAST sizes


def _check(df: pd.DataFrame, n_rows: int, columns: list[str]) -> None:
    assert len(df) == n_rows
    assert set(columns) <= set(df.columns), set(columns) - set(df.columns)
    assert (df["seconds"] > 0).all() and df.notna().all().all()


def test_qa_experiment_runs_every_method():
    df = scenarios.qa_experiment(seeds=[0])
    _check(df, 5, ["method", "seed", "exact match", "f1", "em person", "trainable", "total", "cpu seconds"])
    assert list(df["method"]) == list(scenarios.QA_METHODS)
    assert df["exact match"].between(0, 1).all() and (df["exact match"] <= df["f1"] + 1e-12).all()
    trainable = df.drop_duplicates("method").set_index("method")["trainable"]
    assert trainable["lora"] < trainable["lora qkvo"] < trainable["adapter"] < trainable["full"] == \
        trainable["random init"]


def test_domain_pretraining_experiment_reports_perplexities_before_and_after():
    df = scenarios.domain_pretraining_experiment(seeds=[0])
    _check(df, 3, ["method", "domain ppl before", "domain ppl after", "general ppl before", "general ppl after",
                   "fact recall before", "fact recall after"])
    assert df["fact recall after"].between(0, 1).all()
    assert (df["domain ppl before"] > 1).all() and (df["general ppl before"] > 1).all()
    assert df["domain ppl before"].nunique() == 1  # every method starts from the same model
    trainable = df.set_index("method")["trainable"]
    assert trainable["lora"] < trainable["lora + embeddings"] < trainable["full"]


def test_domain_instruction_experiment_compares_both_starts_per_seed():
    df = scenarios.domain_instruction_experiment(seeds=[0, 1])
    _check(df, 4, ["start", "seed", "exact match", "em use", "seconds"])
    assert list(df["start"]) == list(scenarios.DOMAIN_STARTS) * 2 and list(df["seed"]) == [0, 0, 1, 1]
    assert list(df["pretraining_steps"] > 0) == [False, True] * 2


def test_boxes_experiment_runs_every_method_per_label_count():
    df = scenarios.boxes_experiment(seeds=[0])
    _check(df, 4, ["method", "labels_per_class", "accuracy", "mean iou", "acc@iou0.5", "localised"])
    assert (df["acc@iou0.5"] <= df["accuracy"]).all() and (df["acc@iou0.5"] <= df["localised"]).all()
    trainable = df.set_index("method")["trainable"]
    assert trainable["freeze"] < trainable["lora"] < trainable["full"] == trainable["scratch"]


def test_translation_experiment_scores_both_directions():
    df = scenarios.translation_experiment(seeds=[0])
    _check(df, 3, ["method", "exact match", "chrf", "em to_lindish", "chrf to_english"])
    assert df["chrf"].between(0, 1).all()


@pytest.mark.parametrize("run, message", [
    (lambda: scenarios.qa_experiment(["full", "qlora"]), "unknown method 'qlora'.*choose from: full, lora"),
    (lambda: scenarios.boxes_experiment([]), "methods is empty"),
    (lambda: scenarios.translation_experiment(seeds=[]), "seeds must be a non-empty list"),
    (lambda: scenarios.domain_pretraining_experiment(seeds=[0.5]), "seeds must be a non-empty list"),
    (lambda: scenarios.domain_instruction_experiment(["medical"]), "unknown start 'medical'"),
])
def test_bad_options_fail_before_any_training(run, message):
    with pytest.raises(ValueError, match=message):
        run()
