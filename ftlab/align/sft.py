"""Supervised fine-tuning (SFT) on instructions: the first step of RLHF (Ouyang et al. 2022, step 1).

A causal language model learns to answer a prompt by maximising the log-likelihood of the
response tokens only:

    L_SFT = - sum_t log pi(y_t | x, y_<t)        x: prompt tokens (labels -100), y: response tokens

Chat template. Our tokenizer (and the hub's GPT-2) has no chat template, so a plain text one
with the model's own special tokens is used, the same layout as the pretraining documents:

    <|endoftext|>Question: what is the plural of fox?\\nAnswer: foxes<|endoftext|>
    ^ bos + prompt                                     ^ " " + response + eos

A tokenizer that defines ``chat_template`` (a hub chat model) uses its own template instead.
Prompt and response are tokenised separately and concatenated, so the boundary between the
-100 labels and the response labels is exact.

This file also holds what SFT, reward modelling, PPO and DPO share: tokenising and batching
(``collate``, ``sft_loader``, ``preference_loader``), log-probabilities of response tokens
(``token_logprobs``, ``response_logprobs``), generation, and the frozen reference model
(``frozen_copy``, ``check_reference``, ``as_reference``). It works with full fine-tuning and
with every method of ``ftlab.apply``.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedModel

from ftlab.config import pick, seed_everything
from ftlab.methods.base import disable_adapters, tuned_layers
from ftlab.train import fit

IGNORE = -100  # the label that cross-entropy skips: prompt and padding positions


# ---------------------------------------------------------------- formatting and tokenising

def check_tokenizer(tokenizer) -> None:
    """Raise ValueError unless ``tokenizer`` has the pad and eos tokens that batching and generation need."""
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token, so batches cannot be padded; set one first, e.g. "
                         "tokenizer.pad_token = tokenizer.eos_token (ftlab.zoo.load_gpt2 does this)")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token, so a response cannot end; use a tokenizer with an "
                         "eos token (GPT-2's is <|endoftext|>)")


def format_example(tokenizer, prompt: str, response: str | None = None) -> tuple[str, str | None]:
    """``(prompt_text, response_text)`` under the chat template (see the module docstring).

    Plain template: ``bos + prompt`` and ``" " + response + eos``. ``response=None`` gives the
    prompt text alone, ready for generation.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"a prompt must be a non-empty string, got {prompt!r}")
    if response is not None and not isinstance(response, str):
        raise TypeError(f"a response must be a string, got {type(response).__name__}")
    if getattr(tokenizer, "chat_template", None):
        user = [{"role": "user", "content": prompt}]
        prompt_text = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        if response is None:
            return prompt_text, None
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
        if not full.startswith(prompt_text):
            raise ValueError("this chat template does not render the prompt as a prefix of prompt + response, so "
                             "the response tokens cannot be separated; use a template with a generation prompt")
        return prompt_text, full[len(prompt_text):]
    bos = tokenizer.bos_token or ""
    if response is None:
        return bos + prompt, None
    return bos + prompt, " " + response.strip() + tokenizer.eos_token


