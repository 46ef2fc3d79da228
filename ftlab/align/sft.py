"""Supervised fine-tuning (SFT) on instructions: the first step of RLHF (Ouyang et al. 2022, step 1).

A causal language model learns to answer a prompt by maximising the log-likelihood of the
response tokens only:

    L_SFT = - sum_t log pi(y_t | x, y_<t)        x: prompt tokens (labels IGNORE_INDEX), y: response tokens

Examples are formatted with the chat template of ``ftlab.align.common`` (prompt and response
tokenised separately, the prompt's labels ignored). It works with full fine-tuning and with
every method of ``ftlab.apply``. ``sft_model()`` gives the SFT model that notebooks 10 to 12
share: shipped in ``data/sft_tiny``, cached, or trained (``ftlab.align.cache``).
"""
from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ftlab.align.cache import CACHE_VERSION, load_or_train, settings_key
from ftlab.align.common import collate, encode, max_positions
from ftlab.align.generate import generate
from ftlab.config import pick, seed_everything
from ftlab.train import fit
from ftlab.zoo import file_sha256

# ---------------------------------------------------------------- batches, evaluation and training

def sft_loader(examples: Sequence[dict], tokenizer, *, max_length: int, batch_size: int = 16,
               shuffle: bool = False, seed: int = 0, response_key: str = "answer") -> DataLoader:
    """Batches for SFT from ``{"prompt", response_key}`` dicts (``ftlab.tasks.instructions`` data).

    Every example is tokenised (and checked) up front, so a bad one fails before training.
    Each batch is a dict of ``(B, T)`` tensors from ``collate``; ``fit`` trains on it with the
    model's own loss (mean cross-entropy over the response tokens).
    """
    if len(examples) == 0:
        raise ValueError("sft_loader got no examples")
    encoded = [encode(tokenizer, e["prompt"], e[response_key], max_length=max_length) for e in examples]
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(encoded, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=lambda batch: collate(batch, tokenizer.pad_token_id))


def evaluate_exact_match(model: nn.Module, tokenizer, examples: Sequence[dict], *, max_new_tokens: int = 16,
                         batch_size: int = 64) -> dict[str, float]:
    """Exact match of greedy answers per instruction kind, plus ``"all"`` (``ftlab.tasks.instructions``)."""
    from ftlab.tasks.instructions import exact_match_by_kind

    predictions = generate(model, tokenizer, [e["prompt"] for e in examples], max_new_tokens=max_new_tokens,
                           batch_size=batch_size)
    return exact_match_by_kind(examples, predictions)


def train_sft(model: nn.Module, tokenizer, examples: Sequence[dict], *, num_steps: int, lr: float = 1e-3,
              batch_size: int = 16, seed: int = 0, response_key: str = "answer", **fit_options) -> dict:
    """Fine-tune ``model`` on ``{"prompt", response_key}`` examples with ``ftlab.train.fit``; returns its history.

    The loss is the model's own: mean cross-entropy over response tokens (prompt labels -100).
    Apply a method first (``ftlab.apply(model, "lora")``) to train only its parameters.
    """
    data = sft_loader(examples, tokenizer, max_length=max_positions(model), batch_size=batch_size, shuffle=True,
                      seed=seed, response_key=response_key)
    return fit(model, data, num_steps=num_steps, lr=lr, **fit_options)


def mixed_demonstrations(pairs: Sequence[dict], seed: int = 0,
                         kinds: Sequence[str] = ("grammar", "polite")) -> list[dict]:
    """SFT examples ``{"prompt", "answer"}`` from the conversational preference pairs, answered well or badly at random.

    Each pair of one of ``kinds`` gives one demonstration whose answer is its chosen or its rejected
    response with probability 1/2 each: demonstrations of mixed quality, as dialogue collected from
    anywhere would be. A model fine-tuned on them imitates both (polite and rude replies, sentences
    and word salad), which is the behaviour a reward model, PPO and DPO then improve on. Pairs of
    the ``"correct"`` kind are left out by default: their prompts are instructions, whose
    demonstrations come from the curated ``ftlab.tasks.instructions`` (wrong answers there teach
    a small model the mistake itself, e.g. to drop the last word when asked to repeat).
    """
    rng = random.Random(seed)
    return [{"prompt": p["prompt"], "answer": p["chosen"] if rng.random() < 0.5 else p["rejected"]}
            for p in pairs if p.get("kind") in kinds]


