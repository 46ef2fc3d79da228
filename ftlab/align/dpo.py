"""Direct Preference Optimization (Rafailov et al. 2023): preferences without a reward model or RL.

DPO shows that the KL-constrained reward maximisation of RLHF has a closed-form optimum in
which the reward is implicit in the policy, r(x, y) = beta log pi(y | x) / pi_ref(y | x) + const.
Putting that into the Bradley-Terry loss gives a loss on the policy alone (eq. 7):

    L_DPO = - E [ log sigmoid( beta log pi(y_c | x) / pi_ref(y_c | x) - beta log pi(y_r | x) / pi_ref(y_r | x) ) ]

where log pi(y | x) is summed over the response tokens only (``ftlab.align.common.response_logprobs``)
and pi_ref is the frozen SFT model: the policy with its adapters disabled, or a frozen copy.
The implicit rewards beta log pi(y | x) / pi_ref(y | x) of chosen and rejected responses are
logged; preference accuracy is the fraction of pairs whose chosen reward is the higher.

DPO only asks the chosen log-ratio to beat the rejected one, so both may fall: on a small model
the probability of ending a response falls with them, and greedy answers run on ("I am glad you
you you ..."). ``sft_weight`` adds the SFT loss on the chosen responses (mean negative
log-likelihood per token), which keeps the chosen answers likely: the "DPO + NLL" loss of Pang et
al. 2024 (Iterative Reasoning Preference Optimization, eq. 2), trl's ``rpo_alpha``.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ftlab.align.common import (
    as_reference,
    check_adapters,
    check_reference,
    frozen_copy,
    has_adapters,
    max_positions,
    preference_loader,
    response_logprobs,
)
from ftlab.config import pick, seed_everything
from ftlab.train import IGNORE_INDEX, fit, to_device
from ftlab.validate import eval_mode


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss of Rafailov et al. 2023, eq. 7, and the implicit rewards.

    Inputs: summed response log-probabilities, each (B,). Returns ``(loss, chosen_rewards,
    rejected_rewards)``: the mean over pairs of
    -log sigmoid(beta [(pi_c - ref_c) - (pi_r - ref_r)]), and beta (pi_c - ref_c),
    beta (pi_r - ref_r), each (B,) and detached (they are for logging).
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    loss = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios)).mean()
    return loss, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def dpo_batch(policy: nn.Module, batch: dict, reference: nn.Module | None = None,
              beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dpo_loss`` of a ``preference_loader`` batch; the reference runs without gradients.

    ``reference=None`` uses ``policy`` with its adapters disabled (``ftlab.disable_adapters``).
    """
    with as_reference(policy, reference) as ref:
        ref_chosen = response_logprobs(ref, batch["chosen"])  # (B,)
        ref_rejected = response_logprobs(ref, batch["rejected"])  # (B,)
    return dpo_loss(response_logprobs(policy, batch["chosen"]), response_logprobs(policy, batch["rejected"]),
                    ref_chosen, ref_rejected, beta)


def chosen_nll(policy: nn.Module, batch: dict) -> torch.Tensor:
    """The SFT loss on the chosen responses of a ``preference_loader`` batch: mean -log pi per response token."""
    chosen = batch["chosen"]
    tokens = (chosen["labels"][:, 1:] != IGNORE_INDEX).sum()  # the model predicts token t+1 from position t
    return -response_logprobs(policy, chosen).sum() / tokens


@torch.no_grad()
def preference_accuracy(policy: nn.Module, data: Iterable, reference: nn.Module | None = None,
                        beta: float = 0.1) -> dict:
    """Fraction of pairs whose chosen implicit reward beats the rejected one, and the mean rewards.

    Returns ``{"accuracy", "chosen_reward", "rejected_reward", "margin"}``. A tie (as before
    training, when policy = reference and both rewards are 0) counts one half.
    """
    device = next(policy.parameters()).device
    correct, chosen_sum, rejected_sum, seen = 0.0, 0.0, 0.0, 0
    with eval_mode(policy):
        for batch in data:
            _, chosen, rejected = dpo_batch(policy, to_device(batch, device), reference, beta)  # (B,), (B,)
            correct += (chosen > rejected).sum().item() + 0.5 * (chosen == rejected).sum().item()
            chosen_sum += chosen.sum().item()
            rejected_sum += rejected.sum().item()
            seen += chosen.shape[0]
    if seen == 0:
        raise ValueError("preference_accuracy got no pairs")
    return {"accuracy": correct / seen, "chosen_reward": chosen_sum / seen, "rejected_reward": rejected_sum / seen,
            "margin": (chosen_sum - rejected_sum) / seen}


