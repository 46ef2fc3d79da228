"""PPO for RLHF: GAE and the clipped losses by hand, rollout rewards, the reference left untouched, errors."""
import math

import pytest
import torch

import ftlab
from ftlab.align.common import frozen_copy, token_logprobs
from ftlab.align.reward import RewardModel
from ftlab.align.rlhf import _logits, gae, ppo_losses, ppo_train, ppo_update, rollout

PROMPTS = ["Question: what is the plural of fox?\nAnswer:", "Tolo asks: can I borrow your kite?",
           "continue the story: Mara found a red ball.", "Question: how many words: red fox runs\nAnswer:"]


def test_gae_matches_hand_computed_values():
    # row 0: a 3-token response then padding; row 1: a prompt position, a 2-token response, padding.
    # Values and rewards outside the mask are junk that must not leak in.
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0], [5.0, 0.0, 2.0, 5.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.6, 0.7, 3.0], [9.0, 0.2, 0.4, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 0]], dtype=torch.bool)
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # gamma * lam = 0.72. Row 0, backwards (the value after the last token is 0):
    #   t=2: delta = 1 - 0.7 = 0.3;               A = 0.3
    #   t=1: delta = 0 + 0.9 * 0.7 - 0.6 = 0.03;  A = 0.03 + 0.72 * 0.3 = 0.246
    #   t=0: delta = 0 + 0.9 * 0.6 - 0.5 = 0.04;  A = 0.04 + 0.72 * 0.246 = 0.21712
    # Row 1: t=2: delta = 2 - 0.4 = 1.6;  t=1: delta = 0.9 * 0.4 - 0.2 = 0.16, A = 0.16 + 0.72 * 1.6 = 1.312
    expected = torch.tensor([[0.21712, 0.246, 0.3, 0.0], [0.0, 1.312, 1.6, 0.0]], dtype=torch.float64)
    assert torch.allclose(advantages, expected, atol=1e-12, rtol=0)
    # returns = advantages + values on the response
    assert torch.allclose(returns, torch.tensor([[0.71712, 0.846, 1.0, 0.0], [0.0, 1.512, 2.0, 0.0]],
                                                dtype=torch.float64), atol=1e-12, rtol=0)


