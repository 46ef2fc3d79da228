"""Reward model: Bradley-Terry loss by hand, reward read at the last real token, training, errors."""
import math

import pytest
import torch

import ftlab
from ftlab.align.common import collate, encode, preference_loader
from ftlab.align.reward import RewardModel, pairwise_accuracy, reward_loss, score, train_reward_model, win_rate

from builders import PAIRS


def test_reward_loss_matches_hand_computed_values():
    chosen = torch.tensor([1.0, 0.0, -0.5], dtype=torch.float64)
    rejected = torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)
    # differences 1, 0, -1: -log sigmoid(d) = log(1 + exp(-d)) = 0.3132616875, log 2 = 0.6931471806, 1.3132616875
    expected = (math.log(1 + math.exp(-1)) + math.log(2) + math.log(1 + math.exp(1))) / 3
    assert expected == pytest.approx(0.7732235185321303, abs=1e-15)
    assert reward_loss(chosen, rejected).item() == pytest.approx(expected, abs=1e-15)
    chosen.requires_grad_(True)
    reward_loss(chosen, rejected).backward()
    # d/dr_chosen = -sigmoid(-d) / B = -(1 / (1 + exp(d))) / 3
    assert chosen.grad.tolist() == pytest.approx([-1 / (1 + math.e) / 3, -0.5 / 3, -1 / (1 + math.exp(-1)) / 3],
                                                 abs=1e-15)


def test_reward_is_read_at_the_last_real_token(tiny_gpt2_chat):
    model, tokenizer = tiny_gpt2_chat
    reward_model = RewardModel.from_causal_lm(model).double()
    torch.nn.init.normal_(reward_model.score.weight)
    encoded = [encode(tokenizer, p["prompt"], p["chosen"], max_length=64) for p in PAIRS]
    batch = collate(encoded, tokenizer.pad_token_id)  # right padding
    rewards = reward_model(batch["input_ids"], batch["attention_mask"])
    for row, (p, r) in enumerate(encoded):  # each sequence alone, no padding: the head on the final hidden state
        ids = torch.tensor([p + r])
        hidden = model.double().transformer(input_ids=ids).last_hidden_state[0, -1]
        expected = hidden @ reward_model.score.weight[0] + reward_model.score.bias[0]
        assert rewards[row].item() == pytest.approx(expected.item(), abs=1e-10)
    # left padding gives the same rewards (the last 1 of the mask, wherever it is)
    width = batch["input_ids"].shape[1]
    left_ids = torch.stack([torch.roll(row, width - int(m.sum())) for row, m in zip(batch["input_ids"],
                                                                                    batch["attention_mask"])])
    left_mask = torch.stack([torch.roll(m, width - int(m.sum())) for m in batch["attention_mask"]])
    position_ids = (left_mask.cumsum(-1) - 1).clamp(min=0)
    hidden = reward_model.backbone(input_ids=left_ids, attention_mask=left_mask,
                                   position_ids=position_ids).last_hidden_state  # (B, T, d)
    assert torch.allclose(reward_model.score(hidden)[:, -1, 0], rewards, atol=1e-10, rtol=0)


def test_untrained_reward_model_ties_every_pair_and_loss_is_log_2(tiny_gpt2_chat):
    model, tokenizer = tiny_gpt2_chat
    reward_model = RewardModel.from_causal_lm(model)
    data = preference_loader(PAIRS, tokenizer, max_length=64, batch_size=4)
    assert pairwise_accuracy(reward_model, data) == 0.5  # all ties count one half
    batch = next(iter(data))
    r_chosen = reward_model(batch["chosen"]["input_ids"], batch["chosen"]["attention_mask"])
    assert torch.equal(r_chosen, torch.zeros(4))
    assert reward_loss(r_chosen, r_chosen).item() == pytest.approx(math.log(2))


def test_reward_model_learns_the_training_pairs_and_leaves_the_lm_alone(tiny_gpt2_chat):
    model, tokenizer = tiny_gpt2_chat
    lm_state = {k: v.clone() for k, v in model.state_dict().items()}
    reward_model = RewardModel.from_causal_lm(model)
    history = train_reward_model(reward_model, tokenizer, PAIRS, num_steps=25, lr=1e-2, batch_size=4,
                                 progress=False, device="cpu")
    assert history["loss"][0] == pytest.approx(math.log(2))
    assert history["loss"][-1] < 0.05
    assert pairwise_accuracy(reward_model, preference_loader(PAIRS, tokenizer, max_length=64)) == 1.0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in lm_state.items())  # a copy was trained


def test_lora_applies_to_the_reward_model(tiny_gpt2_chat):
    model, tokenizer = tiny_gpt2_chat
    reward_model = ftlab.apply(RewardModel.from_causal_lm(model), "lora", r=2, modules_to_save=["score"])
    trainable = [n for n, p in reward_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert any("c_attn" in n for n in trainable) and any("score" in n for n in trainable)
    history = train_reward_model(reward_model, tokenizer, PAIRS, num_steps=3, batch_size=4, progress=False,
                                 device="cpu")
    assert len(history["loss"]) == 3


def test_win_rate_counts_wins_ties_and_losses(tiny_gpt2_chat):
    model, tokenizer = tiny_gpt2_chat
    reward_model = RewardModel.from_causal_lm(model)
    torch.nn.init.normal_(reward_model.score.weight)
    prompts = [p["prompt"] for p in PAIRS]
    chosen, rejected = [p["chosen"] for p in PAIRS], [p["rejected"] for p in PAIRS]
    r_chosen = score(reward_model, tokenizer, prompts, chosen)
    r_rejected = score(reward_model, tokenizer, prompts, rejected)
    responses = [chosen[0], chosen[1], rejected[2], rejected[3]]  # two equal to b, two different
    result = win_rate(reward_model, tokenizer, prompts, responses, chosen)
    wins = ((r_rejected > r_chosen)[2:]).sum().item() / 4
    assert result["ties"] == 0.5
    assert result["wins"] == wins
    assert result["win_rate"] == pytest.approx(wins + 0.25)
    assert result["wins"] + result["ties"] + result["losses"] == pytest.approx(1.0)


def test_score_needs_one_response_per_prompt(tiny_gpt2_chat):
    model, tokenizer = tiny_gpt2_chat
    with pytest.raises(ValueError, match="one response per prompt"):
        score(RewardModel.from_causal_lm(model), tokenizer, ["a", "b"], ["x"])


def test_identical_pair_is_an_error_before_training(tiny_gpt2_chat, untouched):
    model, tokenizer = tiny_gpt2_chat
    reward_model = RewardModel.from_causal_lm(model)
    check = untouched(reward_model)
    pairs = PAIRS + [{"prompt": "Question: hi\nAnswer:", "chosen": "hello", "rejected": "hello"}]
    with pytest.raises(ValueError, match="pair 4 has identical chosen and rejected"):
        train_reward_model(reward_model, tokenizer, pairs, num_steps=2, progress=False)
    check()


def test_reward_experiment_runs_on_the_shipped_model():
    from ftlab.align.reward import reward_experiment

    result = reward_experiment(num_steps=2, batch_size=4, num_test=9, progress=False)
    assert result["before"] == 0.5 and 0 <= result["after"] <= 1
    assert set(result["by_kind"]) == {"correct", "grammar", "polite"}
