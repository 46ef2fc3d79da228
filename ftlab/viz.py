"""Plots as plain functions returning matplotlib Figures.

Every plot a notebook shows is made here, so it can be produced and tested without a
browser; a widget only wraps one of these functions.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt

from ftlab.measure import MEMORY_PARTS


def plot_memory(rows: Sequence[dict], unit: str = "MB", ax=None):
    """Stacked bars of a memory breakdown, one bar per row of ``ftlab.measure.memory_report``.

    Each row needs the byte counts in ``MEMORY_PARTS`` and a ``name`` for its bar. ``ax``: draw
    into this matplotlib Axes (e.g. one panel of a larger figure) instead of a new figure.
    """
    scale = {"KB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
    if ax is None:
        _, ax = plt.subplots(figsize=(1.6 + 1.4 * len(rows), 4))
    fig = ax.figure
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


def plot_images(dataset, n: int = 20, classes: Sequence[str] | None = None, ncols: int = 10, title: str | None = None):
    """A grid of the first ``n`` images of ``dataset`` (``(x, y)`` pairs, ``x`` normalised ``(3, H, W)``), labelled.

    ``classes`` maps a label index to its name (default: the index itself).
    """
    from ftlab.tasks.images import to_unit

    if not 1 <= n <= len(dataset):
        raise ValueError(f"n must be between 1 and the dataset's {len(dataset)} images, got {n}")
    ncols = min(ncols, n)
    nrows = -(-n // ncols)  # ceiling division
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.1 * ncols, 1.25 * nrows + (0.3 if title else 0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            x, y = dataset[i]
            ax.imshow(to_unit(x).permute(1, 2, 0).numpy())  # (H, W, 3) in [0, 1]
            ax.set_title(classes[int(y)] if classes is not None else str(int(y)), fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_labels(summary, pretrained: str = "glyphs", shifted: bool = True):
    """Test accuracy against labels per class, pretrained next to scratch (``ftlab.transfer.summarize``'s table).

    Solid lines: the test set; dashed (``shifted=True``): the shifted test set. The x axis is
    logarithmic, since each step from 1 to 20 labels multiplies the data.
    """
    fig, ax = plt.subplots(figsize=(6, 3.8))
    k = list(summary.index)
    for model_name, colour in ((pretrained, "C0"), ("scratch", "C1")):
        ax.plot(k, 100 * summary[f"test_{model_name}"], marker="o", color=colour, label=f"{model_name}: test")
        if shifted:
            ax.plot(k, 100 * summary[f"test_shifted_{model_name}"], marker="s", linestyle="--", color=colour,
                    label=f"{model_name}: shifted test")
    ax.set_xscale("log")
    ax.set_xticks(k, [str(v) for v in k])
    ax.minorticks_off()
    ax.set_xlabel("labels per class")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_curves(runs, labels_per_class: int):
    """Validation accuracy against step at ``labels_per_class``, one line per model (mean over seeds).

    ``runs``: the rows of ``ftlab.transfer.compare_pretrained`` (a DataFrame or a list of dicts),
    each with ``model``, ``labels_per_class`` and ``curve = [(step, accuracy), ...]``.
    """
    import pandas as pd

    runs = pd.DataFrame(runs)
    runs = runs[runs.labels_per_class == labels_per_class]
    if runs.empty:
        raise ValueError(f"no runs with labels_per_class={labels_per_class}")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for model_name, group in runs.groupby("model", sort=False):
        curves = [dict(curve) for curve in group.curve]  # {step: accuracy} per seed
        steps = sorted(curves[0])
        mean = [100 * sum(c[s] for c in curves) / len(curves) for s in steps]
        ax.plot(steps, mean, marker="o", label=f"{model_name} (mean of {len(curves)} seed{'s' * (len(curves) > 1)})")
    ax.set_xlabel("step")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{labels_per_class} label{'s' * (labels_per_class > 1)} per class")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_weight_histogram_with_codes(values, codes: dict, bins: int = 121):
    """Histogram of block-normalised weights (in [-1, 1]) under each table of 4-bit levels, one panel per table.

    ``values``: weights divided by their block's absmax (a tensor or array, any shape);
    ``codes``: maps a table's name (e.g. "nf4") to its code values, drawn as vertical lines
    (each distinct value once: FP4's +0 and -0 are one line).
    """
    import numpy as np

    values = np.asarray(values, dtype=np.float64).ravel()
    fig, axes = plt.subplots(len(codes), 1, figsize=(7, 1.9 * len(codes)), sharex=True, squeeze=False)
    for ax, (name, code) in zip(axes[:, 0], codes.items()):
        levels = np.unique(np.asarray(code, dtype=np.float64))
        ax.hist(values, bins=bins, range=(-1, 1), density=True, color="0.7")
        for level in levels:
            ax.axvline(level, color="C3", linewidth=1)
        ax.set_ylabel("density")
        ax.set_title(f"{name}: {len(levels)} distinct levels", fontsize=10)
    axes[-1, 0].set_xlabel("weight / block absmax")
    fig.tight_layout()
    return fig


def plot_quant_error(errors: dict[str, float], title: str = "relative quantisation error"):
    """Bars of one error per quantisation type, e.g. ``{"nf4": 0.094, "fp4": 0.127, "int4": 0.115}``, labelled."""
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(errors), 3.2))
    bars = ax.bar(list(errors), list(errors.values()), color=[f"C{i}" for i in range(len(errors))])
    ax.bar_label(bars, fmt="%.4f", fontsize=9)
    ax.set_ylabel("||W - W_q|| / ||W||")
    ax.set_title(title, fontsize=10)
    ax.margins(y=0.15)
    fig.tight_layout()
    return fig


def plot_singular_values(deltas: dict, top: int | None = None):
    """Singular values of each weight change, largest first, on a log y axis: ``deltas`` maps a label to a 2-D tensor.

    A matrix of rank k has k non-zero singular values; the curve then drops by many orders of
    magnitude (to rounding noise), which is where its rank shows. ``top`` plots only the first values.
    """
    import torch

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for label, delta in deltas.items():
        delta = torch.as_tensor(delta).detach().double()
        if delta.dim() != 2:
            raise ValueError(f"deltas[{label!r}] must be a 2-D matrix, got shape {tuple(delta.shape)}")
        s = torch.linalg.svdvals(delta)
        s = (s / s[0] if s[0] > 0 else s)[:top]  # relative to the largest, so changes of any scale compare
        ax.plot(range(1, len(s) + 1), s.clamp_min(1e-18).numpy(), label=label)
    ax.set_yscale("log")
    ax.set_xlabel("index i")
    ax.set_ylabel("singular value s_i / s_1")
    ax.set_title("spectrum of delta W")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_params_vs_accuracy(df, x: str = "trainable", y: str = "test accuracy", label: str = "method", ax=None):
    """One labelled point per row of ``df`` (e.g. ``ftlab.compare.compare``'s table): trainable parameters
    (log x axis, since methods differ by orders of magnitude) against accuracy in percent. ``ax``: draw
    into this matplotlib Axes instead of a new figure."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.8))
    fig = ax.figure
    for i, row in enumerate(df.to_dict("records")):
        px, py = row[x], 100 * row[y]
        ax.scatter([px], [py], color=f"C{i % 10}")
        ax.annotate(str(row[label]), (px, py), textcoords="offset points", xytext=(5, 4), fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel(f"{x} parameters (log scale)")
    ax.set_ylabel(f"{y} (%)")
    ax.margins(x=0.15, y=0.12)
    fig.tight_layout()
    return fig


def plot_abs_matrix(matrix, title: str = "|delta W|"):
    """An image of the absolute values of a 2-D matrix (e.g. a weight change), with a colour bar: block structure shows."""
    import torch

    matrix = torch.as_tensor(matrix).detach().double()
    if matrix.dim() != 2:
        raise ValueError(f"plot_abs_matrix needs a 2-D matrix, got shape {tuple(matrix.shape)}")
    fig, ax = plt.subplots(figsize=(4.6, 4))
    image = ax.imshow(matrix.abs().numpy(), cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xlabel("input feature")
    ax.set_ylabel("output feature")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_rank_sweep(df, highlight: int | None = None):
    """Two panels from ``ftlab.compare.rank_sweep``'s table: trainable parameters against r, and test accuracy
    (percent) against trainable parameters, each point labelled with its r. ``highlight`` marks row
    ``highlight`` (e.g. the run a widget just added) in red."""
    rows = df.to_dict("records")
    fig, (ax_params, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_params.plot([row["r"] for row in rows], [row["trainable"] for row in rows], "o-")
    ax_params.set_xscale("log", base=2)
    ax_params.set_xlabel("rank r (log scale)")
    ax_params.set_ylabel("trainable parameters")
    ax_params.set_title("parameters grow linearly in r")
    for i, row in enumerate(rows):
        color = "C3" if i == highlight else "C0"
        ax_acc.scatter([row["trainable"]], [100 * row["test accuracy"]], color=color)
        ax_acc.annotate(f"r={row['r']}, alpha={row['alpha']:g}", (row["trainable"], 100 * row["test accuracy"]),
                        textcoords="offset points", xytext=(5, 4), fontsize=8, color=color)
    ax_acc.set_xscale("log")
    ax_acc.set_xlabel("trainable parameters (log scale)")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_title("accuracy against parameters")
    ax_acc.margins(x=0.2, y=0.15)
    fig.tight_layout()
    return fig


def plot_accuracy_matrices(matrices: dict, tasks: Sequence[str], title: str | None = None):
    """One heatmap per entry of ``matrices`` (``{name: (T, T) accuracy matrix R}``, e.g. from
    ``ftlab.continual.compare_strategies``): row i = after training task i, column j = tested on task j,
    each cell labelled with its accuracy in percent. The lower-left triangle shows what was kept."""
    import numpy as np

    names = list(matrices)
    if not names:
        raise ValueError("plot_accuracy_matrices needs at least one matrix")
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names) + 0.6, 2.9), squeeze=False)
    for ax, name in zip(axes[0], names):
        R = np.asarray(matrices[name], dtype=float)
        if R.shape != (len(tasks), len(tasks)):
            raise ValueError(f"matrix {name!r} has shape {R.shape}, expected ({len(tasks)}, {len(tasks)}) "
                             f"for tasks {list(tasks)}")
        ax.imshow(100 * R, cmap="RdYlGn", vmin=0, vmax=100)
        for i in range(len(tasks)):
            for j in range(len(tasks)):
                ax.text(j, i, f"{100 * R[i, j]:.0f}", ha="center", va="center", fontsize=10)
        ax.set_xticks(range(len(tasks)), [f"test\n{t}" for t in tasks], fontsize=8)
        ax.set_yticks(range(len(tasks)), [f"after\n{t}" for t in tasks], fontsize=8)
        ax.set_title(name, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def plot_grouped_bars(df, group: str, bar: str, value: str, ylabel: str | None = None, percent: bool = True,
                      title: str | None = None):
    """Grouped bars from a long table ``df``: one group per value of column ``group``, one bar per value of
    ``bar``, height ``value`` (times 100 with ``percent``), each bar labelled with its height."""
    groups = list(dict.fromkeys(df[group]))
    bars = list(dict.fromkeys(df[bar]))
    scale = 100 if percent else 1
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(groups) * len(bars) * 0.6 + 2), 3.6))
    labelled = set()
    for k, name in enumerate(bars):
        rows = df[df[bar] == name]
        for g, group_name in enumerate(groups):
            match = rows[rows[group] == group_name][value]
            if len(match):
                height = scale * float(match.iloc[0])
                ax.bar(g + (k - (len(bars) - 1) / 2) * width, height, width, color=f"C{k % 10}",
                       label=None if name in labelled else str(name))
                labelled.add(name)
                ax.annotate(f"{height:.0f}" if percent else f"{height:.3g}",
                            (g + (k - (len(bars) - 1) / 2) * width, height), ha="center",
                            va="bottom" if height >= 0 else "top", fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(groups)), [str(g) for g in groups])
    ax.set_ylabel(ylabel or (f"{value} (%)" if percent else value))
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title, fontsize=10)
    ax.margins(y=0.15)
    fig.tight_layout()
    return fig


