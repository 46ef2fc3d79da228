"""RLHF with PPO: raise the reward model's score while staying close to the SFT model (step 3).

The objective of Ouyang et al. 2022 (eq. 2, without the pretraining term), as in Ziegler et al.
2019 and Stiennon et al. 2020:

    maximise  E_{x, y ~ pi} [ r(x, y) - kl_coef * log pi(y | x) / pi_ref(y | x) ]

pi_ref is the frozen SFT model. The KL term is paid per token: the reward of the response
token at step t is

    r_t = - kl_coef * (log pi(y_t | ...) - log pi_ref(y_t | ...))   (+ r(x, y) on the last token)

PPO (Schulman et al. 2017) optimises it, one iteration at a time:

1. ``rollout``: sample responses from pi, score them with the reward model, compute the
   log-probabilities of pi and pi_ref, the values V_t of the value model, and r_t;
2. ``gae``: advantages by generalised advantage estimation (Schulman et al. 2016, eq. 16),
   delta_t = r_t + gamma V_{t+1} - V_t,  A_t = sum_l (gamma lam)^l delta_{t+l},  returns R_t = A_t + V_t;
3. ``ppo_update``: a few epochs over the rollout minimising the clipped losses (PPO eq. 7, 9)
   with ratio rho_t = pi(y_t) / pi_old(y_t):

       L_policy = - mean_t min( rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t )
       L_value  = 1/2 mean_t max( (V_t - R_t)^2, (V_old_t + clip(V_t - V_old_t, -eps_v, eps_v) - R_t)^2 )

The value model is a ``RewardModel`` read at every position, initialised from the reward model
(as Ouyang et al. do). Positions are those of ``ftlab.align.common.token_logprobs``: index t of a
(B, T - 1) tensor is the prediction of token t + 1 from the tokens up to t, and ``mask`` is 1
on response tokens. ``kl_coef=0`` drops the penalty, so nothing holds the policy near the SFT
model: its KL grows and it drifts to whatever the reward model over-rates (reward hacking).
"""
from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ftlab.align.common import (
    as_reference,
    check_adapters,
    check_reference,
    collate,
    encode,
    frozen_copy,
    has_adapters,
    max_positions,
    token_logprobs,
)
from ftlab.align.generate import decode, generate, generate_ids
from ftlab.align.reward import RewardModel, score
from ftlab.config import device as default_device
from ftlab.config import pick, seed_everything
from ftlab.progress import progress as progress_bar
from ftlab.train import to_device
from ftlab.validate import eval_mode


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns (Schulman et al. 2016, eq. 16).

    ``rewards``, ``values``, ``mask``: (B, T); each row's masked positions are one contiguous
    response, and the value after its last token is 0 (the episode ends there). Backwards in t:
    delta_t = r_t + gamma V_{t+1} - V_t,  A_t = delta_t + gamma lam A_{t+1},  R_t = A_t + V_t.
    Returns ``(advantages, returns)``, (B, T), zero outside the mask.
    """
    mask = mask.to(rewards.dtype)
    advantages = torch.zeros_like(rewards)  # (B, T)
    next_value = torch.zeros_like(rewards[:, 0])  # (B,)
    next_advantage = torch.zeros_like(rewards[:, 0])  # (B,)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        # outside the response, reset: the position after the last response token sees V = A = 0
        next_value = values[:, t] * mask[:, t]
        next_advantage = advantages[:, t]
    return advantages, (advantages + values) * mask


def ppo_losses(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, values: torch.Tensor,
               old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range: float = 0.2,
               clip_range_vf: float = 0.2) -> dict:
    """PPO's clipped policy loss (eq. 7) and clipped value loss, averaged over response tokens.

    All inputs (B, T). Returns ``{"policy_loss", "value_loss"}`` (scalars with gradients) and,
    detached, ``"clip_frac"`` (fraction of tokens whose ratio left [1 - eps, 1 + eps]) and
    ``"approx_kl"`` (mean of (log rho)^2 / 2, how far pi moved from pi_old).
    """
    ratio = torch.exp(logp - old_logp)  # (B, T)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_range, 1 + clip_range) * advantages
    policy_loss = -masked_mean(torch.minimum(unclipped, clipped), mask)
    values_clipped = old_values + (values - old_values).clamp(-clip_range_vf, clip_range_vf)
    value_loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (values_clipped - returns) ** 2), mask)
    clip_frac = masked_mean(((ratio - 1).abs() > clip_range).float(), mask)
    approx_kl = masked_mean(0.5 * (logp - old_logp) ** 2, mask)
    return {"policy_loss": policy_loss, "value_loss": value_loss, "clip_frac": clip_frac.detach(),
            "approx_kl": approx_kl.detach()}


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy -sum_v p_v log p_v of each next-token distribution, at the positions of ``token_logprobs``. (B, T-1)"""
    log_probs = torch.log_softmax(logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    return -(log_probs.exp() * log_probs).sum(-1)


def _logits(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)


def _values(value_model: RewardModel, batch: dict) -> torch.Tensor:
    """V_t at the positions of ``token_logprobs``: the value of the tokens up to t. (B, T - 1)"""
    return value_model.values(batch["input_ids"], batch["attention_mask"])[:, :-1]


@torch.no_grad()
def rollout(policy: nn.Module, value_model: RewardModel, reward_model: RewardModel, tokenizer,
            prompts: Sequence[str], *, reference: nn.Module | None = None, kl_coef: float = 0.1,
            max_new_tokens: int = 16, temperature: float = 1.0, gamma: float = 1.0, lam: float = 0.95,
            seed: int = 0) -> dict:
    """Sample one response per prompt and compute everything a PPO update needs.

    Returns ``batch`` (``input_ids``, ``attention_mask``, ``labels`` (B, T), responses labelled),
    per-token ``logp``, ``ref_logp``, ``values``, ``rewards``, ``advantages``, ``returns``,
    ``mask`` (B, T - 1); per response ``scores`` (reward model) and ``kl`` (summed
    log pi / pi_ref) (B,); the mean token ``entropy``; and the ``responses`` texts.
    """
    device = next(policy.parameters()).device
    response_ids = generate_ids(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=True,
                                temperature=temperature, seed=seed)
    limit = max_positions(policy)
    examples = [(encode(tokenizer, p, max_length=limit)[0], r) for p, r in zip(prompts, response_ids)]
    batch = to_device(collate(examples, tokenizer.pad_token_id), device)
    responses = [decode(tokenizer, r) for r in response_ids]

    with eval_mode(policy, value_model):
        logits = _logits(policy, batch)  # (B, T, V)
        logp, mask = token_logprobs(logits, batch["labels"])  # (B, T-1) each
        entropy = _entropy(logits)  # (B, T-1)
        values = _values(value_model, batch) * mask  # (B, T-1)
    with as_reference(policy, reference) as ref:
        ref_logp, _ = token_logprobs(_logits(ref, batch), batch["labels"])  # (B, T-1)
    scores = score(reward_model, tokenizer, prompts, responses).to(device)  # (B,)

    kl = (logp - ref_logp) * mask  # (B, T-1) per-token log pi / pi_ref
    rewards = -kl_coef * kl
    last = (mask * torch.arange(mask.shape[1], device=device)).argmax(-1)  # (B,) last response token
    rewards[torch.arange(len(prompts), device=device), last] += scores
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    return {"batch": batch, "logp": logp, "ref_logp": ref_logp, "values": values, "rewards": rewards,
            "advantages": advantages, "returns": returns, "mask": mask, "scores": scores, "kl": kl.sum(-1),
            "entropy": masked_mean(entropy, mask).item(), "responses": responses}


def ppo_update(policy: nn.Module, value_model: RewardModel, optimizer: torch.optim.Optimizer, roll: dict, *,
               ppo_epochs: int = 4, minibatch_size: int = 16, clip_range: float = 0.2, clip_range_vf: float = 0.2,
               vf_coef: float = 0.1, max_grad_norm: float | None = 1.0, seed: int = 0) -> dict:
    """``ppo_epochs`` passes over the rollout in shuffled minibatches; returns the mean of each loss statistic.

    Advantages are whitened (zero mean, unit variance over the rollout's response tokens), as
    in common PPO implementations, so one learning rate suits any reward scale. The loss is
    ``policy_loss + vf_coef * value_loss``. Dropout stays off (eval mode), so that before the
    first step the ratio pi / pi_old is exactly 1.
    """
    mask = roll["mask"]
    advantages = roll["advantages"]
    mean = masked_mean(advantages, mask)
    std = masked_mean((advantages - mean) ** 2, mask).sqrt()
    advantages = (advantages - mean) / (std + 1e-8) * mask  # (B, T-1)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    generator = torch.Generator().manual_seed(seed)
    stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "clip_frac": [], "approx_kl": []}
    n = mask.shape[0]
    with eval_mode(policy, value_model):
        for _ in range(ppo_epochs):
            for rows in torch.randperm(n, generator=generator).split(minibatch_size):
                rows = rows.to(mask.device)
                batch = {k: v[rows] for k, v in roll["batch"].items()}
                logp, _ = token_logprobs(_logits(policy, batch), batch["labels"])  # (b, T-1)
                values = _values(value_model, batch)
                losses = ppo_losses(logp, roll["logp"][rows], advantages[rows], values, roll["values"][rows],
                                    roll["returns"][rows], mask[rows], clip_range, clip_range_vf)
                loss = losses["policy_loss"] + vf_coef * losses["value_loss"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
                for key in stats:
                    stats[key].append(losses[key].item())
    return {key: sum(v) / len(v) for key, v in stats.items()}


def ppo_train(policy: nn.Module, reward_model: RewardModel, tokenizer, prompts: Sequence[str], *,
              num_iterations: int, reference: nn.Module | None = None, value_model: RewardModel | None = None,
              kl_coef: float = 0.1, batch_size: int = 32, lr: float = 1e-5, value_lr: float = 1e-4,
              ppo_epochs: int = 4, minibatch_size: int = 16, max_new_tokens: int = 16, temperature: float = 1.0,
              gamma: float = 1.0, lam: float = 0.95, clip_range: float = 0.2, clip_range_vf: float = 0.2,
              vf_coef: float = 0.1, max_grad_norm: float | None = 1.0, eval_prompts: Sequence[str] | None = None,
              eval_every: int = 5, eval_metric: Callable[[nn.Module], float] | None = None, seed: int = 0,
              device: torch.device | str | None = None, progress: bool = True) -> dict:
    """Run ``num_iterations`` of rollout -> GAE -> PPO update on ``prompts``; returns a history of lists.

    ``reference``: the frozen SFT model (``frozen_copy``), or None for the policy with its
    adapters disabled. ``value_model``: default a trainable copy of ``reward_model``. Each
    iteration samples ``batch_size`` prompts. History per iteration: ``"reward"`` (mean reward
    model score), ``"kl"`` (mean summed log pi / pi_ref per response), ``"clip_frac"``,
    ``"entropy"``, ``"policy_loss"``, ``"value_loss"``, ``"approx_kl"``; every ``eval_every``
    iterations (and at the end), a rollout on ``eval_prompts`` without update gives
    ``"eval_reward"`` and ``"eval_kl"`` at ``"eval_iteration"`` (iteration 0 is before training), and
    ``"eval_metric"``: ``eval_metric(policy)`` if given, a measure of your own (e.g. ``right_answers``)
    taken without changing the run (it must not train the policy or draw from torch's global RNG).
    """
    if num_iterations <= 0:
        raise ValueError(f"num_iterations must be positive, got {num_iterations}")
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be 0 (no penalty) or positive, got {kl_coef}")
    if len(prompts) == 0:
        raise ValueError("ppo_train got no prompts")
    if reference is None:
        check_adapters(policy)
    else:
        check_reference(policy, reference)
    if value_model is None:
        value_model = copy.deepcopy(reward_model).requires_grad_(True)
    for model in (value_model, reward_model):
        check_reference(policy, model)  # a value or reward model tied to the policy would break the same way
    device = device or default_device()
    for model in (policy, value_model, reward_model, reference):
        if model is not None:
            model.to(device)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the policy has no trainable parameters: apply a method or unfreeze some layers first")
    optimizer = torch.optim.AdamW([{"params": trainable, "lr": lr},
                                   {"params": [p for p in value_model.parameters() if p.requires_grad],
                                    "lr": value_lr}], weight_decay=0.0)
    options = dict(reference=reference, kl_coef=kl_coef, max_new_tokens=max_new_tokens, temperature=temperature,
                   gamma=gamma, lam=lam)
    rng = random.Random(seed)
    history: dict[str, list] = {k: [] for k in ("iteration", "reward", "kl", "clip_frac", "entropy", "policy_loss",
                                                "value_loss", "approx_kl", "eval_iteration", "eval_reward",
                                                "eval_kl", "eval_metric")}

    def evaluate(iteration: int) -> None:
        roll = rollout(policy, value_model, reward_model, tokenizer, eval_prompts, seed=seed + 10_000, **options)
        history["eval_iteration"].append(iteration)
        history["eval_reward"].append(roll["scores"].mean().item())
        history["eval_kl"].append(roll["kl"].mean().item())
        if eval_metric is not None:
            history["eval_metric"].append(float(eval_metric(policy)))

    if eval_prompts:
        evaluate(0)
    bar = progress_bar(range(1, num_iterations + 1), disable=not progress, desc="ppo", unit="iterations")
    for iteration in bar:
        chosen = rng.sample(list(prompts), min(batch_size, len(prompts)))
        roll = rollout(policy, value_model, reward_model, tokenizer, chosen, seed=seed + iteration, **options)
        stats = ppo_update(policy, value_model, optimizer, roll, ppo_epochs=ppo_epochs, minibatch_size=minibatch_size,
                           clip_range=clip_range, clip_range_vf=clip_range_vf, vf_coef=vf_coef,
                           max_grad_norm=max_grad_norm, seed=seed + iteration)
        history["iteration"].append(iteration)
        history["reward"].append(roll["scores"].mean().item())
        history["kl"].append(roll["kl"].mean().item())
        history["entropy"].append(roll["entropy"])
        for key, value in stats.items():
            history[key].append(value)
        bar.set_postfix(reward=f"{history['reward'][-1]:.3f}", kl=f"{history['kl'][-1]:.3f}")
        if eval_prompts and (iteration % eval_every == 0 or iteration == num_iterations):
            evaluate(iteration)
    return history


def ppo_experiment(sft_model: nn.Module, tokenizer, reward_model: RewardModel, *, method: str = "full",
                   kl_coef: float = 0.1, num_iterations: int | None = None, lr: float | None = None,
                   num_eval: int | None = None, seed: int = 0, data_seed: int = 0, progress: bool = True,
                   **options) -> dict:
    """PPO from an SFT model against a reward model, on the prompts of ``ftlab.tasks.preferences``.

    The policy is a copy of ``sft_model`` with ``ftlab.apply(policy, method)``; with adapters
    (``"lora"``, ...) the reference is the adapter-disabled policy, otherwise (``"full"``, ...) a
    frozen copy of ``sft_model``. Trains on
    the training prompts and evaluates on held-out test prompts. ``options`` go to ``ppo_train``.
    The prompts come from ``make_preferences(data_seed)``: keep 0, the split that the shipped SFT and
    reward models were trained on, so that the test prompts stay held out for every ``seed`` (which
    sets the sampling and the order of the prompts).
    Returns ``{"model", "history", "samples", "seconds"}``; ``samples`` pairs a few test prompts
    with the greedy answers of the SFT and the PPO model.
    """
    from ftlab.methods import apply
    from ftlab.tasks.preferences import make_preferences

    seed_everything(seed)
    policy = frozen_copy(sft_model)
    policy = apply(policy, method)  # prompt and prefix tuning return a wrapper
    # weight-space adapters (LoRA, ...) can be switched off to give the SFT model; other methods need a copy
    reference = None if has_adapters(policy) else frozen_copy(sft_model)
    data = make_preferences(data_seed)
    train_prompts = sorted({p["prompt"] for p in data["train"]})
    eval_prompts = [p["prompt"] for p in data["test"][:num_eval or pick(96, 16)]]
    start = time.time()
    history = ppo_train(policy, reward_model, tokenizer, train_prompts, reference=reference, kl_coef=kl_coef,
                        num_iterations=num_iterations or pick(40, 3), lr=lr or (1e-5 if method == "full" else 1e-4),
                        eval_prompts=eval_prompts, seed=seed, progress=progress, **options)
    seconds = time.time() - start
    shown = eval_prompts[:6]
    samples = list(zip(shown, generate(sft_model, tokenizer, shown), generate(policy, tokenizer, shown)))
    return {"model": policy.eval(), "history": history, "samples": samples, "seconds": seconds}


# ---------------------------------------------------------------- reference results: what the KL penalty buys

# Notebook 11's reference results (data/results/ppo_kl.csv): PPO of every weight from the shipped SFT and reward
# models, with and without the KL penalty, at a learning rate high enough that within the run the unpenalised
# policy finds what the reward model over-rates. FAST mode shrinks the runs (and must not write data/results).
PPO_KL_CLASSROOM = {"kl_coefs": {"KL penalty 0.5": 0.5, "no KL penalty": 0.0}, "method": "full",
                    "num_iterations": 30, "lr": 2e-4, "batch_size": 16, "minibatch_size": 16, "ppo_epochs": 4,
                    "num_eval": 32, "eval_every": 5, "num_right": 120}
PPO_KL_SETTINGS = pick(PPO_KL_CLASSROOM, {**PPO_KL_CLASSROOM, "num_iterations": 2, "num_eval": 8, "eval_every": 1,
                                          "num_right": 8})


def right_answers(model: nn.Module, tokenizer, pairs: Sequence[dict]) -> float:
    """Exact match (``ftlab.tasks.instructions.exact_match``) of the greedy answers to the instruction prompts of
    ``pairs`` (kind ``"correct"``) against their chosen, right answers: a measure of quality that the reward
    model does not see."""
    from ftlab.tasks.instructions import exact_match

    right = [p for p in pairs if p["kind"] == "correct"]
    if not right:
        raise ValueError("right_answers needs pairs of kind 'correct' (instruction prompts with a right answer)")
    return exact_match(generate(model, tokenizer, [p["prompt"] for p in right]), [p["chosen"] for p in right])


def ppo_kl_sweep(seeds: Sequence[int] = (0, 1, 2), *, out=None, settings: dict | None = None,
                 progress: bool = True):
    """PPO with and without the KL penalty over ``seeds``: the reference results of notebook 11.

        OMP_NUM_THREADS=1 python -c "from ftlab.align.rlhf import ppo_kl_sweep; ppo_kl_sweep()"

    For each seed and each ``settings["kl_coefs"]`` entry (label -> kl_coef), ``ppo_experiment`` from
    the shipped SFT and reward models (``data/sft_tiny``, ``data/reward_tiny``) with the other
    ``settings`` (default ``PPO_KL_SETTINGS``). Rows (``ftlab.align.results.COLUMNS``) go to
    ``out/ppo_kl.csv`` (default ``data/results``): at each evaluation iteration (0 is the SFT model)
    the mean ``"reward"`` and ``"kl"`` (nats per response) on the held-out prompts, and ``"right
    answers"`` (``right_answers`` on the first ``num_right`` held-out instructions). The greedy
    answers of the SFT and PPO models to six held-out prompts go to ``ppo_kl.json`` under
    ``"samples"``. Runs already in the file are skipped. Returns every row of the file.
    """
    from ftlab.align import results
    from ftlab.align.reward import reward_model
    from ftlab.tasks.preferences import make_preferences

    settings = settings or PPO_KL_SETTINGS
    seeds = [int(seed) for seed in seeds]
    out, done = results.start_sweep("ppo_kl", settings, f"ftlab.align.rlhf.ppo_kl_sweep(seeds={seeds})", out)
    rm = reward_model(source="shipped", progress=False)
    sft, tokenizer = rm["sft"]["model"], rm["sft"]["tokenizer"]
    pairs = make_preferences(0)["test"][:settings["num_right"] * 3]  # the kinds take turns: num_right "correct"
    options = {k: v for k, v in settings.items() if k not in ("kl_coefs", "num_right")}
    for seed in seeds:
        for label, kl_coef in settings["kl_coefs"].items():
            if (label, seed) in done:
                continue
            run = ppo_experiment(sft, tokenizer, rm["model"], kl_coef=kl_coef, seed=seed, progress=False,
                                 eval_metric=lambda policy: right_answers(policy, tokenizer, pairs), **options)
            history = run["history"]
            measured = [(it, metric, v) for metric, key in (("reward", "eval_reward"), ("kl", "eval_kl"),
                                                            ("right answers", "eval_metric"))
                        for it, v in zip(history["eval_iteration"], history[key])]
            results.add_run("ppo_kl", [{"setting": label, "seed": seed, "iteration": it, "metric": metric,
                                        "value": value, "seconds": run["seconds"]} for it, metric, value in measured],
                            [list(sample) for sample in run["samples"]], out)
            if progress:
                print(f"  {label} seed {seed}: reward {history['eval_reward'][-1]:+.2f}, "
                      f"KL {history['eval_kl'][-1]:.1f} nats, right answers {history['eval_metric'][-1]:.2f} "
                      f"({run['seconds']:.0f} s)", flush=True)
    return results.load_results("ppo_kl", out)
