"""A reward model learned from preference pairs: RLHF step 2 (Ouyang et al. 2022, eq. 1).

A GPT-2 backbone reads ``prompt + response`` and a scalar head turns the hidden state of the
last real (non-pad) token into the reward r(x, y). Trained on pairs where y_c was preferred to
y_r, with the Bradley-Terry model P(y_c > y_r | x) = sigmoid(r(x, y_c) - r(x, y_r)):

    L_RM = - E_(x, y_c, y_r) [ log sigmoid( r(x, y_c) - r(x, y_r) ) ]

Only reward differences matter, so the head starts at zero: every reward is 0 at first and
the loss starts at log 2 = 0.693. Pairwise accuracy is the fraction of held-out pairs with
r(x, y_c) > r(x, y_r). The same class, read at every position (``values``), is the value
model of PPO (``ftlab.align.rlhf``).
"""
from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ftlab.align.cache import CACHE_VERSION, load_or_train, settings_key
from ftlab.align.common import collate, encode, max_positions, preference_loader
from ftlab.align.sft import sft_model
from ftlab.config import pick, seed_everything
from ftlab.train import fit, to_device
from ftlab.validate import eval_mode


class RewardModel(nn.Module):
    """A transformer backbone plus a scalar head ``score`` (hidden -> 1) read at the last real token.

    ``forward(input_ids, attention_mask)`` -> rewards (B,); ``values(...)`` -> one scalar per
    position (B, T). ``config`` is the backbone's, so ``ftlab.apply`` finds GPT-2's default
    targets (``c_attn``) inside it; ``score`` is an output head (left out by ``"all-linear"``,
    train it with ``modules_to_save=["score"]``).
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        self.score = nn.Linear(backbone.config.hidden_size, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    @classmethod
    def from_causal_lm(cls, model: nn.Module) -> RewardModel:
        """A reward model on a copy of a causal LM's transformer (``model.base_model``; the LM head is dropped)."""
        return cls(copy.deepcopy(model.base_model))

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The head applied at every position: (B, T)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, d)
        return self.score(hidden).squeeze(-1)  # (B, T)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """r(x, y) for each sequence: the head at its last real token (works for left or right padding). (B,)"""
        values = self.values(input_ids, attention_mask)  # (B, T)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        last = (attention_mask * positions).argmax(-1)  # (B,) index of the last 1 in the mask
        return values.gather(1, last[:, None]).squeeze(1)  # (B,)


def reward_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss: mean over pairs of -log sigmoid(r_chosen - r_rejected). Inputs (B,), output a scalar."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def _rewards(model: RewardModel, batch: dict) -> torch.Tensor:
    return model(batch["input_ids"], batch["attention_mask"])  # (B,)


def pair_loss(model: RewardModel, batch: dict) -> torch.Tensor:
    """``reward_loss`` of a ``preference_loader`` batch: the ``loss_fn`` for ``ftlab.train.fit``."""
    return reward_loss(_rewards(model, batch["chosen"]), _rewards(model, batch["rejected"]))


@torch.no_grad()
def pairwise_accuracy(model: RewardModel, data: Iterable) -> float:
    """Fraction of pairs in ``data`` (a ``preference_loader``) with r(x, y_chosen) > r(x, y_rejected).

    A tie (equal rewards, as for the untrained model whose head is zero) counts one half.
    """
    device = next(model.parameters()).device
    correct, seen = 0, 0
    with eval_mode(model):
        for batch in data:
            batch = to_device(batch, device)
            chosen, rejected = _rewards(model, batch["chosen"]), _rewards(model, batch["rejected"])  # (B,), (B,)
            correct += (chosen > rejected).sum().item() + 0.5 * (chosen == rejected).sum().item()
            seen += batch["chosen"]["input_ids"].shape[0]
    if seen == 0:
        raise ValueError("pairwise_accuracy got no pairs")
    return correct / seen


@torch.no_grad()
def score(model: RewardModel, tokenizer, prompts: Sequence[str], responses: Sequence[str], *,
          batch_size: int = 64) -> torch.Tensor:
    """Rewards r(x, y) of ``responses`` to ``prompts`` (same length), formatted as in training. (N,) on the CPU."""
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts and {len(responses)} responses; give one response per prompt")
    device = next(model.parameters()).device
    limit = max_positions(model.backbone)
    encoded = [encode(tokenizer, p, r, max_length=limit) for p, r in zip(prompts, responses)]
    rewards = []
    with eval_mode(model):
        for start in range(0, len(encoded), batch_size):
            batch = to_device(collate(encoded[start:start + batch_size], tokenizer.pad_token_id), device)
            rewards.append(model(batch["input_ids"], batch["attention_mask"]).cpu())
    return torch.cat(rewards) if rewards else torch.zeros(0)


def win_rate(model: RewardModel, tokenizer, prompts: Sequence[str], responses_a: Sequence[str],
             responses_b: Sequence[str]) -> dict:
    """How often ``responses_a`` beat ``responses_b`` under the reward model.

    Returns ``{"wins", "ties", "losses"}`` (fractions; a tie is an equal reward, e.g. the same
    response) and ``"win_rate"`` = wins + ties / 2.
    """
    a = score(model, tokenizer, prompts, responses_a)
    b = score(model, tokenizer, prompts, responses_b)
    n = len(prompts)
    if n == 0:
        raise ValueError("win_rate got no prompts")
    wins, ties = (a > b).sum().item() / n, (a == b).sum().item() / n
    return {"wins": wins, "ties": ties, "losses": 1 - wins - ties, "win_rate": wins + ties / 2}