def _ids(tokenizer, text: str) -> list[int]:
    # special tokens are written into the text by the template, so the tokenizer must not add more
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode(tokenizer, prompt: str, response: str | None = None, *,
           max_length: int) -> tuple[list[int], list[int]]:
    """Token ids ``(prompt_ids, response_ids)`` of one example; ``response_ids`` is ``[]`` when None.

    Raises ValueError for an empty prompt, a tokenizer without pad/eos token, or an example
    longer than ``max_length`` tokens (the model's ``n_positions``): long examples are refused,
    not cut, since a cut response would teach the model to stop mid-answer.
    """
    check_tokenizer(tokenizer)
    prompt_text, response_text = format_example(tokenizer, prompt, response)
    prompt_ids = _ids(tokenizer, prompt_text)
    response_ids = _ids(tokenizer, response_text) if response_text is not None else []
    if len(prompt_ids) + len(response_ids) > max_length:
        raise ValueError(f"the example is {len(prompt_ids)} prompt + {len(response_ids)} response tokens, more than "
                         f"max_length={max_length} (the model's n_positions); shorten it (prompt "
                         f"{prompt[:40]!r}...)")
    return prompt_ids, response_ids


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_token_id: int) -> dict:
    """Pad ``(prompt_ids, response_ids)`` pairs on the right into one batch.

    Returns ``input_ids``, ``attention_mask`` and ``labels``, each ``(B, T)``: ``labels`` is
    ``input_ids`` on response tokens and -100 on prompt and padding, so only the response
    contributes to the loss. Masks come from the lengths, never from comparing with the pad id,
    because GPT-2's pad token is often its eos token, which ends every response.
    """
    width = max(len(p) + len(r) for p, r in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)  # (B, T)
    for row, (p, r) in enumerate(examples):
        n = len(p) + len(r)
        input_ids[row, :n] = torch.tensor(p + r, dtype=torch.long)
        attention_mask[row, :n] = 1
        labels[row, len(p):n] = torch.tensor(r, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


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


def preference_loader(pairs: Sequence[dict], tokenizer, *, max_length: int, batch_size: int = 16,
                      shuffle: bool = False, seed: int = 0) -> DataLoader:
    """Batches of ``{"prompt", "chosen", "rejected"}`` pairs for reward modelling and DPO.

    Each batch is ``{"chosen": {...}, "rejected": {...}}``, two ``collate`` batches of the same
    B pairs in the same order. A pair whose chosen and rejected responses are identical raises
    ValueError: it carries no preference (and DPO's gradient on it is exactly zero).
    """
    if len(pairs) == 0:
        raise ValueError("preference_loader got no pairs")
    encoded = []
    for i, pair in enumerate(pairs):
        if pair["chosen"].strip() == pair["rejected"].strip():
            raise ValueError(f"pair {i} has identical chosen and rejected responses ({pair['chosen']!r}); a preference "
                             f"needs two different responses, so drop or fix it")
        chosen = encode(tokenizer, pair["prompt"], pair["chosen"], max_length=max_length)
        rejected = encode(tokenizer, pair["prompt"], pair["rejected"], max_length=max_length)
        encoded.append((chosen, rejected))

    def collate_pairs(batch):
        return {"chosen": collate([c for c, _ in batch], tokenizer.pad_token_id),
                "rejected": collate([r for _, r in batch], tokenizer.pad_token_id)}

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(encoded, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate_pairs)


# ---------------------------------------------------------------- log-probabilities

def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of the labelled tokens, and where labels are set.

    The logits at position t predict the token at t + 1, so with ``logits`` (B, T, V) and
    ``labels`` (B, T) this returns ``logp`` and ``mask``, both (B, T - 1):
    ``logp[b, t] = log softmax(logits[b, t])[labels[b, t + 1]]`` where ``mask`` is 1, else 0.
    """
    targets = labels[:, 1:]  # (B, T-1)
    mask = targets != IGNORE  # (B, T-1)
    # half precision is too coarse for a sum of log-probabilities, so compute in float32 or float64
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))  # (B, T-1, V)
    log_probs = F.log_softmax(logits, dim=-1)  # (B, T-1, V)
    logp = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return logp * mask, mask


def response_logprobs(model: nn.Module, batch: dict) -> torch.Tensor:
    """Summed log-probability of each response given its prompt: log pi(y | x) = sum_t log pi(y_t | x, y_<t).

    ``batch``: ``input_ids``, ``attention_mask``, ``labels`` (B, T) as made by ``collate``
    (prompt and padding labelled -100). Returns (B,). This is the quantity DPO compares.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    logp, _ = token_logprobs(logits, batch["labels"])
    return logp.sum(-1)  # (B,)


# ---------------------------------------------------------------- the frozen reference model

def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every parameter frozen, in eval mode: a reference for DPO and PPO."""
    reference = copy.deepcopy(model)
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference.eval()


def check_reference(policy: nn.Module, reference: nn.Module) -> None:
    """Raise ValueError if ``reference`` shares memory with a trainable parameter of ``policy``.

    Training would then move the reference too, and the KL or log-ratio against it would stay
    near zero whatever the policy learns. Compares the storages' data pointers.
    """
    trainable = {p.untyped_storage().data_ptr() for p in policy.parameters() if p.requires_grad}
    shared = [name for name, p in reference.named_parameters() if p.untyped_storage().data_ptr() in trainable]
    if reference is policy or shared:
        raise ValueError(f"the reference model shares trainable parameters with the policy (e.g. "
                         f"{(shared or ['all'])[0]!r}), so it would change during training; pass "
                         f"frozen_copy(policy) made before training, or reference=None to use the policy with "
                         f"its adapters disabled")


def check_adapters(policy: nn.Module) -> None:
    """Raise ValueError unless ``policy`` has injected adapters, so that ``as_reference(policy, None)`` works."""
    if not tuned_layers(policy):
        raise ValueError("reference=None uses the policy with its adapters disabled, but the policy has no adapters "
                         "(apply LoRA or another weight-space method first), so pass reference=frozen_copy(policy)")


@contextlib.contextmanager
def as_reference(policy: nn.Module, reference: nn.Module | None = None):
    """Context manager that yields the reference model, in eval mode, with gradients off.

    ``reference=None``: the policy itself with its adapters disabled (``ftlab.disable_adapters``),
    which computes exactly the base model, so no second copy of the weights is needed.
    Otherwise ``reference`` (e.g. ``frozen_copy(sft_model)``).
    """
    model = policy if reference is None else reference
    if reference is None:
        check_adapters(policy)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), (disable_adapters(policy) if reference is None else contextlib.nullcontext()):
            yield model
    finally:
        model.train(was_training)


# ---------------------------------------------------------------- generation

def max_positions(model: nn.Module) -> int:
    """How many real tokens fit: the context length (``n_positions``) less a prompt/prefix wrapper's virtual tokens."""
    virtual = getattr(model, "num_virtual_tokens", 0)  # prompt and prefix tuning take positions of the context
    for m in (model, getattr(model, "base_model", None)):
        config = getattr(m, "config", None)
        if config is not None:
            return config.max_position_embeddings - virtual
    raise TypeError(f"cannot find the context length of a {type(model).__name__}: it has no transformers config")


@torch.no_grad()
def generate_ids(model: nn.Module, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 16,
                 do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
                 batch_size: int = 64) -> list[list[int]]:
    """Response token ids for each prompt: greedy (``do_sample=False``) or sampled.

    Sampling draws y_t ~ softmax(logits_t / temperature), restricted to the ``top_k`` most
    likely tokens when given. A response stops after its eos token (which it includes) or after
    ``max_new_tokens``. Prompts with the same number of tokens are generated together, so no
    batch needs padding: no left-padding or position ids, and every ftlab method works unchanged.
    A transformers model (also with adapters injected) keeps its key/value cache and reads one
    new token per step; ftlab's prompt and prefix wrappers rebuild their inputs on every call,
    so for them each step runs the whole sequence again.
    """
    check_tokenizer(tokenizer)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive (use do_sample=False for greedy), got {temperature}")
    limit = max_positions(model)
    prompt_ids = [encode(tokenizer, p, max_length=limit)[0] for p in prompts]
    longest = max(prompt_ids, key=len, default=[])
    if len(longest) + max_new_tokens > limit:
        raise ValueError(f"a prompt of {len(longest)} tokens plus max_new_tokens={max_new_tokens} exceeds the model's "
                         f"{limit} positions; shorten the prompt or ask for fewer new tokens")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(prompt_ids):
        by_length.setdefault(len(ids), []).append(i)

    responses: list[list[int]] = [[] for _ in prompts]
    use_cache = isinstance(model, PreTrainedModel)
    was_training = model.training
    model.eval()
    for length, rows in sorted(by_length.items()):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            ids = torch.tensor([prompt_ids[i] for i in chunk], device=device)  # (b, P)
            done = torch.zeros(len(chunk), dtype=torch.bool, device=device)  # (b,)
            cache, new_ids = None, ids
            for _ in range(max_new_tokens):
                if use_cache:
                    out = model(input_ids=new_ids, attention_mask=torch.ones_like(ids), past_key_values=cache,
                                use_cache=True)
                    cache = out.past_key_values
                else:
                    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
                logits = out.logits[:, -1]  # (b, V)
                if do_sample:
                    logits = logits / temperature
                    if top_k is not None:
                        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (b, 1)
                        logits = logits.masked_fill(logits < kth, float("-inf"))
                    probs = logits.softmax(-1).cpu()  # the generator lives on the CPU, so sampling is reproducible
                    next_ids = torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(device)  # (b,)
                else:
                    next_ids = logits.argmax(-1)  # (b,)
                next_ids = next_ids.masked_fill(done, tokenizer.pad_token_id)
                new_ids = next_ids[:, None]  # (b, 1)
                ids = torch.cat([ids, new_ids], dim=1)  # (b, P + t)
                done |= next_ids == tokenizer.eos_token_id
                if done.all():
                    break
            for row, i in enumerate(chunk):
                out = ids[row, length:].tolist()
                if tokenizer.eos_token_id in out:
                    out = out[:out.index(tokenizer.eos_token_id) + 1]
                responses[i] = out
    model.train(was_training)
    return responses


def decode(tokenizer, response_ids: Sequence[int]) -> str:
    """The text of a response: special tokens dropped, surrounding spaces stripped."""
    return tokenizer.decode(list(response_ids), skip_special_tokens=True).strip()


def generate(model: nn.Module, tokenizer, prompts: Sequence[str], **options) -> list[str]:
    """Response texts for ``prompts``; ``options`` as ``generate_ids`` (greedy by default)."""
    return [decode(tokenizer, ids) for ids in generate_ids(model, tokenizer, prompts, **options)]


# ---------------------------------------------------------------- evaluation and training

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
                   lr: float | None = None, batch_size: int = 32, with_preferences: bool = False,
                   num_test: int | None = None, seed: int = 0, progress: bool = True, **method_options) -> dict:
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
                        seed=seed, warmup_steps=pick(30, 2), progress=progress)
    seconds = time.time() - start
    after = evaluate_exact_match(model, tokenizer, test)
    return {"model": model.eval(), "tokenizer": tokenizer, "history": history, "before": before, "after": after,
            "seconds": seconds}