def sft_experiment(method: str = "full", *, model_name: str = "tiny", num_steps: int | None = None,
                   lr: float | None = None, warmup_steps: int | None = None, batch_size: int = 32,
                   with_preferences: bool = False, num_test: int | None = None, seed: int = 0, progress: bool = True,
                   **method_options) -> dict:
    """Instruction-tune the shipped tiny GPT-2 and measure exact match on held-out instructions.

    Loads ``ftlab.zoo.load_gpt2(model_name)``, trains on the training split of
    ``ftlab.tasks.instructions`` after ``ftlab.apply(model, method)`` (``"full"`` trains every
    weight), and measures greedy exact match on the test split before and after.
    ``with_preferences=True`` adds ``mixed_demonstrations`` of the training pairs of
    ``ftlab.tasks.preferences``: the SFT model that the reward-model, PPO and DPO experiments
    start from. Returns ``{"model", "tokenizer", "history", "before", "after", "seconds"}``
    (``before``/``after``: exact match per kind and ``"all"``).
    """
    from ftlab.methods import apply
    from ftlab.tasks.instructions import make_instructions
    from ftlab.tasks.preferences import make_preferences
    from ftlab.zoo import load_gpt2

    seed_everything(seed)
    model, tokenizer = load_gpt2(model_name)
    data = make_instructions(seed)
    train = data["train"] + (mixed_demonstrations(make_preferences(seed)["train"], seed) if with_preferences else [])
    test = data["test"][:num_test or pick(len(data["test"]), 48)]
    before = evaluate_exact_match(model, tokenizer, test)
    model = apply(model, method, **method_options)  # prompt and prefix tuning return a wrapper
    lr = lr or (5e-4 if method == "full" else 3e-3)
    start = time.time()
    history = train_sft(model, tokenizer, train, num_steps=num_steps or pick(800, 20), lr=lr, batch_size=batch_size,
                        seed=seed, warmup_steps=pick(30, 2) if warmup_steps is None else warmup_steps,
                        progress=progress)
    seconds = time.time() - start
    after = evaluate_exact_match(model, tokenizer, test)
    return {"model": model.eval(), "tokenizer": tokenizer, "history": history, "before": before, "after": after,
            "seconds": seconds}


# ---------------------------------------------------------------- the SFT model later notebooks reuse

# The SFT model that the reward model, PPO and DPO start from (notebooks 10 to 12): fixed settings, sized so that
# training takes about 5 minutes on one CPU thread (FAST mode: seconds). SFT_CLASSROOM is what data/sft_tiny holds.
SFT_CLASSROOM = {"method": "full", "with_preferences": True, "num_steps": 1200, "warmup_steps": 30, "lr": 5e-4,
                 "batch_size": 16, "seed": 0}
SFT_SETTINGS = pick(SFT_CLASSROOM, {**SFT_CLASSROOM, "num_steps": 20, "warmup_steps": 2})


def sft_cache_settings(settings: dict | None = None) -> dict:
    """Everything the SFT model's weights depend on: ``settings`` (default ``SFT_SETTINGS``), the SHA-256 of
    the tiny GPT-2 checkpoint it starts from, and ``CACHE_VERSION``. Its hash names the cache folder."""
    from ftlab.zoo import OFFLINE

    base = file_sha256(Path(OFFLINE["gpt2"]["tiny"]()) / "model.safetensors")
    return {**(settings or SFT_SETTINGS), "base": base, "version": CACHE_VERSION}


def sft_model(*, source: str = "auto", cache_dir: str | Path | None = None, progress: bool = True) -> dict:
    """The SFT model of notebooks 10 to 12: ``sft_experiment(**SFT_SETTINGS)``, shipped, cached or trained now.

    ``source="auto"`` (default): the shipped ``data/sft_tiny`` when it was made with the current
    settings (classroom mode), else the cache (``$FTLAB_CACHE``, default ``~/.cache/ftlab``),
    else train (about 5 minutes in classroom mode) and save to the cache. ``source="train"``:
    train now whatever is stored (notebook 10, whose lesson the training is). ``source="shipped"``:
    the shipped model, or a ValueError saying why it does not match. See ``ftlab.align.cache``.
    Returns ``{"model", "tokenizer", "before", "after", "seconds", "loss", "settings", "key", "source",
    "cached", "folder"}``: exact match per kind before and after training, the training seconds
    and losses (of the run that made the weights), the settings and their key, where the
    weights came from (``"shipped"``, ``"cache"`` or ``"trained"``; ``cached`` is True unless
    trained now), and their folder as shown to users.
    """
    from ftlab.zoo import load_gpt2

    settings = sft_cache_settings()
    model, tokenizer = load_gpt2("tiny")

    def train():
        result = sft_experiment(**SFT_SETTINGS, progress=progress)
        results = {"before": result["before"], "after": result["after"], "seconds": result["seconds"],
                   "loss": result["history"]["loss"]}
        return result["model"], results

    entry = load_or_train("sft", settings, model, train, source=source, cache_dir=cache_dir)
    return {"model": entry["model"].eval(), "tokenizer": tokenizer, **entry["results"], "settings": settings,
            "key": settings_key(settings), "source": entry["source"], "cached": entry["source"] != "trained",
            "folder": entry["folder"]}
