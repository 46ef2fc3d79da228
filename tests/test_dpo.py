"""DPO: eq. 7 of Rafailov et al. 2023 by hand, both kinds of reference, the reference left untouched, errors."""
import math

import pytest
import torch

import ftlab
from ftlab.align.common import frozen_copy, preference_loader, response_logprobs
from ftlab.align.dpo import chosen_nll, dpo_batch, dpo_loss, preference_accuracy, train_dpo

from builders import PAIRS


def test_dpo_loss_matches_hand_computed_values():
    policy_chosen = torch.tensor([-1.0, -2.0], dtype=torch.float64, requires_grad=True)
    policy_rejected = torch.tensor([-3.0, -1.0], dtype=torch.float64)
    ref_chosen = torch.tensor([-1.5, -2.0], dtype=torch.float64)
    ref_rejected = torch.tensor([-2.5, -1.5], dtype=torch.float64)
    loss, chosen_rewards, rejected_rewards = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                                      beta=0.5)
    # log-ratios: chosen 0.5 and 0.0, rejected -0.5 and 0.5; implicit rewards = beta * log-ratio
    assert chosen_rewards.tolist() == [0.25, 0.0]
    assert rejected_rewards.tolist() == [-0.25, 0.25]
    # z = beta (chosen - rejected log-ratio) = 0.5 and -0.25; loss = mean of log(1 + exp(-z))
    expected = (math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(0.25))) / 2
    assert expected == pytest.approx((0.4740769841801067 + 0.8259394198788436) / 2, abs=1e-15)
    assert loss.item() == pytest.approx(expected, abs=1e-15)
    loss.backward()
    # d loss / d log pi(y_c) = -beta sigmoid(-z) / B  (the gradient in section 4 of the paper)
    assert policy_chosen.grad.tolist() == pytest.approx([-0.5 / (1 + math.exp(0.5)) / 2,
                                                         -0.5 / (1 + math.exp(-0.25)) / 2], abs=1e-15)
    assert not chosen_rewards.requires_grad


def test_dpo_loss_is_log_2_when_the_policy_is_the_reference(tiny_gpt2_chat):
    model, tokenizer = tiny_gpt2_chat
    batch = next(iter(preference_loader(PAIRS, tokenizer, max_length=64, batch_size=4)))
    loss, chosen, rejected = dpo_batch(model, batch, frozen_copy(model), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert chosen.abs().max() < 1e-6 and rejected.abs().max() < 1e-6


def test_dpo_uses_summed_response_logprobs(tiny_gpt2_chat):
    model, tokenizer = tiny_gpt2_chat
    model = model.double()
    reference = frozen_copy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = next(iter(preference_loader(PAIRS, tokenizer, max_length=64, batch_size=4)))
    loss, chosen, rejected = dpo_batch(model, batch, reference, beta=0.2)
    pc, pr = response_logprobs(model, batch["chosen"]), response_logprobs(model, batch["rejected"])
    rc, rr = response_logprobs(reference, batch["chosen"]), response_logprobs(reference, batch["rejected"])
    assert torch.allclose(chosen, 0.2 * (pc - rc), atol=1e-12, rtol=0)
    assert torch.allclose(rejected, 0.2 * (pr - rr), atol=1e-12, rtol=0)
    assert loss.item() == pytest.approx(-torch.nn.functional.logsigmoid(chosen - rejected).mean().item(), abs=1e-12)


def test_chosen_nll_is_the_models_own_sft_loss_on_the_chosen_responses(tiny_gpt2_chat):
    model, tokenizer = tiny_gpt2_chat
    batch = next(iter(preference_loader(PAIRS, tokenizer, max_length=64, batch_size=4)))
    with torch.no_grad():
        expected = model(**batch["chosen"]).loss  # mean cross-entropy over the labelled (response) tokens
        assert chosen_nll(model, batch).item() == pytest.approx(expected.item(), rel=1e-5)


def test_sft_weight_keeps_the_chosen_responses_likely(tiny_gpt2_chat):
    model, tokenizer = tiny_gpt2_chat
    batch = next(iter(preference_loader(PAIRS, tokenizer, max_length=64, batch_size=4)))
    runs = {}
    for weight in (0.0, 1.0):
        policy, reference = frozen_copy(model).requires_grad_(True), frozen_copy(model)
        train_dpo(policy, tokenizer, PAIRS, reference=reference, beta=0.1, sft_weight=weight, num_steps=15, lr=3e-3,
                  batch_size=4, progress=False, device="cpu")
        with torch.no_grad():
            runs[weight] = chosen_nll(policy, batch).item()
    assert runs[1.0] < runs[0.0]  # the NLL term pulls the chosen answers' likelihood up
    with pytest.raises(ValueError, match="sft_weight"):
        train_dpo(model, tokenizer, PAIRS, reference=frozen_copy(model), sft_weight=-1.0, num_steps=1)


def test_full_dpo_raises_preference_accuracy_and_keeps_the_frozen_reference_bit_identical(tiny_gpt2_chat):
    model, tokenizer = tiny_gpt2_chat
    reference = frozen_copy(model)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    data = preference_loader(PAIRS, tokenizer, max_length=64, batch_size=4)
    assert preference_accuracy(model, data, reference)["accuracy"] == 0.5  # every pair ties at the start
    history = train_dpo(model, tokenizer, PAIRS, reference=reference, beta=0.1, num_steps=10, lr=1e-3, batch_size=4,
                        progress=False, device="cpu")
    assert history["loss"][-1] < history["loss"][0]
    assert history["chosen_reward"][-1] > history["rejected_reward"][-1]
    result = preference_accuracy(model, data, reference)
    assert result["accuracy"] == 1.0 and result["margin"] > 0
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in before.items())
    assert not torch.equal(model.transformer.h[0].attn.c_attn.weight, reference.transformer.h[0].attn.c_attn.weight)


