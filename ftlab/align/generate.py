"""Generation: greedy or sampled responses to prompts, for any ftlab model (also with adapters or a prompt wrapper).

Prompts are formatted with the chat template of ``ftlab.align.common`` and the response runs
until the eos token or ``max_new_tokens``. Prompts with the same number of tokens are generated
together, so no batch needs padding.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedModel

from ftlab.align.common import check_tokenizer, encode, max_positions
from ftlab.validate import check_number, check_positive_int, eval_mode


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
    check_positive_int("max_new_tokens", max_new_tokens)
    check_positive_int("batch_size", batch_size)
    if top_k is not None:
        check_positive_int("top_k", top_k)
    if check_number("temperature", temperature) <= 0:
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
    with eval_mode(model):
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
    return responses


def decode(tokenizer, response_ids: Sequence[int]) -> str:
    """The text of a response: special tokens dropped, surrounding spaces stripped."""
    return tokenizer.decode(list(response_ids), skip_special_tokens=True).strip()


def generate(model: nn.Module, tokenizer, prompts: Sequence[str], **options) -> list[str]:
    """Response texts for ``prompts``; ``options`` as ``generate_ids`` (greedy by default)."""
    return [decode(tokenizer, ids) for ids in generate_ids(model, tokenizer, prompts, **options)]
