"""Notebooks 11 and 12's evidence: the reference-results files of PPO and DPO (provenance, resuming, refusing stale
files, the shipped files current), the measures they hold, DPO's loss curve and the plots drawn from them."""
import json
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

import ftlab.align.reward as reward
import ftlab.align.sft as sft
from ftlab.align import generate as generation
from ftlab.align import results
from ftlab.align.dpo import DPO_NLL_CLASSROOM, dpo_loss_curve, dpo_nll_sweep
from ftlab.align.reward import REWARD_CLASSROOM
from ftlab.align.rlhf import PPO_KL_CLASSROOM, ppo_kl_sweep, right_answers
from ftlab.align.sft import SFT_CLASSROOM
from ftlab.viz import plot_dpo_beta, plot_ppo_kl, plot_results_spread

SHIPPED = {"ppo_kl": PPO_KL_CLASSROOM, "dpo_nll": DPO_NLL_CLASSROOM}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def shipped_models(monkeypatch):
    """The shipped SFT and reward models load (their classroom settings), while the sweeps run their FAST settings."""
    monkeypatch.setattr(sft, "SFT_SETTINGS", SFT_CLASSROOM)
    monkeypatch.setattr(reward, "REWARD_SETTINGS", REWARD_CLASSROOM)


# ---------------------------------------------------------------- DPO's loss against the margin

def test_dpo_loss_curve_is_minus_log_sigmoid_and_its_slope_the_gradient_weight():
    margins = torch.tensor([-30.0, -2.0, 0.0, 1.5, 40.0])
    for beta in (0.02, 0.1, 1.0):
        loss, weight = dpo_loss_curve(margins, beta)
        z = beta * margins.double()
        assert torch.allclose(loss, torch.log1p(torch.exp(-z)), atol=1e-12, rtol=0)
        assert torch.allclose(weight, beta * torch.sigmoid(-z), atol=1e-12, rtol=0)
        assert loss[2].item() == pytest.approx(math.log(2), abs=1e-12) and weight[2].item() == pytest.approx(beta / 2)
    assert not loss.requires_grad and not weight.requires_grad


@pytest.mark.parametrize("beta", [0, -0.1, float("nan")])
def test_dpo_loss_curve_refuses_a_beta_that_is_not_positive(beta):
    with pytest.raises(ValueError, match="beta"):
        dpo_loss_curve(torch.zeros(3), beta)


def test_plot_dpo_beta_draws_the_chosen_beta_bold_and_marks_where_its_weight_falls_to_a_tenth():
    fig = plot_dpo_beta(0.1, compare=(0.02, 0.1, 0.5), span=50)
    ax_loss, ax_weight = fig.axes
    assert [line.get_label() for line in ax_loss.get_lines() if line.get_label().startswith("beta")] == \
        ["beta = 0.02", "beta = 0.5", "beta = 0.1"]
    bold = ax_weight.get_lines()[2]
    assert bold.get_linewidth() > ax_weight.get_lines()[0].get_linewidth()
    margins, weights = bold.get_xydata().T
    assert weights[margins.tolist().index(0.0)] == pytest.approx(0.5)  # sigmoid(0): half weight at a tie
    assert "22 nats" in ax_weight.get_title()  # ln 9 / 0.1 = 21.97
    assert "off the chart" in plot_dpo_beta(0.02).axes[1].get_title()  # ln 9 / 0.02 = 110 > 50


# ---------------------------------------------------------------- measures the reference results hold

def test_ended_share_counts_the_responses_that_end_with_eos(tiny_gpt2_chat, monkeypatch):
    model, tokenizer = tiny_gpt2_chat
    eos = tokenizer.eos_token_id
    monkeypatch.setattr(generation, "generate_ids", lambda *args, **kwargs: [[5, eos], [5, 6, 7], [eos], []])
    assert generation.ended_share(model, tokenizer, ["a", "b", "c", "d"]) == 0.5
    with pytest.raises(ValueError, match="no prompts"):
        generation.ended_share(model, tokenizer, [])


def test_right_answers_scores_only_the_correct_pairs_against_their_chosen_answer(tiny_gpt2_chat, monkeypatch):
    import ftlab.align.rlhf as rlhf

    model, tokenizer = tiny_gpt2_chat
    seen = []

    def answers(model, tokenizer, prompts):
        seen.extend(prompts)
        return ["Foxes.", "tolo"]
    monkeypatch.setattr(rlhf, "generate", answers)
    pairs = [{"kind": "correct", "prompt": "p1", "chosen": "foxes"}, {"kind": "polite", "prompt": "p2", "chosen": "x"},
             {"kind": "correct", "prompt": "p3", "chosen": "Mara"}]
    assert right_answers(model, tokenizer, pairs) == 0.5 and seen == ["p1", "p3"]
    with pytest.raises(ValueError, match="kind 'correct'"):
        right_answers(model, tokenizer, pairs[1:2])


