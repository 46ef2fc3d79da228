"""Toy tasks, generated offline and seeded, with fixed train/validation/test splits.

Each task module returns plain Python data (lists of examples); ``text_loader`` turns text
examples into batches that follow ftlab's batch convention (see ``ftlab.train``).
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader


def text_loader(examples: Sequence[tuple[str, int]], tokenizer, *, batch_size: int = 16, shuffle: bool = False,
                seed: int = 0, max_length: int = 64) -> DataLoader:
    """Batches of ``(text, label)`` examples as dicts: ``input_ids``, ``attention_mask``, ``labels``.

    Texts are tokenised per batch and padded to the longest one in it: ``input_ids`` is
    ``(B, T)``, ``labels`` is ``(B,)``.
    """
    if len(examples) == 0:
        raise ValueError("text_loader got no examples")

    def collate(batch):
        texts, labels = zip(*batch)
        enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        enc["labels"] = torch.tensor(labels, dtype=torch.long)
        return enc

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(list(examples), batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)


def split_sizes(sizes: dict | None, defaults: dict[str, int], unit: str = "examples") -> dict[str, int]:
    """How many ``unit`` each split gets: ``defaults`` with ``sizes`` on top, checked before anything is drawn.

    A split not among ``defaults``'s, or a size that is not a positive whole number, is a ValueError.
    """
    sizes = {**defaults, **(sizes or {})}
    for split, n in sizes.items():
        if split not in defaults:
            raise ValueError(f"unknown split {split!r}; splits are {list(defaults)}")
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"split {split!r} needs a positive number of {unit} (a whole number), got {n!r}")
    return sizes


def distinct_documents(make_document: Callable[[random.Random, str], str], sizes: dict[str, int],
                       seed: int) -> dict[str, list[str]]:
    """``{split: [document, ...]}``, ``sizes[split]`` documents per split, no document in two splits.

    Each document is ``make_document(rng, split)``; one that was already drawn is drawn again. One
    ``random.Random(seed)`` draws everything, so the same seed and sizes give the same documents.
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    data = {}
    for split, n in sizes.items():
        docs = []
        while len(docs) < n:
            doc = make_document(rng, split)
            if doc not in seen:  # a repeat would put the same text in two splits
                seen.add(doc)
                docs.append(doc)
        data[split] = docs
    return data


def balanced_examples(text: Callable[[random.Random, str, int], str], num_classes: int, sizes: dict[str, int],
                      seed: int) -> dict[str, list[tuple[str, int]]]:
    """``{split: [(text, label), ...]}``, ``sizes[split]`` examples per split, for a text classification task.

    Labels take turns (0, 1, ..., num_classes - 1, 0, 1, ...), so every split is balanced; each text is
    ``text(rng, split, label)`` and each split is shuffled. One ``random.Random(seed)`` draws everything,
    so the same seed always gives the same data.
    """
    rng = random.Random(seed)
    data = {}
    for split, n in sizes.items():
        examples = []
        for k in range(n):
            label = k % num_classes
            examples.append((text(rng, split, label), label))
        rng.shuffle(examples)
        data[split] = examples
    return data
