"""Plots as plain functions returning matplotlib Figures.

Every plot a notebook shows is made here, so it can be produced and tested without a
browser; a widget only wraps one of these functions.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt

MEMORY_PARTS = ["weights_trainable", "weights_frozen", "buffers", "gradients", "optimizer_state", "activations"]


def plot_memory(rows: Sequence[dict], unit: str = "MB"):
    """Stacked bars of a memory breakdown, one bar per row of ``ftlab.measure.memory_report``.

    Each row needs the byte counts in ``MEMORY_PARTS`` and a ``name`` for its bar.
    """
    scale = {"KB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(rows), 4))
    names = [row.get("name", str(i)) for i, row in enumerate(rows)]
    bottom = [0.0] * len(rows)
    for part in MEMORY_PARTS:
        values = [row.get(part, 0) / scale for row in rows]
        if not any(values):
            continue
        ax.bar(names, values, bottom=bottom, label=part.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel(f"memory ({unit})")
    ax.set_title("memory of one training step")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def plot_history(histories: dict[str, dict], metric: str = "loss", smooth: int = 1):
    """Training curves: ``histories`` maps a label to a ``fit`` history.

    ``metric="loss"`` plots the training loss of every step (moving average over ``smooth``
    steps); any other name plots that key of the periodic evaluations, e.g. ``"accuracy"``.
    """
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, history in histories.items():
        if metric == "loss":
            steps, values = history["step"], history["loss"]
            if smooth > 1:
                values = [sum(values[max(0, i - smooth + 1): i + 1]) / len(values[max(0, i - smooth + 1): i + 1])
                          for i in range(len(values))]
        else:
            steps, values = history["eval_step"], [e[metric] for e in history["eval"]]
        ax.plot(steps, values, label=label, marker="" if metric == "loss" else "o")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.legend()
    fig.tight_layout()
    return fig
