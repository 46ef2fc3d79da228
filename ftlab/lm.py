"""Causal language modelling: batches of documents, packed pretraining rows, perplexity.

General helpers for any causal language model and tokenizer (the shipped tiny GPT-2 is
pretrained with them, ``tools/pretrain_gpt2.py``; notebooks 01 and 04 measure with them):

* ``lm_loader``: one document per row, padded, padding labelled ``IGNORE_INDEX``;
* ``packed_loader``: documents packed end to end into full rows, no padding (pretraining);
* ``perplexity``: exp of the mean next-token negative log-likelihood over labelled tokens;
* ``unigram_perplexity``: the token-frequency baseline a language model must beat.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ftlab.train import IGNORE_INDEX, to_device
from ftlab.validate import eval_mode


def lm_loader(texts: Sequence[str], tokenizer, *, batch_size: int = 16, shuffle: bool = False, seed: int = 0,
              max_length: int = 256) -> DataLoader:
    """Batches of documents for causal language modelling, as dicts ``input_ids``, ``attention_mask``, ``labels``.

    Each document becomes ``[bos] + tokens + [eos]`` (cut to ``max_length``), padded with the
    tokenizer's pad token to the longest in the batch: all three tensors are ``(B, T)``.
    ``labels`` equals ``input_ids`` except ``IGNORE_INDEX`` (-100) on padding, so padding adds
    nothing to the loss (the model shifts labels by one position itself).
    """
    if len(texts) == 0:
        raise ValueError("lm_loader got no texts")
    if tokenizer.pad_token_id is None or tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("lm_loader needs a tokenizer with bos, eos and pad tokens (set tokenizer.pad_token)")

    def collate(batch):
        ids = [tokenizer(t, verbose=False)["input_ids"] for t in batch]  # no length warning: cut just below
        ids = [[tokenizer.bos_token_id] + x + [tokenizer.eos_token_id] for x in ids]
        ids = [x[:max_length] for x in ids]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(ids), width), dtype=torch.long)  # (B, T)
        for row, x in enumerate(ids):
            input_ids[row, :len(x)] = torch.tensor(x)
            attention_mask[row, :len(x)] = 1
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)  # (B, T)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(list(texts), batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)


def packed_loader(texts: Sequence[str], tokenizer, *, block_size: int = 256, batch_size: int = 16,
                  shuffle: bool = True, seed: int = 0) -> DataLoader:
    """Batches for pretraining with no padding: documents packed into rows of ``block_size`` tokens.

    Every document is written as ``eos + tokens`` into one stream that ends with ``eos`` (so each
    document sits between two ``<|endoftext|>``, as in ``lm_loader``), and the stream is cut into
    rows of ``block_size`` tokens; the last, partial row is dropped. A row may hold the end of one
    document and the start of the next (GPT-2 and nanoGPT pretrain this way): every position
    carries a real token, where padding to the longest document of a batch wastes about a third
    of the compute on this corpus. Returns dicts ``input_ids``, ``attention_mask`` (all ones) and
    ``labels`` (equal to ``input_ids``), each ``(B, block_size)``.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("packed_loader needs a tokenizer with an eos token to separate documents")
    if not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"block_size must be an integer of at least 2, got {block_size!r}")
    documents = tokenizer(list(texts), verbose=False)["input_ids"] if len(texts) else []  # rows are cut below
    stream = [tokenizer.eos_token_id]
    for ids in documents:
        stream += ids + [tokenizer.eos_token_id]
    rows = len(stream) // block_size
    if rows == 0:
        raise ValueError(f"packed_loader got {len(stream)} tokens, fewer than one row of block_size={block_size}; "
                         f"give more text or a smaller block_size")
    blocks = torch.tensor(stream[:rows * block_size]).view(rows, block_size)  # (N, block_size)

    def collate(batch):
        input_ids = torch.stack(batch)  # (B, block_size)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(list(blocks), batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)


def unigram_perplexity(train_ids: Sequence[int], eval_ids: Sequence[int], vocab_size: int) -> float:
    """Perplexity of a unigram model (token frequencies of ``train_ids``, add-one smoothed) on ``eval_ids``.

    ``p(t) = (count(t) + 1) / (N + V)`` and perplexity ``= exp(-mean log p(t))`` over ``eval_ids``:
    the baseline a language model must beat to show it learned more than word frequencies.
    """
    if len(eval_ids) == 0:
        raise ValueError("unigram_perplexity got no evaluation tokens")
    counts = torch.bincount(torch.as_tensor(list(train_ids), dtype=torch.long), minlength=vocab_size).double()
    log_p = torch.log((counts + 1) / (counts.sum() + vocab_size))  # (V,)
    return float(torch.exp(-log_p[torch.as_tensor(list(eval_ids), dtype=torch.long)].mean()))


@torch.no_grad()
def perplexity(model: torch.nn.Module, data: Iterable) -> float:
    """Perplexity of a causal language model over batches from ``lm_loader``.

    ``exp(-(1/N) sum log p(x_t | x_<t))`` over all N labelled target tokens: the logits at
    position t are scored against the label at t+1, and every target token weighs the same.
    """
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    with eval_mode(model):
        for batch in data:
            batch = to_device(batch, device)
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            logits = out.logits[:, :-1]  # (B, T-1, V): position t predicts token t+1
            targets = batch["labels"][:, 1:]  # (B, T-1)
            nll += F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                                   reduction="sum").item()
            count += int((targets != IGNORE_INDEX).sum())
    if count == 0:
        raise ValueError("perplexity got no labelled tokens: is the data empty?")
    return math.exp(nll / count)