def train_reward_model(model: RewardModel, tokenizer, pairs: Sequence[dict], *, num_steps: int, lr: float = 3e-4,
                       batch_size: int = 16, seed: int = 0, **fit_options) -> dict:
    """Train ``model`` on ``{"prompt", "chosen", "rejected"}`` pairs with ``ftlab.train.fit`` and ``pair_loss``."""
    data = preference_loader(pairs, tokenizer, max_length=max_positions(model.backbone), batch_size=batch_size,
                             shuffle=True, seed=seed)
    return fit(model, data, num_steps=num_steps, lr=lr, loss_fn=pair_loss, **fit_options)


def reward_experiment(base_model: nn.Module | None = None, tokenizer=None, *, num_steps: int | None = None,
                      lr: float = 3e-4, warmup_steps: int | None = None, batch_size: int = 16,
                      num_test: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Train a reward model on ``ftlab.tasks.preferences`` and measure pairwise accuracy on the test pairs.

    The backbone is a copy of ``base_model`` (default: the shipped tiny GPT-2; the SFT model works
    too). Returns ``{"model", "history", "before", "after", "by_kind", "seconds"}``: accuracies in
    [0, 1] before and after training, and after training per pair kind.
    """
    from ftlab.tasks.preferences import make_preferences
    from ftlab.zoo import load_gpt2

    seed_everything(seed)
    if base_model is None:
        base_model, tokenizer = load_gpt2()
    model = RewardModel.from_causal_lm(base_model)
    data = make_preferences(seed)
    test_pairs = data["test"][:num_test or pick(len(data["test"]), 48)]
    limit = max_positions(model.backbone)
    test = preference_loader(test_pairs, tokenizer, max_length=limit, batch_size=64)
    before = pairwise_accuracy(model, test)
    start = time.time()
    history = train_reward_model(model, tokenizer, data["train"], num_steps=num_steps or pick(300, 20), lr=lr,
                                 batch_size=batch_size, seed=seed,
                                 warmup_steps=pick(30, 2) if warmup_steps is None else warmup_steps, progress=progress)
    seconds = time.time() - start
    by_kind = {kind: pairwise_accuracy(model, preference_loader([p for p in test_pairs if p["kind"] == kind],
                                                                tokenizer, max_length=limit, batch_size=64))
               for kind in dict.fromkeys(p["kind"] for p in test_pairs)}
    return {"model": model.eval(), "history": history, "before": before, "after": pairwise_accuracy(model, test),
            "by_kind": by_kind, "seconds": seconds}


# The reward model of notebooks 11 and 12, on the SFT model's backbone (as Ouyang et al. 2022 do): fixed settings,
# sized so that training takes about 2.5 minutes on one CPU thread (FAST mode: seconds). REWARD_CLASSROOM is what
# data/reward_tiny holds.
REWARD_CLASSROOM = {"num_steps": 300, "warmup_steps": 30, "lr": 3e-4, "batch_size": 16, "seed": 0}
REWARD_SETTINGS = pick(REWARD_CLASSROOM, {**REWARD_CLASSROOM, "num_steps": 20, "warmup_steps": 2})


def reward_cache_settings(sft_settings: dict, settings: dict | None = None) -> dict:
    """Everything the reward model's weights depend on: ``settings`` (default ``REWARD_SETTINGS``), the key of
    the SFT model's settings ``sft_settings`` (``sft_model()["settings"]``) and ``CACHE_VERSION``."""
    return {**(settings or REWARD_SETTINGS), "sft": settings_key(sft_settings), "version": CACHE_VERSION}


def reward_model(*, source: str = "auto", cache_dir=None, progress: bool = True) -> dict:
    """The reward model of notebooks 11 and 12: ``reward_experiment`` on ``sft_model()``, shipped, cached or trained.

    ``source`` as in ``ftlab.align.sft.sft_model``: ``"auto"`` (default) loads the shipped
    ``data/reward_tiny`` when it matches the current settings, else the cache, else trains and
    saves; ``"train"`` trains now (notebook 11, whose lesson it is) on the SFT model that
    ``sft_model()`` gives (shipped, cached or trained); ``"shipped"`` takes both shipped models or
    raises. Returns ``{"model", "sft", "before", "after", "by_kind", "seconds", "loss",
    "settings", "source", "cached", "folder"}``, ``"sft"`` being the ``sft_model`` result it was
    trained from.
    """
    sft = sft_model(source="auto" if source == "train" else source, cache_dir=cache_dir, progress=progress)
    settings = reward_cache_settings(sft["settings"])
    model = RewardModel.from_causal_lm(sft["model"])

    def train():
        result = reward_experiment(sft["model"], sft["tokenizer"], **REWARD_SETTINGS, progress=progress)
        results = {"before": result["before"], "after": result["after"], "by_kind": result["by_kind"],
                   "seconds": result["seconds"], "loss": result["history"]["loss"]}
        return result["model"], results

    entry = load_or_train("reward", settings, model, train, source=source, cache_dir=cache_dir)
    return {"model": entry["model"].eval(), "sft": sft, **entry["results"], "settings": settings,
            "source": entry["source"], "cached": entry["source"] != "trained", "folder": entry["folder"]}