# ---------------------------------------------------------------- a cache for the models later notebooks reuse

# The SFT model that the reward model, PPO and DPO start from (notebooks 10 to 12): fixed settings, sized so that
# training takes about 3 minutes on a 2-core laptop CPU (FAST mode: seconds).
SFT_SETTINGS = {"method": "full", "with_preferences": True, "num_steps": pick(1200, 20), "lr": 5e-4, "batch_size": 16,
                "seed": 0}


def default_cache_dir() -> Path:
    """Where trained models are kept for later notebooks: ``$FTLAB_CACHE``, else ``~/.cache/ftlab``."""
    return Path(os.environ.get("FTLAB_CACHE") or Path.home() / ".cache" / "ftlab")


def file_digest(path: str | Path) -> str:
    """The first 16 hex digits of the SHA-256 of a file: names a checkpoint by its content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def cache_folder(kind: str, settings: dict, cache_dir: str | Path | None = None) -> Path:
    """``cache_dir / "<kind>-<key>"``, the key being 16 hex digits of the SHA-256 of ``settings`` as sorted JSON.

    ``settings`` must name everything the trained weights depend on (hyperparameters, seed, the
    digest of the starting checkpoint), so that a change to any of them gives a new folder.
    """
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir or default_cache_dir()) / f"{kind}-{key}"


def save_cached(model: nn.Module, folder: str | Path, info: dict) -> None:
    """Write ``model.safetensors`` (every parameter and buffer; tied weights once) and ``info.json`` to ``folder``.

    The weights are written to a temporary name and then renamed, so an interrupted save
    never leaves a half-written file that a later notebook would read.
    """
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "info.json").write_text(json.dumps(info, indent=1))
    partial = folder / "model.safetensors.partial"
    save_model(model, str(partial))
    partial.replace(folder / "model.safetensors")


def load_cached(model: nn.Module, folder: str | Path) -> dict | None:
    """Load ``folder``'s weights into ``model`` and return its ``info.json``; None when absent or unreadable.

    A damaged or mismatching cache counts as absent (the caller trains again and overwrites it):
    a cache is a shortcut, never the only copy of a result.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    folder = Path(folder)
    weights, info = folder / "model.safetensors", folder / "info.json"
    if not (weights.is_file() and info.is_file()):
        return None
    state = copy.deepcopy(model.state_dict())
    try:
        load_model(model, str(weights), strict=True)
        return json.loads(info.read_text())
    except (SafetensorError, RuntimeError, OSError, ValueError) as err:  # damaged file, wrong shapes or names
        model.load_state_dict(state)
        print(f"ignoring the damaged cache {folder} ({type(err).__name__}); training again")
        return None


