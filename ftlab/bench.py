"""Speed benchmarks that print ftlab's figures next to the reference: ``python -m ftlab bench lora``.

LoRA on the offline MiniLM, on the CPU, with one batch, one set of targets and one rank for
both sides:

* training step: ftlab's LoRA vs peft's LoRA, the median seconds of a step (forward,
  backward, AdamW) from ``ftlab.measure.time_step``. Goal: ratio ftlab / peft <= 1.05;
* inference: the model after ``ftlab.merge`` (the wrappers stay, the base layers compute
  W + scaling B A) vs the untouched base model, the median seconds of a no-grad forward.
  Goal: ratio <= 1.02.

A shared CPU is noisy, so the two sides are measured in turns (A B, B A, A B, ...) within
each repeat, and the report gives the median of the per-repeat ratios with their range.
"""
from __future__ import annotations

import contextlib
import copy
import statistics
import time

import torch

from ftlab.config import pick
from ftlab.measure import time_step
from ftlab.methods import lora
from ftlab.methods.base import merge
from ftlab.zoo import load_bert

TARGETS = ["query", "value"]


def time_forward(model: torch.nn.Module, batch: dict, *, num_steps: int = 5, warmup: int = 2) -> float:
    """Median seconds of one no-grad forward pass ``model(**batch)`` after ``warmup`` passes."""
    times = []
    with torch.no_grad():
        for i in range(warmup + num_steps):
            start = time.perf_counter()
            model(**batch)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(timers: dict, repeats: int) -> dict[str, list[float]]:
    """Run each timer once per repeat, alternating the order between repeats; {name: [seconds per repeat]}."""
    results = {name: [] for name in timers}
    names = list(timers)
    for i in range(repeats):
        for name in names if i % 2 == 0 else reversed(names):
            results[name].append(timers[name]())
    return results


def _summary(ours: list[float], reference: list[float]) -> dict:
    """Medians of two series of seconds and of their per-repeat ratios ours_i / reference_i, with the ratios' range."""
    ratios = [a / b for a, b in zip(ours, reference)]
    return {"ftlab": statistics.median(ours), "reference": statistics.median(reference),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


@contextlib.contextmanager
def cpu_threads(threads: int | None):
    """Run the block with ``threads`` torch CPU threads (None: leave as is), then restore the number."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def bench_lora(*, batch_size: int | None = None, seq_len: int | None = None, r: int = 8, repeats: int | None = None,
               num_steps: int | None = None, threads: int | None = None, verbose: bool = True) -> dict:
    """Time a training step of ftlab's vs peft's LoRA and inference after merge vs the base model.

    Returns ``{"train": {...}, "inference": {...}}``; each holds the median seconds ``ftlab`` and
    ``reference`` (peft's LoRA; the base model), the median per-repeat ``ratio`` ftlab / reference
    and its range ``ratio_min`` / ``ratio_max``. Sizes default to a classroom run (FAST mode:
    a few seconds). ``threads`` sets torch's CPU threads for the run (on a busy shared machine,
    1 thread gives steadier figures).
    """
    from peft import LoraConfig, get_peft_model  # the reference; needed only here

    batch_size, seq_len = batch_size or pick(16, 2), seq_len or pick(64, 8)
    repeats, num_steps = repeats or pick(7, 2), num_steps or pick(5, 2)
    base, _ = load_bert()
    torch.manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 20000, (batch_size, seq_len)),
             "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
             "labels": torch.randint(0, 2, (batch_size,))}
    ours = lora.apply(copy.deepcopy(base), r=r, lora_alpha=r, targets=TARGETS)
    ref = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=r, target_modules=TARGETS))
    merged = merge(copy.deepcopy(ours)).eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    with cpu_threads(threads):
        if verbose:
            print(f"LoRA r={r} on {TARGETS} of MiniLM, batch {batch_size} x {seq_len} tokens, CPU with "
                  f"{torch.get_num_threads()} threads, {repeats} repeats interleaved")
        train = interleaved({"ftlab": lambda: time_step(ours, batch, num_steps=num_steps),
                             "peft": lambda: time_step(ref, batch, num_steps=num_steps)}, repeats)
        inference = interleaved({"merged": lambda: time_forward(merged, inputs, num_steps=num_steps),
                                 "base": lambda: time_forward(base, inputs, num_steps=num_steps)}, repeats)
    report = {"train": _summary(train["ftlab"], train["peft"]),
              "inference": _summary(inference["merged"], inference["base"])}
    if verbose:
        _print(report["train"], "training step", "ftlab LoRA", "peft LoRA", 1.05)
        _print(report["inference"], "inference", "ftlab merged", "base model", 1.02)
    return report


def _print(summary: dict, what: str, ours: str, reference: str, goal: float) -> None:
    verdict = "ok" if summary["ratio"] <= goal else "ABOVE GOAL"
    print(f"{what} (median):")
    print(f"  {ours:<13} {1000 * summary['ftlab']:9.2f} ms")
    print(f"  {reference:<13} {1000 * summary['reference']:9.2f} ms")
    print(f"  ratio {summary['ratio']:.3f} (per-repeat range {summary['ratio_min']:.3f} to "
          f"{summary['ratio_max']:.3f}); goal <= {goal}: {verdict}")


BENCHMARKS = {"lora": bench_lora}