def test_lora_dpo_uses_the_adapter_disabled_policy_as_reference(tiny_gpt2_chat):
    model, tokenizer = tiny_gpt2_chat
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    sft_copy = frozen_copy(model)
    ftlab.apply(model, "lora", r=4)
    history = train_dpo(model, tokenizer, PAIRS, reference=None, beta=0.1, num_steps=10, lr=1e-2, batch_size=4,
                        progress=False, device="cpu")
    assert history["loss"][-1] < history["loss"][0]
    state = {k.replace("base_layer.", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(state[k], v) for k, v in base_state.items())  # base weights bit-identical
    batch = next(iter(preference_loader(PAIRS, tokenizer, max_length=64, batch_size=4)))
    # the adapter-disabled reference gives exactly what a frozen copy of the SFT model gives
    _, via_adapters, _ = dpo_batch(model, batch, None)
    _, via_copy, _ = dpo_batch(model, batch, sft_copy)
    assert torch.allclose(via_adapters, via_copy, atol=1e-6, rtol=0)
    assert via_adapters.abs().max() > 1e-3  # the policy did move away from it


def test_reference_sharing_weights_with_the_policy_is_an_error(tiny_gpt2_chat, untouched):
    model, tokenizer = tiny_gpt2_chat
    check = untouched(model)
    with pytest.raises(ValueError, match="shares trainable parameters"):
        train_dpo(model, tokenizer, PAIRS, reference=model, num_steps=2, progress=False)
    with pytest.raises(ValueError, match="has no adapters"):
        train_dpo(model, tokenizer, PAIRS, reference=None, num_steps=2, progress=False)
    check()


def test_identical_chosen_and_rejected_is_an_error(tiny_gpt2_chat, untouched):
    model, tokenizer = tiny_gpt2_chat
    check = untouched(model)
    bad = PAIRS + [{"prompt": "Question: hi\nAnswer:", "chosen": "hello", "rejected": "hello"}]
    with pytest.raises(ValueError, match="identical chosen and rejected"):
        train_dpo(model, tokenizer, bad, reference=frozen_copy(model), num_steps=2, progress=False)
    check()


def test_dpo_experiment_runs_on_the_shipped_model():
    from ftlab.align.dpo import dpo_experiment
    from ftlab.align.reward import RewardModel
    from ftlab.zoo import load_gpt2

    model, tokenizer = load_gpt2()
    result = dpo_experiment(model, tokenizer, RewardModel.from_causal_lm(model), num_steps=2, batch_size=4,
                            num_test=6, progress=False)
    assert result["before"]["accuracy"] == 0.5 and len(result["history"]["loss"]) == 2
    assert result["win"]["win_rate"] == 0.5  # a reward model with a zero head scores every response 0: all ties