def sft_model(*, cache_dir: str | Path | None = None, refresh: bool = False, progress: bool = True) -> dict:
    """The SFT model of notebooks 10 to 12: ``sft_experiment(**SFT_SETTINGS)``, or its saved result.

    The first call trains (about 3 minutes in classroom mode) and saves the weights as
    safetensors under ``cache_folder("sft", ...)`` (default ``~/.cache/ftlab``), keyed by
    ``SFT_SETTINGS`` and the digest of the tiny GPT-2 checkpoint; later calls load them.
    ``refresh=True`` trains again whatever is cached. Returns ``{"model", "tokenizer", "before",
    "after", "seconds", "loss", "cached", "folder"}``: exact match per kind before and after
    training, the training seconds and losses (of the run that made the weights), whether they
    came from the cache, and the cache folder.
    """
    from ftlab.zoo import OFFLINE, load_gpt2

    settings = {**SFT_SETTINGS, "checkpoint": file_digest(Path(OFFLINE["gpt2"]["tiny"]()) / "model.safetensors")}
    folder = cache_folder("sft", settings, cache_dir)
    if not refresh:
        model, tokenizer = load_gpt2("tiny")
        info = load_cached(model, folder)
        if info is not None:
            return {"model": model.eval(), "tokenizer": tokenizer, **info, "cached": True, "folder": folder}
    result = sft_experiment(**SFT_SETTINGS, progress=progress)
    info = {"settings": settings, "before": result["before"], "after": result["after"],
            "seconds": result["seconds"], "loss": result["history"]["loss"]}
    save_cached(result["model"], folder, info)
    return {"model": result["model"], "tokenizer": result["tokenizer"], **info, "cached": False, "folder": folder}