def plot_storage_curve(curve, unit: str = "MB"):
    """Bytes to store N task models (``ftlab.multitask.storage_curve``'s table): N full copies against one
    frozen base plus N adapters, in ``unit`` (MB = 1e6 bytes)."""
    scale = {"kB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(curve["num_tasks"], curve["full_copies"] / scale, "o-", markersize=3, label="N full fine-tuned copies")
    ax.plot(curve["num_tasks"], curve["base_plus_adapters"] / scale, "o-", markersize=3,
            label="one frozen base + N adapters")
    ax.set_xlabel("number of tasks N")
    ax.set_ylabel(f"storage ({unit})")
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def memory_rows(df) -> list[dict]:
    """``ftlab.compare.compare``'s table as rows for ``plot_memory``: a ``name`` and the bytes of each part."""
    return [{"name": row["method"], **{part: row[part] for part in MEMORY_PARTS}} for row in df.to_dict("records")]


def plot_comparison(df, metric: str | None = None):
    """Two panels from ``ftlab.compare.compare``'s table: trainable parameters (log scale) against the task's
    metric, and the memory of one training step as stacked bars (weights, gradients, optimizer state, activations)."""
    metric = metric or df.attrs.get("metric", "test accuracy")
    fig, (ax_params, ax_memory) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1, 1.3]})
    plot_params_vs_accuracy(df, y=metric, ax=ax_params)
    ax_params.set_title(f"{metric} against trainable parameters" + (f" ({df.attrs['task']})" if "task" in df.attrs
                                                                     else ""))
    plot_memory(memory_rows(df), ax=ax_memory)
    ax_memory.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    return fig