def test_ppo_train_records_eval_metric_at_each_evaluation_without_changing_the_run(tiny_gpt2_chat):
    from ftlab.align.common import frozen_copy
    from ftlab.align.reward import RewardModel
    from ftlab.align.rlhf import ppo_train

    model, tokenizer = tiny_gpt2_chat
    torch.manual_seed(1)
    reward_model = RewardModel.from_causal_lm(model)
    torch.nn.init.normal_(reward_model.score.weight, std=0.5)
    prompts = ["Question: what is the plural of fox?\nAnswer:", "Tolo asks: can I borrow your kite?"]
    seen = []

    def metric(policy):
        seen.append(policy)
        return sum(p.double().sum().item() for p in policy.parameters())  # moves as the policy trains

    def run(**extra):
        policy = frozen_copy(model).requires_grad_(True)
        history = ppo_train(policy, reward_model, tokenizer, prompts * 2, reference=frozen_copy(model), kl_coef=0.1,
                            num_iterations=3, batch_size=4, minibatch_size=4, ppo_epochs=1, max_new_tokens=4,
                            lr=1e-3, eval_prompts=prompts, eval_every=2, progress=False, device="cpu", **extra)
        return policy, history

    policy, history = run(eval_metric=metric)
    assert history["eval_iteration"] == [0, 2, 3] and len(history["eval_metric"]) == 3
    assert all(p is policy for p in seen) and len(set(history["eval_metric"])) == 3
    _, plain = run()
    assert plain["eval_metric"] == [] and plain["reward"] == history["reward"] and plain["kl"] == history["kl"]


# ---------------------------------------------------------------- results files

def rows(setting="a", seed=0):
    return [{"setting": setting, "seed": seed, "iteration": it, "metric": "reward", "value": 0.5 * it, "seconds": 3.0}
            for it in (0, 5)]


def test_results_files_record_provenance_resume_and_refuse_other_settings(tmp_path):
    settings = {"lr": 2e-4, "kl_coefs": {"a": 0.5}}
    assert results.open_results("toy", settings, tmp_path).empty
    results.record_command("toy", settings, "make_toy(seeds=[0])", tmp_path)
    results.add_run("toy", rows("a", 0), [["prompt", "sft", "ppo"]], tmp_path)
    results.add_run("toy", rows("a", 1), [], tmp_path)
    loaded = results.load_results("toy", tmp_path)
    assert list(loaded.columns) == results.COLUMNS and len(loaded) == 4
    assert results.done_runs(loaded) == {("a", 0), ("a", 1)}
    provenance = loaded.attrs["provenance"]
    assert provenance["settings"] == settings and provenance["checkpoints"] == results.shipped_hashes()
    assert provenance["samples"] == {"a": {"0": [["prompt", "sft", "ppo"]], "1": []}}
    command = provenance["commands"][0]
    assert command["command"] == "make_toy(seeds=[0])" and {"ftlab_commit", "torch", "torch_threads", "date"} <= set(
        command)
    assert results.check_results("toy", settings, tmp_path) == []
    before = (tmp_path / "toy.csv").read_text(), (tmp_path / "toy.json").read_text()
    with pytest.raises(ValueError, match="other settings or checkpoints.*move toy.csv and toy.json away"):
        results.open_results("toy", {**settings, "lr": 1e-4}, tmp_path)
    assert ((tmp_path / "toy.csv").read_text(), (tmp_path / "toy.json").read_text()) == before
    assert results.check_results("toy", {**settings, "lr": 1e-4}, tmp_path) == [
        "setting 'lr': made with 0.0002, now 0.0001"]


def test_check_results_names_a_shipped_model_whose_weights_changed(tmp_path):
    results.record_command("toy", {"a": 1}, "make_toy()", tmp_path)
    results.add_run("toy", rows(), [], tmp_path)
    stored = json.loads((tmp_path / "toy.json").read_text())
    stored["checkpoints"]["data/sft_tiny/model.safetensors"] = "0" * 64
    (tmp_path / "toy.json").write_text(json.dumps(stored))
    problems = results.check_results("toy", {"a": 1}, tmp_path)
    assert len(problems) == 1 and problems[0].startswith("data/sft_tiny/model.safetensors: made with SHA-256 0000")


def test_fast_runs_may_not_write_the_shipped_results_and_a_missing_file_names_its_command(tmp_path):
    with pytest.raises(ValueError, match="FAST mode .* must not write the reference results"):
        ppo_kl_sweep(seeds=[0])  # the tests run in FAST mode; nothing is trained before the refusal
    with pytest.raises(ValueError, match="FAST mode"):
        dpo_nll_sweep(seeds=[0])
    with pytest.raises(FileNotFoundError, match="ftlab.align.rlhf.ppo_kl_sweep"):
        results.load_results("ppo_kl", tmp_path)


