"""Each scenario experiment runs end to end in FAST mode, one row per run; bad options fail before training."""
import json

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


# ---------------------------------------------------------------- reference results


def _fake_boxes(methods=None, *, seeds, labels_per_class, progress):
    """Rows shaped like boxes_experiment's, made instantly, so the file handling is tested without training."""
    return pd.DataFrame([{"task": "boxes", "method": m, "labels_per_class": labels_per_class[0], "seed": s,
                          "accuracy": 0.5} for s in seeds for m in scenarios.BOX_METHODS])


def test_make_reference_writes_rows_and_provenance_that_check_reference_accepts(tmp_path, monkeypatch):
    monkeypatch.setitem(scenarios.REFERENCES, "boxes", (_fake_boxes, {"labels_per_class": [10]}, "digits"))
    rows = scenarios.make_reference("boxes", tmp_path, command="test")
    loaded = scenarios.load_reference("boxes", tmp_path)
    pd.testing.assert_frame_equal(loaded, rows)
    stored = loaded.attrs["provenance"]
    assert stored["settings"]["scenario"] == "boxes" and stored["settings"]["seeds"] == [0, 1, 2]
    assert stored["commands"][0]["command"] == "test" and stored["columns"] == list(rows.columns)
    json_path = tmp_path / "scenarios_boxes.json"
    # FAST sizes are in the provenance, so the file is stale against the classroom settings, and says so
    problems = scenarios.check_reference(json_path)
    assert problems == [f"setting 'defaults': made with {scenarios.DEFAULTS['boxes'][1]!r}, "
                        f"now {scenarios.DEFAULTS['boxes'][0]!r}", "setting 'mode': made with 'FAST', now 'classroom'"]
    monkeypatch.setitem(scenarios.DEFAULTS, "boxes", (scenarios.DEFAULTS["boxes"][1],) * 2)
    monkeypatch.setattr(scenarios, "mode", lambda: "classroom")
    scenarios.make_reference("boxes", tmp_path, command="again")
    assert scenarios.check_reference(json_path) == []
    assert [c["command"] for c in json.loads(json_path.read_text())["commands"]] == ["again"]  # replaced, not added
    rows.iloc[1:].to_csv(tmp_path / "scenarios_boxes.csv", index=False)  # one run missing
    assert scenarios.check_reference(json_path)[0].startswith("scenarios_boxes.csv: rows for ")


def test_reference_files_refuse_unknown_names_and_fast_writes_before_running(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setitem(scenarios.REFERENCES, "boxes", (lambda **kw: ran.append(kw), {}, "digits"))
    with pytest.raises(ValueError, match="unknown scenario 'cells'; the reference results are: qa, domain"):
        scenarios.make_reference("cells", tmp_path)
    with pytest.raises(ValueError, match="FAST mode .* must not write the reference results"):
        scenarios.make_reference("boxes")
    with pytest.raises(FileNotFoundError, match="python tools/scenario_reference.py qa"):
        scenarios.load_reference("qa", tmp_path)
    assert ran == [] and list(tmp_path.iterdir()) == []


def test_boxes_lr_grid_scores_every_rate_on_the_validation_split_and_choose_box_rates_picks_the_best():
    rows = scenarios.boxes_lr_grid(["freeze"], seeds=[0], labels_per_class=[1])
    assert list(rows["lr"]) == scenarios.BOX_LR_GRID["freeze"] and set(rows["split"]) == {"validation"}
    made = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 3, "lr": [1e-3, 3e-3, 1e-2] * 2,
                         "acc@iou0.5": [0.1, 0.3, 0.3, 0.2, 0.2, 0.2], "mean iou": [0.5, 0.4, 0.6, 0.3, 0.3, 0.3]})
    assert scenarios.choose_box_rates(made) == {"a": 1e-2, "b": 1e-3}  # ties: higher IoU, then the smaller rate


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "train"}, "split must be 'test' or 'validation', got 'train'"),
    ({"rates": {"lora": 1e-3}}, "rates must map methods of this run \\(freeze\\) to positive floats"),
    ({"rates": {"freeze": -1.0}}, "rates must map methods of this run"),
])
def test_boxes_experiment_refuses_a_bad_split_or_rates_before_training(kwargs, message, monkeypatch):
    monkeypatch.setattr(scenarios, "fit", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError, match=message):
        scenarios.boxes_experiment(["freeze"], seeds=[0], **kwargs)


def test_every_reference_has_settings_in_both_modes():
    for name in scenarios.REFERENCES:
        for run_mode in ("classroom", "FAST"):
            settings = scenarios.reference_settings(name, run_mode)
            assert settings["scenario"] == name and settings["defaults"] and settings["seeds"]


def test_against_reference_puts_a_live_run_beside_the_reference_row_of_its_method_and_seed():
    rows = pd.DataFrame({"method": ["lora", "lora", "full"], "seed": [1, 0, 0], "em": [0.2, 0.4, 0.9],
                         "f1": [0.3, 0.5, 0.95]})
    table = scenarios.against_reference({"em": 0.41, "f1": 0.5, "other": 7}, rows, "lora", ["em", "f1"])
    assert list(table.columns) == ["live (this run)", "reference, seed 0"] and list(table.index) == ["em", "f1"]
    assert table["live (this run)"].tolist() == [0.41, 0.5] and table["reference, seed 0"].tolist() == [0.4, 0.5]
    assert scenarios.against_reference({"em": 0.1}, rows, "lora", ["em"], seed=1)["reference, seed 1"].tolist() == [0.2]
    with pytest.raises(ValueError, match="no reference row with method == 'adapter' and seed 0; method values: "
                                         "lora, full"):
        scenarios.against_reference({"em": 0.1}, rows, "adapter", ["em"])