def plot_ppo(histories: dict[str, dict]):
    """PPO runs side by side (``ftlab.align.rlhf.ppo_train`` histories, one per label), three panels:
    held-out reward against KL to the reference (one point per evaluation, from iteration 0), and per iteration
    the clip fraction and the policy's entropy (nats per token)."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for k, (label, history) in enumerate(histories.items()):
        color = f"C{k % 10}"
        axes[0].plot(history["eval_kl"], history["eval_reward"], "o-", color=color, label=label)
        for it, kl, reward in zip(history["eval_iteration"], history["eval_kl"], history["eval_reward"]):
            axes[0].annotate(str(it), (kl, reward), textcoords="offset points", xytext=(4, 4), fontsize=7,
                             color=color)
        axes[1].plot(history["iteration"], history["clip_frac"], "o-", markersize=3, color=color, label=label)
        axes[2].plot(history["iteration"], history["entropy"], "o-", markersize=3, color=color, label=label)
    axes[0].set_xlabel("KL(policy || reference), nats per response")
    axes[0].set_ylabel("mean reward (held-out prompts)")
    axes[0].set_title("reward vs KL (labels: iteration)", fontsize=10)
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("clip fraction")
    axes[2].set_xlabel("iteration")
    axes[2].set_ylabel("entropy (nats per token)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---- scenarios


def plot_seed_spread(df, metrics: Sequence[str], by: str = "method", group: str | None = None,
                     title: str | None = None):
    """One panel per metric: every run of ``df`` as a dot (one per seed) and the mean of each ``by`` value as a bar,
    side by side within each value of ``group`` (e.g. ``labels_per_class``) when given. Metrics in [0, 1]."""
    groups = list(dict.fromkeys(df[group])) if group else [None]
    names = list(dict.fromkeys(df[by]))
    width = 0.8 / len(names)
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(4.0, 1.0 + 0.7 * len(names) * len(groups)) * len(metrics),
                                                         3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for k, name in enumerate(names):
            for g, group_value in enumerate(groups):
                rows = df[(df[by] == name) & ((df[group] == group_value) if group else True)]
                if rows.empty:
                    continue
                x = g + (k - (len(names) - 1) / 2) * width
                values = rows[metric].to_numpy(dtype=float)
                ax.bar(x, values.mean(), width * 0.9, color=f"C{k % 10}", alpha=0.35,
                       label=str(name) if g == 0 else None)
                ax.plot([x] * len(values), values, "o", color=f"C{k % 10}", markersize=4)
                ax.annotate(f"{values.mean():.2f}", (x, values.max()), ha="center", va="bottom", fontsize=7,
                            xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(range(len(groups)), [f"{group} = {v}" if group else "" for v in groups])
        ax.set_ylim(0, 1.08)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} (bar: mean, dots: seeds)", fontsize=10)
    axes[0][0].legend(fontsize=8, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_perplexity_shift(df):
    """``ftlab.scenarios.domain_pretraining_experiment``'s table as arrows from before to after, one per run:
    perplexity on general text (x) against perplexity on domain text (y), both log scale. Down is adaptation, right
    is forgetting."""
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    for k, method in enumerate(dict.fromkeys(df["method"])):
        rows = df[df["method"] == method]
        for i, row in enumerate(rows.to_dict("records")):
            before = (row["general ppl before"], row["domain ppl before"])
            after = (row["general ppl after"], row["domain ppl after"])
            ax.annotate("", after, before, arrowprops={"arrowstyle": "->", "color": f"C{k % 10}"})
            ax.plot(*after, "o", color=f"C{k % 10}", markersize=4, label=str(method) if i == 0 else None)
        ax.plot(rows["general ppl before"], rows["domain ppl before"], "s", color="grey", markersize=5,
                label="before" if k == 0 else None)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("perplexity on general text (held out)")
    ax.set_ylabel("perplexity on clinic notes (held out)")
    ax.set_title("continued pretraining: down = adapted, right = forgot", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_boxes(dataset, predicted=None, classes: Sequence[str] | None = None, n: int = 8, ncols: int = 8):
    """The first ``n`` images of a ``ftlab.tasks.boxes`` split with their true boxes (green) and, given
    ``predicted`` ``(logits (N, C), boxes (N, 4))`` from ``split_outputs``, the predicted box (red) and class."""
    from matplotlib.patches import Rectangle

    from ftlab.tasks.images import to_unit

    x, y, boxes = (t[:n] for t in dataset[:n])
    nrows = (len(x) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.8 * nrows), squeeze=False)
    size = x.shape[-1]
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(x):
            continue
        ax.imshow(to_unit(x[i]).permute(1, 2, 0))
        shown = [(boxes[i], "lime", str(classes[y[i]] if classes else int(y[i])))]
        if predicted is not None:
            logits, predicted_boxes = predicted
            k = int(logits[i].argmax())
            shown.append((predicted_boxes[i], "red", str(classes[k] if classes else k)))
        title = []
        for box, color, name in shown:
            b = (box * size).tolist()
            ax.add_patch(Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0], b[3] - b[1], fill=False, color=color,
                                   linewidth=1.5))
            title.append(name)
        ax.set_title(" / ".join(title), fontsize=8)
    fig.suptitle("green: true box and class" + (", red: predicted" if predicted is not None else ""), fontsize=9)
    fig.tight_layout()
    plt.close(fig)
    return fig