def test_ppo_kl_sweep_writes_the_columns_of_the_shipped_file_and_skips_runs_it_has(shipped_models, tmp_path):
    df = ppo_kl_sweep(seeds=[0], out=tmp_path, progress=False)
    assert list(df.columns) == results.COLUMNS
    assert set(df.setting) == set(PPO_KL_CLASSROOM["kl_coefs"]) and set(df.metric) == {"reward", "kl",
                                                                                       "right answers"}
    kl = df[(df.metric == "kl") & (df.iteration == 0)]
    assert (kl.value == 0).all()  # every run starts at the SFT model
    samples = df.attrs["provenance"]["samples"]
    assert set(samples) == set(PPO_KL_CLASSROOM["kl_coefs"]) and len(samples["no KL penalty"]["0"]) == 6
    again = ppo_kl_sweep(seeds=[0], out=tmp_path, progress=False)
    assert len(again) == len(df) and len(again.attrs["provenance"]["commands"]) == 2


def test_dpo_nll_sweep_writes_the_columns_of_the_shipped_file(shipped_models, tmp_path):
    df = dpo_nll_sweep(seeds=[0], out=tmp_path, progress=False)
    assert list(df.columns) == results.COLUMNS
    assert set(df.setting) == set(DPO_NLL_CLASSROOM["sft_weights"])
    assert set(df.metric) == {"preference accuracy", "chosen reward", "rejected reward", "win rate",
                              "answers that end"}
    assert df[df.metric.isin(["preference accuracy", "win rate", "answers that end"])].value.between(0, 1).all()


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_reference_results_were_made_with_the_current_settings_and_models(name):
    csv_path, json_path = results.results_paths(name)
    if not csv_path.exists() or not json_path.exists():
        pytest.fail(f"data/results/{name}.csv or .json is missing: run its sweep (see ftlab.align.results)")
    assert results.check_results(name, SHIPPED[name]) == []
    df = results.load_results(name)
    assert df.groupby("setting").seed.nunique().min() >= 3  # every verdict the notebooks draw rests on 3 seeds
    assert not df.value.isna().any()


# ---------------------------------------------------------------- plots of the reference results

def long_rows():
    """Two settings x 3 seeds, evaluated at iterations 0 and 5, in the long format."""
    made = []
    for setting, drift in (("KL penalty 0.5", 1.0), ("no KL penalty", 10.0)):
        for seed in range(3):
            for it in (0, 5):
                made += [{"setting": setting, "seed": seed, "iteration": it, "metric": "kl",
                          "value": drift * it + seed, "seconds": 1.0},
                         {"setting": setting, "seed": seed, "iteration": it, "metric": "reward",
                          "value": 0.1 * it + 0.01 * seed, "seconds": 1.0},
                         {"setting": setting, "seed": seed, "iteration": it, "metric": "right answers",
                          "value": 0.8 - it * drift / 100 - 0.01 * seed, "seconds": 1.0}]
    return pd.DataFrame(made, columns=results.COLUMNS)


def test_plot_results_spread_keeps_one_order_and_shows_every_seed_the_range_and_the_live_run():
    fig = plot_results_spread(long_rows(), ["kl", "right answers"], live={"no KL penalty": {"kl": 52.0}})
    ax_kl, ax_right = fig.axes
    assert [t.get_text() for t in ax_kl.get_yticklabels()] == ["KL penalty 0.5", "no KL penalty"]
    ranges = [line.get_xdata().tolist() for line in ax_kl.get_lines()]
    assert ranges == [[5.0, 7.0], [50.0, 52.0]]  # the last iteration only: min to max over seeds
    stars = [c for c in ax_kl.collections if c.get_offsets().shape[0] == 1 and c.get_sizes()[0] == 170]
    assert [c.get_offsets().tolist() for c in stars] == [[[52.0, 1.0]]]
    with pytest.raises(ValueError, match="no rows of metric 'loss'"):
        plot_results_spread(long_rows(), ["loss"])


def test_the_runs_count_sits_right_of_a_live_run_beyond_the_stored_range():
    fig = plot_results_spread(long_rows(), ["kl"], live={"no KL penalty": {"kl": 60.0}})
    (ax_kl,) = fig.axes
    labels = {text.xy[1]: text.xy[0] for text in ax_kl.texts if text.get_text().startswith("n=")}
    assert labels == {0: 7.0, 1: 60.0}  # the stored range's end, or the star's when it lies further right


def test_plot_ppo_kl_draws_each_seed_and_the_mean_per_setting_with_the_live_runs():
    history = {"eval_iteration": [0, 5], "eval_kl": [0.0, 40.0], "eval_reward": [0.0, 0.6], "eval_metric": [0.8, 0.4]}
    fig = plot_ppo_kl(long_rows(), live={"no KL penalty": history})
    ax_kl, ax_right = fig.axes
    means = [line for line in ax_kl.get_lines() if line.get_label().endswith("mean of 3 seeds")]
    assert [line.get_label() for line in means] == ["KL penalty 0.5: mean of 3 seeds", "no KL penalty: mean of 3 seeds"]
    assert means[1].get_xydata().tolist() == [[1.0, 0.01], [51.0, 0.51]]  # mean over seeds at iterations 0 and 5
    assert len(ax_kl.get_lines()) == 2 * (3 + 1) and ax_kl.get_xscale() == "symlog"
    assert any(c.get_offsets().tolist() == [[0.0, 0.8], [5.0, 0.4]] for c in ax_right.collections)  # live stars
