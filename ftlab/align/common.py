"""What SFT, reward modelling, PPO and DPO share: the chat template, tokenising, log-probabilities, the reference.

Chat template. Our tokenizer (and the hub's GPT-2) has no chat template, so a plain text one
with the model's own special tokens is used, the same layout as the pretraining documents:

    <|endoftext|>Question: what is the plural of fox?\\nAnswer: foxes<|endoftext|>
    ^ bos + prompt                                     ^ " " + response + eos

A tokenizer that defines ``chat_template`` (a hub chat model) uses its own template instead.
Prompt and response are tokenised separately and concatenated, so the boundary between the
ignored labels (``ftlab.train.IGNORE_INDEX``, -100) of the prompt and the response labels is exact.

* formatting and batching: ``format_example``, ``encode``, ``collate``, ``preference_loader``;
* log-probabilities of response tokens: ``token_logprobs``, ``response_logprobs``;
* the frozen reference model of PPO and DPO: ``frozen_copy``, ``check_reference``,
  ``as_reference`` (a frozen copy, or the policy with its adapters disabled);
* ``max_positions``: how many tokens fit in the model's context.

Everything works with full fine-tuning and with every method of ``ftlab.apply``.
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ftlab.methods.base import disable_adapters, tuned_layers
from ftlab.train import IGNORE_INDEX
from ftlab.validate import eval_mode

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
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for row, (p, r) in enumerate(examples):
        n = len(p) + len(r)
        input_ids[row, :n] = torch.tensor(p + r, dtype=torch.long)
        attention_mask[row, :n] = 1
        labels[row, len(p):n] = torch.tensor(r, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


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
    mask = targets != IGNORE_INDEX  # (B, T-1)
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


def has_adapters(model: nn.Module) -> bool:
    """True when ``model`` has injected weight-space adapters (LoRA, ...), which ``disable_adapters`` can switch off.

    PPO and DPO then use the adapter-disabled policy as their reference; other methods need a frozen copy.
    """
    return bool(tuned_layers(model))


def check_adapters(policy: nn.Module) -> None:
    """Raise ValueError unless ``policy`` has injected adapters, so that ``as_reference(policy, None)`` works."""
    if not has_adapters(policy):
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
    adapters_off = disable_adapters(policy) if reference is None else contextlib.nullcontext()
    with eval_mode(model), torch.no_grad(), adapters_off:
        yield model


# ---------------------------------------------------------------- the context length

def max_positions(model: nn.Module) -> int:
    """How many real tokens fit: the context length (``n_positions``) less a prompt/prefix wrapper's virtual tokens."""
    virtual = getattr(model, "num_virtual_tokens", 0)  # prompt and prefix tuning take positions of the context
    for m in (model, getattr(model, "base_model", None)):
        config = getattr(m, "config", None)
        if config is not None:
            return config.max_position_embeddings - virtual
    raise TypeError(f"cannot find the context length of a {type(model).__name__}: it has no transformers config")
