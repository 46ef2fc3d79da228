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
from ftlab.validate import check_number, eval_mode


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


def dpo_loss_curve(margins: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """The DPO loss of one pair, and the weight of its gradient, as functions of its log-ratio margin.

    ``margins``: m = log pi(y_c)/pi_ref(y_c) - log pi(y_r)/pi_ref(y_r) in nats, (N,). Each value is
    passed through ``dpo_loss`` as one pair, and autograd gives d loss / d m = -beta sigmoid(-beta m):
    the gradient raises log pi(y_c) and lowers log pi(y_r) with the weight beta sigmoid(-beta m)
    (Rafailov et al. 2023, section 4), largest for pairs the policy ranks wrong, near 0 once
    beta m is a few units. Returns ``(loss, weight)``, each (N,): log 2 and beta / 2 at m = 0.
    """
    beta = check_number("beta", beta, minimum=0, strict_minimum=True)
    margins = torch.as_tensor(margins, dtype=torch.float64).detach().reshape(-1).requires_grad_()  # (N,)
    zero = torch.zeros(1, dtype=torch.float64)
    losses = torch.stack([dpo_loss(m[None], zero, zero, zero, beta)[0] for m in margins])  # (N,) one pair each
    (slope,) = torch.autograd.grad(losses.sum(), margins)  # (N,) d loss_i / d m_i
    return losses.detach(), -slope


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
                   data_seed: int = 0, progress: bool = True, **method_options) -> dict:
    """DPO from an SFT model on ``ftlab.tasks.preferences``; held-out preference accuracy and win rate.

    The policy is a copy of ``sft_model`` with ``ftlab.apply(policy, method)``; with adapters
    (``"lora"``, ...) the reference is the adapter-disabled policy, otherwise (``"full"``,
    ``"prompt"``, ...) a frozen copy of ``sft_model``. With a ``reward_model``, greedy responses
    of the DPO and SFT models to the test prompts are compared under it
    (``ftlab.align.reward.win_rate``). Returns ``{"model", "history", "before", "after", "win",
    "seconds"}``. The pairs come from ``make_preferences(data_seed)``: keep 0, the split that the
    shipped SFT and reward models were trained on, so that the test pairs stay held out for every
    ``seed`` (which sets the adapter's initialisation and the order of the pairs).
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
    data = make_preferences(data_seed)
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


# ---------------------------------------------------------------- reference results: why the NLL term

# Notebook 12's reference results (data/results/dpo_nll.csv): DPO with LoRA from the shipped SFT model, with and
# without the NLL term on the chosen answers, judged by the shipped reward model. FAST mode shrinks the runs.
DPO_NLL_CLASSROOM = {"sft_weights": {"DPO + NLL": 1.0, "plain DPO": 0.0}, "method": "lora", "r": 8, "lora_alpha": 16,
                     "beta": 0.1, "num_steps": 100, "lr": 1e-3, "batch_size": 16}
DPO_NLL_SETTINGS = pick(DPO_NLL_CLASSROOM, {**DPO_NLL_CLASSROOM, "num_steps": 4, "batch_size": 4})


def dpo_nll_sweep(seeds: Sequence[int] = (0, 1, 2), *, out=None, settings: dict | None = None,
                  progress: bool = True):
    """Plain DPO and DPO + NLL over ``seeds``: the reference results of notebook 12.

        OMP_NUM_THREADS=1 python -c "from ftlab.align.dpo import dpo_nll_sweep; dpo_nll_sweep()"

    For each seed and each ``settings["sft_weights"]`` entry (label -> sft_weight), ``dpo_experiment``
    from the shipped SFT model (``data/sft_tiny``) judged by the shipped reward model
    (``data/reward_tiny``), with the other ``settings`` (default ``DPO_NLL_SETTINGS``). Rows
    (``ftlab.align.results.COLUMNS``) go to ``out/dpo_nll.csv`` (default ``data/results``), at the
    last step: ``"preference accuracy"``, ``"chosen reward"``, ``"rejected reward"`` (mean implicit
    rewards on the held-out pairs), ``"win rate"`` (against the SFT model under the reward model),
    and ``"answers that end"`` (``ended_share`` of greedy answers to the held-out prompts; also at
    step 0, the SFT model's). Greedy answers of the SFT and DPO models to six held-out prompts of the
    conversational kinds go to ``dpo_nll.json`` under ``"samples"``. Runs already in the file are
    skipped. Returns every row of the file.
    """
    from ftlab.align import results
    from ftlab.align.generate import ended_share, generate
    from ftlab.align.reward import reward_model
    from ftlab.tasks.preferences import make_preferences

    settings = settings or DPO_NLL_SETTINGS
    seeds = [int(seed) for seed in seeds]
    out, done = results.start_sweep("dpo_nll", settings, f"ftlab.align.dpo.dpo_nll_sweep(seeds={seeds})", out)
    rm = reward_model(source="shipped", progress=False)
    sft, tokenizer = rm["sft"]["model"], rm["sft"]["tokenizer"]
    test = make_preferences(0)["test"][:pick(360, 12)]
    prompts = [p["prompt"] for p in test]
    shown = [p["prompt"] for p in test if p["kind"] != "correct"][:6]
    options = {k: v for k, v in settings.items() if k != "sft_weights"}
    sft_ended = None
    for seed in seeds:
        for label, sft_weight in settings["sft_weights"].items():
            if (label, seed) in done:
                continue
            sft_ended = ended_share(sft, tokenizer, prompts) if sft_ended is None else sft_ended
            run = dpo_experiment(sft, tokenizer, rm["model"], sft_weight=sft_weight, seed=seed, num_test=len(test),
                                 progress=False, **options)
            step = options["num_steps"]
            measured = [(step, "preference accuracy", run["after"]["accuracy"]),
                        (step, "chosen reward", run["after"]["chosen_reward"]),
                        (step, "rejected reward", run["after"]["rejected_reward"]),
                        (step, "win rate", run["win"]["win_rate"]), (0, "answers that end", sft_ended),
                        (step, "answers that end", ended_share(run["model"], tokenizer, prompts))]
            samples = [list(s) for s in zip(shown, generate(sft, tokenizer, shown), generate(run["model"], tokenizer,
                                                                                             shown))]
            results.add_run("dpo_nll", [{"setting": label, "seed": seed, "iteration": it, "metric": metric,
                                         "value": value, "seconds": run["seconds"]} for it, metric, value in measured],
                            samples, out)
            if progress:
                print(f"  {label} seed {seed}: accuracy {measured[0][2]:.3f}, win rate {measured[3][2]:.3f}, "
                      f"answers that end {measured[-1][2]:.2f} ({run['seconds']:.0f} s)", flush=True)
    return results.load_results("dpo_nll", out)