def train_dpo(policy: nn.Module, tokenizer, pairs: Sequence[dict], *, reference: nn.Module | None = None,
              beta: float = 0.1, sft_weight: float = 0.0, num_steps: int, lr: float = 1e-4, batch_size: int = 16,
              seed: int = 0, **fit_options) -> dict:
    """Train ``policy`` with the DPO loss on ``{"prompt", "chosen", "rejected"}`` pairs, with ``ftlab.train.fit``.

    ``reference``: a frozen model (``frozen_copy(policy)`` made before training) or None for the
    policy with adapters disabled. A reference sharing trainable weights with the policy raises
    ValueError. ``sft_weight`` > 0 adds that multiple of ``chosen_nll`` to the loss. The history adds
    ``"chosen_reward"`` and ``"rejected_reward"`` (batch means).
    """
    if not sft_weight >= 0:
        raise ValueError(f"sft_weight must be 0 (plain DPO) or positive, got {sft_weight!r}")
    if reference is None:
        check_adapters(policy)
    else:
        check_reference(policy, reference)
        reference.to(next(policy.parameters()).device)
    data = preference_loader(pairs, tokenizer, max_length=max_positions(policy), batch_size=batch_size,
                             shuffle=True, seed=seed)
    rewards = {"chosen_reward": [], "rejected_reward": []}

    def loss_fn(model, batch):
        loss, chosen, rejected = dpo_batch(model, batch, reference, beta)
        rewards["chosen_reward"].append(chosen.mean().item())
        rewards["rejected_reward"].append(rejected.mean().item())
        return loss + sft_weight * chosen_nll(model, batch) if sft_weight else loss

    history = fit(policy, data, num_steps=num_steps, lr=lr, loss_fn=loss_fn, **fit_options)
    return {**history, **rewards}


def dpo_experiment(sft_model: nn.Module, tokenizer, reward_model: nn.Module | None = None, *,
                   method: str = "lora", beta: float = 0.1, sft_weight: float = 0.0, num_steps: int | None = None,
                   lr: float | None = None, batch_size: int = 16, num_test: int | None = None, seed: int = 0,
                   progress: bool = True, **method_options) -> dict:
    """DPO from an SFT model on ``ftlab.tasks.preferences``; held-out preference accuracy and win rate.

    The policy is a copy of ``sft_model`` with ``ftlab.apply(policy, method)``; with adapters
    (``"lora"``, ...) the reference is the adapter-disabled policy, otherwise (``"full"``,
    ``"prompt"``, ...) a frozen copy of ``sft_model``. With a ``reward_model``, greedy responses
    of the DPO and SFT models to the test prompts are compared under it
    (``ftlab.align.reward.win_rate``). Returns ``{"model", "history", "before", "after", "win",
    "seconds"}``.
    """
    from ftlab.align.generate import generate
    from ftlab.align.reward import win_rate
    from ftlab.methods import apply
    from ftlab.tasks.preferences import make_preferences

    seed_everything(seed)
    policy = frozen_copy(sft_model)
    policy = apply(policy, method, **method_options)  # prompt and prefix tuning return a wrapper
    # weight-space adapters (LoRA, ...) can be switched off to give the SFT model; other methods need a copy
    reference = None if has_adapters(policy) else frozen_copy(sft_model)
    data = make_preferences(seed)
    test_pairs = data["test"][:num_test or pick(len(data["test"]), 48)]
    test = preference_loader(test_pairs, tokenizer, max_length=max_positions(policy), batch_size=64)
    before = preference_accuracy(policy, test, reference, beta)
    start = time.time()
    history = train_dpo(policy, tokenizer, data["train"], reference=reference, beta=beta, sft_weight=sft_weight,
                        num_steps=num_steps or pick(300, 20), lr=lr or (1e-4 if method == "full" else 1e-3),
                        batch_size=batch_size, seed=seed, warmup_steps=pick(30, 2), progress=progress)
    seconds = time.time() - start
    after = preference_accuracy(policy, test, reference, beta)
    win = None
    if reward_model is not None:
        prompts = [p["prompt"] for p in test_pairs]
        win = win_rate(reward_model, tokenizer, prompts, generate(policy, tokenizer, prompts),
                       generate(sft_model, tokenizer, prompts))
    return {"model": policy.eval(), "history": history, "before": before, "after": after, "win": win,
            "seconds": seconds}