def test_gae_with_lambda_1_gives_discounted_reward_to_go_minus_value():
    rewards = torch.tensor([[0.1, -0.2, 0.3, 1.0]], dtype=torch.float64)
    values = torch.tensor([[0.4, 0.3, 0.2, 0.1]], dtype=torch.float64)
    advantages, returns = gae(rewards, values, torch.ones(1, 4, dtype=torch.bool), gamma=0.5, lam=1.0)
    # reward to go with gamma 0.5: 0.1 - 0.1 + 0.075 + 0.125 = 0.2; -0.2 + 0.15 + 0.25 = 0.2; 0.3 + 0.5 = 0.8; 1.0
    assert torch.allclose(returns, torch.tensor([[0.2, 0.2, 0.8, 1.0]], dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.allclose(advantages, returns - values, atol=1e-12, rtol=0)


def test_clipped_ppo_losses_match_hand_computed_values():
    old_logp = torch.tensor([[-1.0, -2.0, -1.5, -1.0]], dtype=torch.float64)
    logp = old_logp + torch.tensor([[0.3, -0.5, 0.1, 3.0]], dtype=torch.float64)
    advantages = torch.tensor([[1.0, 2.0, -1.0, 100.0]], dtype=torch.float64)
    old_values = torch.tensor([[0.0, 1.0, 0.5, 0.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.9, 0.5, 9.0]], dtype=torch.float64)
    returns = torch.tensor([[1.0, 0.0, 0.6, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)  # the last position is padding
    out = ppo_losses(logp, old_logp, advantages, values, old_values, returns, mask, clip_range=0.2, clip_range_vf=0.2)
    # ratios e^0.3 = 1.3499 (clipped to 1.2), e^-0.5 = 0.6065 (clipped to 0.8), e^0.1 = 1.1052 (inside)
    # min(rho A, clip(rho) A): min(1.3499, 1.2) = 1.2; min(1.2131, 1.6) = 1.2131; min(-1.1052, -1.1052)
    expected_policy = -(1.2 + 2 * math.exp(-0.5) - math.exp(0.1)) / 3
    assert expected_policy == pytest.approx(-0.4359634671165396, abs=1e-15)
    assert out["policy_loss"].item() == pytest.approx(expected_policy, abs=1e-12)
    # values: t0 max((0.5-1)^2, (0+0.2-1)^2) = 0.64; t1 max(0.81, (1-0.1-0)^2) = 0.81; t2 0.01; loss = 0.5 * mean
    assert out["value_loss"].item() == pytest.approx(0.5 * (0.64 + 0.81 + 0.01) / 3, abs=1e-12)
    assert out["clip_frac"].item() == pytest.approx(2 / 3)
    assert out["approx_kl"].item() == pytest.approx(0.5 * (0.09 + 0.25 + 0.01) / 3, abs=1e-12)


def test_clipping_stops_the_policy_gradient_beyond_the_trust_region():
    old_logp = torch.zeros(1, 2, dtype=torch.float64)
    logp = torch.tensor([[0.5, 0.1]], dtype=torch.float64, requires_grad=True)
    advantages = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    zeros = torch.zeros(1, 2, dtype=torch.float64)
    out = ppo_losses(logp, old_logp, advantages, zeros, zeros, zeros, torch.ones(1, 2, dtype=torch.bool))
    out["policy_loss"].backward()
    # token 0 has ratio e^0.5 > 1.2 with A > 0: clipped, no gradient; token 1: d(-rho A / 2)/d logp = -e^0.1 / 2
    assert logp.grad[0].tolist() == pytest.approx([0.0, -math.exp(0.1) / 2], abs=1e-15)


@pytest.fixture
def rlhf_models(tiny_gpt2_chat):
    """A policy, a reward model with a random (non-zero) head, and the tokenizer."""
    model, tokenizer = tiny_gpt2_chat
    torch.manual_seed(1)
    reward_model = RewardModel.from_causal_lm(model)
    torch.nn.init.normal_(reward_model.score.weight, std=0.5)
    return model, reward_model, tokenizer


def test_rollout_rewards_are_kl_penalties_plus_the_score_on_the_last_token(rlhf_models):
    policy, reward_model, tokenizer = rlhf_models
    reference = frozen_copy(policy)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    value_model = RewardModel.from_causal_lm(policy)
    roll = rollout(policy, value_model, reward_model, tokenizer, PROMPTS, reference=reference, kl_coef=0.3,
                   max_new_tokens=5, seed=0)
    mask = roll["mask"]
    assert mask.sum(-1).tolist() == [5, 5, 5, 5]  # a random model never says eos this soon
    per_token_kl = (roll["logp"] - roll["ref_logp"]) * mask
    assert torch.allclose(roll["kl"], per_token_kl.sum(-1))
    last = mask.long().cumsum(-1).argmax(-1)  # position of each row's last response token
    expected = -0.3 * per_token_kl
    expected[torch.arange(4), last] += roll["scores"]
    assert torch.allclose(roll["rewards"], expected, atol=1e-6, rtol=0)
    assert (roll["rewards"][~mask] == 0).all() and (roll["advantages"][~mask] == 0).all()
    assert roll["scores"].abs().min() > 0 and 0 < roll["entropy"] <= math.log(len(tokenizer))
    same = rollout(policy, value_model, reward_model, tokenizer, PROMPTS, reference=frozen_copy(policy),
                   kl_coef=0.3, max_new_tokens=5, seed=0)
    assert (same["kl"] == 0).all()  # the policy against an exact copy of itself: no penalty


def test_first_ppo_epoch_starts_at_ratio_one(rlhf_models):
    policy, reward_model, tokenizer = rlhf_models
    value_model = RewardModel.from_causal_lm(policy)
    roll = rollout(policy, value_model, reward_model, tokenizer, PROMPTS, reference=frozen_copy(policy),
                   max_new_tokens=4)
    logp, _ = token_logprobs(_logits(policy, roll["batch"]), roll["batch"]["labels"])
    out = ppo_losses(logp, roll["logp"], roll["advantages"], roll["values"], roll["values"], roll["returns"],
                     roll["mask"])
    assert out["clip_frac"].item() == 0 and out["approx_kl"].item() < 1e-12


def test_one_ppo_update_improves_the_clipped_objective(rlhf_models):
    policy, reward_model, tokenizer = rlhf_models
    value_model = RewardModel.from_causal_lm(policy)
    roll = rollout(policy, value_model, reward_model, tokenizer, PROMPTS * 2, reference=frozen_copy(policy),
                   max_new_tokens=4, seed=3)
    mask = roll["mask"]
    mean = roll["advantages"][mask].mean()
    advantages = (roll["advantages"] - mean) / roll["advantages"][mask].std(unbiased=False) * mask  # as ppo_update
    optimizer = torch.optim.SGD([{"params": list(policy.parameters()), "lr": 1e-2},
                                 {"params": list(value_model.parameters()), "lr": 1e-2}])
    stats = ppo_update(policy, value_model, optimizer, roll, ppo_epochs=1, minibatch_size=8, vf_coef=0.1)
    assert stats["clip_frac"] == 0 and stats["approx_kl"] == 0  # the one step is taken at ratio 1
    with torch.no_grad():
        logp, _ = token_logprobs(_logits(policy, roll["batch"]), roll["batch"]["labels"])
        values = value_model.values(roll["batch"]["input_ids"], roll["batch"]["attention_mask"])[:, :-1]
    before = ppo_losses(roll["logp"], roll["logp"], advantages, roll["values"], roll["values"], roll["returns"], mask)
    after = ppo_losses(logp, roll["logp"], advantages, values, roll["values"], roll["returns"], mask)
    assert before["policy_loss"].abs() < 1e-6  # whitened advantages average 0 at ratio 1
    assert after["policy_loss"] < -1e-4  # likelier tokens where A > 0, less likely where A < 0
    assert after["value_loss"] < before["value_loss"]
    assert (advantages * (logp - roll["logp"]))[mask].sum() > 0


@pytest.mark.parametrize("method", ["full", "lora"])
def test_ppo_train_keeps_the_reference_and_the_reward_model_bit_identical(rlhf_models, method):
    policy, reward_model, tokenizer = rlhf_models
    base_state = {k: v.clone() for k, v in policy.state_dict().items()}
    reward_state = {k: v.clone() for k, v in reward_model.state_dict().items()}
    reference = frozen_copy(policy) if method == "full" else None
    if method == "lora":
        ftlab.apply(policy, "lora", r=4)
    history = ppo_train(policy, reward_model, tokenizer, PROMPTS * 2, reference=reference, kl_coef=0.1,
                        num_iterations=3, batch_size=8, minibatch_size=4, ppo_epochs=2, max_new_tokens=4, lr=1e-3,
                        eval_prompts=PROMPTS, eval_every=2, progress=False, device="cpu")
    assert history["iteration"] == [1, 2, 3] and history["eval_iteration"] == [0, 2, 3]
    assert all(len(history[k]) == 3 for k in ("reward", "kl", "clip_frac", "entropy", "policy_loss", "value_loss"))
    assert history["kl"][0] == 0 and history["kl"][-1] != 0  # the policy starts at the reference, then moves
    assert all(torch.equal(v, reward_model.state_dict()[k]) for k, v in reward_state.items())
    if method == "full":
        assert all(torch.equal(v, reference.state_dict()[k]) for k, v in base_state.items())
    else:
        state = {k.replace("base_layer.", ""): v for k, v in policy.state_dict().items() if "lora_" not in k}
        assert all(torch.equal(state[k], v) for k, v in base_state.items())


def test_bad_ppo_settings_are_errors(rlhf_models, untouched):
    policy, reward_model, tokenizer = rlhf_models
    check = untouched(policy)
    with pytest.raises(ValueError, match="shares trainable parameters"):
        ppo_train(policy, reward_model, tokenizer, PROMPTS, reference=policy, num_iterations=1)
    with pytest.raises(ValueError, match="has no adapters"):
        ppo_train(policy, reward_model, tokenizer, PROMPTS, reference=None, num_iterations=1)
    with pytest.raises(ValueError, match="kl_coef"):
        ppo_train(policy, reward_model, tokenizer, PROMPTS, reference=frozen_copy(policy), kl_coef=-1,
                  num_iterations=1)
    with pytest.raises(ValueError, match="non-empty"):
        ppo_train(policy, reward_model, tokenizer, ["  "], reference=frozen_copy(policy), num_iterations=1,
                  device="cpu")
    check()


def test_ppo_experiment_runs_on_the_shipped_model():
    from ftlab.align.rlhf import ppo_experiment
    from ftlab.zoo import load_gpt2

    model, tokenizer = load_gpt2()
    result = ppo_experiment(model, tokenizer, RewardModel.from_causal_lm(model), method="lora", num_iterations=2,
                            num_eval=4, batch_size=4, minibatch_size=4, max_new_tokens=4, progress=False)
    assert result["history"]["iteration"] == [1, 2] and result["history"]["eval_iteration"] == [0, 2]
    assert len(result["samples"]) == 4


def test_plot_ppo_draws_reward_against_kl_clip_fraction_and_entropy():
    import matplotlib.pyplot as plt

    from ftlab.viz import plot_ppo

    history = {"iteration": [1, 2], "clip_frac": [0.2, 0.1], "entropy": [1.5, 1.4], "eval_iteration": [0, 2],
               "eval_kl": [0.0, 1.2], "eval_reward": [-0.4, 1.1]}
    fig = plot_ppo({"kl 0.5": history, "no kl": history})
    reward_vs_kl, clip, entropy = fig.axes
    line = reward_vs_kl.lines[0]
    assert list(line.get_xdata()) == [0.0, 1.2] and list(line.get_ydata()) == [-0.4, 1.1]
    assert len(clip.lines) == 2 and entropy.get_ylabel().startswith("entropy")
    # iteration labels: the shared starting point (the reference model) once, then each run's own
    assert [t.get_text() for t in reward_vs_kl.texts] == ["0", "2", "2"]
    plt.close(fig)


def test_gae_checker_explains_a_pair_that_is_not_two_tensors(capsys):
    from ftlab.checks import check_gae

    assert check_gae(lambda rewards, values, gamma, lam: (None, None)) is False
    assert "[FAIL]" in capsys.readouterr().out
