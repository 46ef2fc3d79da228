"""Plots as plain functions returning matplotlib Figures.

Every plot a notebook shows is made here, so it can be produced and tested without a
browser; a widget only wraps one of these functions.
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt

from ftlab.measure import MEMORY_PARTS


def _finish(fig):
    """Lay ``fig`` out and close it, so that Jupyter's inline backend shows it once (as the value returned); returns
    ``fig``."""
    fig.tight_layout()
    plt.close(fig)
    return fig


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
        ax.bar(names, values, bottom=bottom, label=part.replace("_", " "),
               color=f"C{MEMORY_PARTS.index(part)}")  # one colour per part in every figure, whichever parts are 0
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
    """Trainable parameters (log x axis, since methods differ by orders of magnitude) against accuracy in percent,
    one colour and marker per ``label`` (e.g. ``ftlab.compare.compare``'s table, one row per method and seed):
    every run a small point, the mean over runs a large marker with a bar from the lowest to the highest run.
    Labels go in a legend beside the axes, so they never overlap; groups with nearly equal counts are drawn side by
    side (``dodged_positions``). ``ax``: draw into this Axes instead."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 3.8))
    fig = ax.figure
    groups = list(dict.fromkeys(df[label]))
    styles = method_styles(groups)
    counts = {name: float(df.loc[df[label] == name, x].iloc[0]) for name in groups}
    shown = dodged_positions(counts)
    for name in groups:
        rows = df[df[label] == name]
        colour, marker = styles[name]
        px, values = shown[name], 100 * rows[y].astype(float)
        ax.scatter([px] * len(values), values, color=colour, marker=marker, s=14, alpha=0.45, linewidths=0)
        mean = values.mean()
        ax.errorbar([px], [mean], yerr=[[mean - values.min()], [values.max() - mean]], color=colour, marker=marker,
                    markersize=8, capsize=3, linestyle="none", label=f"{name} (n={len(values)})")
    ax.set_xscale("log")
    ax.set_xlabel(f"{x} parameters (log scale{'; near-equal counts drawn side by side' if shown != counts else ''})")
    ax.set_ylabel(f"{y} (%)")
    ax.margins(x=0.15, y=0.12)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="mean, min-max", title_fontsize=8)
    fig.tight_layout()
    return fig


def dodged_positions(counts: dict[str, float], close: float = 1.25, step: float = 1.12) -> dict[str, float]:
    """Where to draw each group on a log axis: its own count, moved right by a factor ``step`` per group already
    drawn within a factor ``close`` of it, so that methods with nearly equal counts (LoRA and DoRA, prompt tuning
    and LoKr) stand side by side instead of on top of each other. At most a few percent of a decade."""
    shown = {}
    for name, count in sorted(counts.items(), key=lambda item: item[1]):
        neighbours = sum(1 for other in shown.values() if count / close <= other <= count * close * step ** 3)
        shown[name] = count * step ** neighbours
    return shown


def plot_abs_matrix(matrix, title: str = "|delta W|"):
    """An image of the absolute values of a 2-D matrix (e.g. a weight change), with a colour bar: block structure
    shows."""
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


def plot_rank_sweep(df, highlight: int | None = None, metric: str = "test accuracy"):
    """Two panels from ``ftlab.compare.rank_sweep``'s table (one row per (r, alpha) and seed): trainable parameters
    against r, and ``metric`` (percent) against trainable parameters: every seed a small point, the mean a large
    one with a bar from the lowest to the highest seed, labelled with its r and alpha. ``highlight`` marks the
    (r, alpha) of row ``highlight`` (e.g. the run a widget just added) in red."""
    configs = list(dict.fromkeys(zip(df["r"], df["alpha"])))
    marked = None if highlight is None else tuple(df[["r", "alpha"]].iloc[highlight])
    fig, (ax_params, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    per_rank = df.drop_duplicates("r").sort_values("r")
    ax_params.plot(per_rank["r"], per_rank["trainable"], "o-")
    ax_params.set_xscale("log", base=2)
    ax_params.set_xlabel("rank r (log scale)")
    ax_params.set_ylabel("trainable parameters")
    ax_params.set_title("parameters grow linearly in r")
    labelled = {}  # labels already placed at each parameter count: the alphas of one rank share an x position
    for r, alpha in configs:
        rows = df[(df["r"] == r) & (df["alpha"] == alpha)]
        color = "C3" if (r, alpha) == marked else "C0"
        px, values = float(rows["trainable"].iloc[0]), 100 * rows[metric].astype(float)
        below = labelled.get(px, 0)
        labelled[px] = below + 1
        ax_acc.scatter([px] * len(values), values, color=color, s=12, alpha=0.45, linewidths=0)
        mean = values.mean()
        ax_acc.errorbar([px], [mean], yerr=[[mean - values.min()], [values.max() - mean]], color=color, marker="o",
                        capsize=3, linestyle="none")
        ax_acc.annotate(f"r={r}, alpha={alpha:g}", (px, mean), textcoords="offset points", xytext=(6, 4 - 11 * below),
                        fontsize=8, color=color)
    seeds = df.groupby(["r", "alpha"]).size()
    ax_acc.set_xscale("log")
    ax_acc.set_xlabel("trainable parameters (log scale)")
    ax_acc.set_ylabel(f"{metric} (%)")
    ax_acc.set_title(f"mean and range over {seeds.min()}" + (f"-{seeds.max()}" if seeds.max() > seeds.min() else "")
                     + " seed(s)")
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
    """``ftlab.compare.compare``'s table (one row per method and seed) in two or three panels: the methods ranked
    by their mean ``metric`` with every seed as a point and the range as a bar (``plot_spread``); the metric
    against trainable parameters (``plot_params_vs_accuracy``); and, when ``compare`` measured it, the memory of
    one training step as stacked bars (weights, gradients, optimizer state, activations; first seed per method)."""
    metric = metric or df.attrs.get("metric", "test accuracy")
    measured = "gradients" in df
    widths = [1, 1.35] + ([1.3] if measured else [])
    fig, axes = plt.subplots(1, len(widths), figsize=(6.2 * len(widths), 4.4), gridspec_kw={"width_ratios": widths})
    task = f" ({df.attrs['task']})" if "task" in df.attrs else ""
    plot_spread(df, value=metric, ax=axes[0])
    axes[0].set_title(f"{metric}{task}", fontsize=10)
    plot_params_vs_accuracy(df, y=metric, ax=axes[1])
    axes[1].set_title(f"{metric} against trainable parameters", fontsize=10)
    if measured:
        plot_memory(memory_rows(df.drop_duplicates("method")), ax=axes[2])
        axes[2].tick_params(axis="x", labelrotation=45)
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
            if it == 0 and k > 0:  # every run starts at the reference model: one label for the shared point
                continue
            axes[0].annotate(str(it), (kl, reward), textcoords="offset points", xytext=(4, 4), fontsize=7,
                             color="black" if it == 0 else color)
        axes[1].plot(history["iteration"], history["clip_frac"], "o-", markersize=3, color=color, label=label)
        axes[2].plot(history["iteration"], history["entropy"], "o-", markersize=3, color=color, label=label)
    axes[0].set_xlabel("KL(policy || reference), nats per response")
    axes[0].set_ylabel("mean reward (held-out prompts)")
    axes[0].set_title("reward vs KL (labels: iteration)", fontsize=10)
    axes[0].margins(x=0.12, y=0.12)  # room for the labels of the last points
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("clip fraction")
    axes[2].set_xlabel("iteration")
    axes[2].set_ylabel("entropy (nats per token)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---- train

def plot_train_val(history: dict, smooth: int = 5):
    """Training loss against validation loss for one ``fit`` history, with the best step marked.

    The training loss of every step (light) and its moving average over ``smooth`` steps; the
    validation loss at each evaluation (dots). A gap that opens while the training loss keeps
    falling is overfitting; the dashed line is ``history["best_step"]``, the dotted one the step
    where early stopping stopped (``history["stopped_step"]``), if it did.
    """
    if not history["eval_step"]:
        raise ValueError("the history has no validation results: run fit with eval_data= and eval_every=")
    steps, losses = history["step"], history["loss"]
    averaged = [sum(losses[max(0, i - smooth + 1): i + 1]) / len(losses[max(0, i - smooth + 1): i + 1])
                for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.plot(steps, losses, color="C0", alpha=0.25, linewidth=1, label="training loss (each step)")
    ax.plot(steps, averaged, color="C0", label=f"training loss (mean of the last {smooth} steps, so it lags)")
    ax.plot(history["eval_step"], [e["loss"] for e in history["eval"]], "o-", color="C1", markersize=4,
            label="validation loss")
    best = history.get("best_step")
    if best is not None:
        ax.axvline(best, color="C2", linestyle="--", label=f"best step {best}")
    stopped = history.get("stopped_step")
    if stopped is not None:
        ax.axvline(stopped, color="C3", linestyle=":", label=f"stopped at {stopped}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    return _finish(fig)


def plot_lr_find(result: dict, ax=None):
    """The learning-rate range test of ``ftlab.lr_find``: loss against rate on a log axis.

    The raw loss of each step (light), the smoothed curve, the rate at its minimum and the
    suggestion (the minimum's rate / 10) marked. ``ax``: draw into this Axes (e.g. to put full
    fine-tuning and LoRA side by side) instead of a new figure.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6))
    fig = ax.figure
    ax.plot(result["lrs"], result["losses"], color="C0", alpha=0.3, linewidth=1, label="loss")
    ax.plot(result["lrs"], result["smoothed"], color="C0", label="smoothed")
    i_min = result["lrs"].index(result["lr_min"])
    ax.plot([result["lr_min"]], [result["smoothed"][i_min]], "o", color="C3",
            label=f"minimum at {result['lr_min']:.1e}")
    ax.axvline(result["suggestion"], color="C2", linestyle="--", label=f"suggestion {result['suggestion']:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    return _finish(fig)


# ---- evidence

_COLOURS = [plt.get_cmap("tab20")(i) for i in list(range(0, 20, 2)) + list(range(1, 20, 2))]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*"]


def method_styles(labels) -> dict:
    """``{label: (colour, marker)}``, distinct for up to 20 labels; a method name (``ftlab.methods.available()``)
    always gets the same style, in every plot."""
    from ftlab.methods import available

    known = available()
    styles, extra = {}, 0
    for label in labels:
        if label in known:
            index = known.index(label)
        else:
            index, extra = len(known) + extra, extra + 1
        styles[label] = (_COLOURS[index % len(_COLOURS)], _MARKERS[index % len(_MARKERS)])
    return styles


def plot_spread(df, value: str | None = None, by: str = "method", ax=None, percent: bool = True,
                ranked: bool = True):
    """One row per group (``by``), best mean on top: every run (seed) a small point, the mean a large marker, the
    range from the lowest to the highest run a bar, and the number of runs beside it. Overlapping bars mean
    the runs cannot tell the groups apart. ``value``: default ``df.attrs["metric"]`` or ``"value"``.
    ``ranked=False``: the groups top to bottom in the order they first appear in ``df`` (settings to compare
    side by side, such as pairs with and without an option), not by their means."""
    value = value or df.attrs.get("metric") or "value"
    scale = 100 if percent else 1
    groups = df.groupby(by, sort=False)[value]
    means = groups.mean().sort_values() if ranked else groups.mean()[::-1]  # the first row plotted is the bottom
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 0.9 + 0.38 * len(means)))
    fig = ax.figure
    styles = method_styles(list(dict.fromkeys(df[by])))  # by first appearance, as the other plots of a figure
    for row, name in enumerate(means.index):
        values = scale * df.loc[df[by] == name, value].astype(float)
        _draw_runs(ax, values, row, styles[name])
    ax.set_yticks(range(len(means)), [str(name) for name in means.index])
    ax.set_xlabel(f"{value} (%)" if percent else value)
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.12)
    fig.tight_layout()
    return fig


def _draw_runs(ax, values, row: float, style: tuple[str, str], point_size: float = 16,
               label_after: float | None = None) -> None:
    """One group's runs on row ``row`` of ``ax``, as ``plot_spread`` draws them: every run a small point (of
    ``point_size``), the mean a large black-edged marker, the range from the lowest to the highest run a bar,
    and ``n=`` the number of runs beside it (to the right of ``label_after`` too, e.g. a live run's star).
    ``style``: ``(colour, marker)``, as ``method_styles`` gives."""
    colour, marker = style
    ax.plot([values.min(), values.max()], [row, row], color=colour, linewidth=2, alpha=0.6)
    ax.scatter(values, [row] * len(values), color=colour, marker=marker, s=point_size, alpha=0.5, linewidths=0)
    ax.scatter([values.mean()], [row], color=colour, marker=marker, s=70, edgecolors="black", linewidths=0.6,
               zorder=3)
    right = values.max() if label_after is None else max(values.max(), label_after)
    ax.annotate(f"n={len(values)}", (right, row), textcoords="offset points",
                xytext=(5 if label_after is None else 10, -3), fontsize=7)  # clear of a star's points


def plot_schedules(decay, warm):
    """Notebook 14's weight decay and warm-up runs (``ftlab.overfitting.schedule_runs``) side by side: test accuracy
    per setting, every seed a point, in the order of the table (a run without the option first), not ranked."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 3.6), gridspec_kw={"width_ratios": [1, 1.3]})
    plot_spread(decay, value="value", by="setting", ax=left, ranked=False)
    left.set(title="digits: weight decay (full fine-tuning)", xlabel="test accuracy (%)")
    plot_spread(warm, value="value", by="setting", ax=right, ranked=False)
    right.set(title="sentiment: warm-up then cosine decay, against a constant rate", xlabel="test accuracy (%)")
    fig.tight_layout()
    return fig


def seed_count(counts) -> str:
    """``"n=3"``, or ``"n=3-5"`` when the points of a line rest on different numbers of runs."""
    low, high = int(counts.min()), int(counts.max())
    return f"n={low}" if low == high else f"n={low}-{high}"


def plot_sweep(rows, x: str = "num_steps", value: str = "value", by: str = "method", live=None,
               methods=None, percent: bool = True):
    """Reference results against a budget axis: per group (``by``, e.g. method), the mean over seeds as a line
    and the range from the lowest to the highest seed as a band, ``x`` on a log axis (``num_steps``,
    ``train_examples`` or ``labels_per_class``). ``rows``: ``ftlab.sweep``'s table, sliced to one value of the
    other budget axes. ``live``: rows of your own run (same columns), drawn as black-edged stars on top, so
    you see where it falls in the stored spread. ``methods``: the groups to draw (default all)."""
    import numpy as np

    scale = 100 if percent else 1
    names = list(methods) if methods is not None else list(dict.fromkeys(rows[by]))
    unknown = [name for name in names if name not in set(rows[by])]
    if unknown:
        raise ValueError(f"no rows for {by} {unknown}; the table has {', '.join(map(str, dict.fromkeys(rows[by])))}")
    styles = method_styles(names)
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for name in names:
        stats = rows[rows[by] == name].groupby(x)[value].agg(["mean", "min", "max", "count"])
        colour, marker = styles[name]
        xs = np.asarray(stats.index, dtype=float)
        ax.fill_between(xs, scale * stats["min"], scale * stats["max"], color=colour, alpha=0.15, linewidth=0)
        ax.plot(xs, scale * stats["mean"], color=colour, marker=marker, label=f"{name} ({seed_count(stats['count'])})")
        if live is not None and name in set(live[by]):
            mine = live[live[by] == name]
            ax.scatter(mine[x], scale * mine[value], color=colour, marker="*", s=160, edgecolors="black",
                       linewidths=0.8, zorder=3)
    if live is not None:
        ax.scatter([], [], color="white", marker="*", s=160, edgecolors="black", label="your run")
    ax.set_xscale("log")
    ticks = sorted(set(rows[x]))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(x.replace("_", " ") + " (log scale)")
    ax.set_ylabel(f"{value} (%)" if percent else value)
    ax.set_title("mean over seeds (line) and range (band)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


# ---- estimate

def plot_memory_by_model_size(df, gpus: Sequence[float] = (16, 24, 48, 80)):
    """Memory of one training step against model size (``ftlab.estimate.memory_by_model_size``'s table), log-log:
    one line per method (colour) and precision (line style), with GPUs of ``gpus`` GiB drawn as grey lines."""
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = ["-", "--", ":", "-."]
    precisions = list(dict.fromkeys(df["precision"]))
    for i, method in enumerate(dict.fromkeys(df["method"])):
        for j, precision in enumerate(precisions):
            rows = df[(df["method"] == method) & (df["precision"] == precision)].sort_values("parameters")
            ax.plot(rows["parameters"], rows["total"] / 2**30, styles[j % len(styles)], marker="o", markersize=3,
                    color=f"C{i % 10}", label=f"{method}, {precision}")
    for gpu in gpus:
        ax.axhline(gpu, color="grey", linewidth=0.8, zorder=0)
        ax.annotate(f"{gpu:g} GB GPU", (df["parameters"].min(), gpu), textcoords="offset points", xytext=(2, 2),
                    fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("memory of one training step (GiB)")
    ax.legend(fontsize=8, ncol=2)
    return _finish(fig)


def plot_recommendation(table):
    """``ftlab.recommend``'s table in three panels, one bar per method: memory of the cheapest setting (green:
    fits, red: does not fit) against the GPU, storage for all tasks, and quality against full fine-tuning
    with its spread over seeds ("not measured" where the lab has no result). Methods that do not apply are
    left out."""
    rows = table[table["memory_gib"].notna()]
    y = range(len(rows))
    fig, (ax_memory, ax_storage, ax_quality) = plt.subplots(1, 3, figsize=(13, 0.45 * len(rows) + 1.6), sharey=True)
    ax_memory.barh(y, rows["memory_gib"], color=["C2" if fits else "C3" for fits in rows["fits"]])
    if "gpu_memory_gb" in table.attrs:
        ax_memory.axvline(table.attrs["gpu_memory_gb"], color="black", linewidth=1)
        ax_memory.axvline(table.attrs["usable_gib"], color="black", linewidth=0.8, linestyle="--")
    ax_memory.set_xlabel("GiB for one step (line: the GPU, dashed: usable)")
    ax_storage.barh(y, rows["storage_all_tasks_gib"], color="C0")
    ax_storage.set_xlabel(f"GiB stored for {table.attrs.get('num_tasks', 'all')} task(s)")
    measured = rows["quality_vs_full"].notna()
    ax_quality.barh([k for k, m in zip(y, measured) if m], rows["quality_vs_full"][measured],
                    xerr=rows["quality_spread"][measured], color="C1", capsize=3)
    for k, m in zip(y, measured):
        if not m:
            ax_quality.annotate("not measured", (0, k), va="center", fontsize=8, color="grey")
    ax_quality.axvline(0, color="black", linewidth=0.8)
    ax_quality.set_xlabel("metric minus full fine-tuning's")
    ax_memory.set_yticks(list(y), list(rows["method"]))
    ax_memory.invert_yaxis()
    return _finish(fig)


# ---- nbB1

def plot_round_trip(result: dict, weight_std: float, reference: dict | None = None, error_range: float = 2.5):
    """One quantisation setting of a weight, from ``ftlab.methods.nf4.round_trip``'s ``result``, in two panels:
    the histogram of the rounding errors W - W_hat in units of the weight's standard deviation ``weight_std``
    (log count axis, fixed range +-``error_range``; errors beyond it are counted in the outermost bins), and the
    setting's place in the plane of bits per weight against relative error. ``reference``: another round_trip
    result (e.g. QLoRA's default: nf4, block 64, double quantisation) drawn in grey in both panels, unless it is
    the same setting. The axes stay fixed for the usual settings, so that a widget's updates compare by eye."""
    import numpy as np

    def label(r: dict) -> str:
        return f"{r['quant_type']}, block {r['block_size']}, double quant {'on' if r['double_quant'] else 'off'}"

    if reference is not None and label(reference) == label(result):
        reference = None  # the same setting: drawn once

    # fixed margins instead of tight_layout, and one drawn step curve per histogram: an update stays well under a second
    fig, (ax_hist, ax_plane) = plt.subplots(1, 2, figsize=(10.5, 3.6), gridspec_kw={"width_ratios": [1.5, 1]})
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.15, top=0.9, wspace=0.25)
    bins = np.linspace(-error_range, error_range, 121)
    shown = [r for r in (result, reference) if r is not None]  # the reference's outline on top
    for r in shown:
        errors = np.clip(r["error"].double().numpy().ravel() / weight_std, -error_range, error_range)
        counts, _ = np.histogram(errors, bins=bins)
        style = {"color": "0.55", "linewidth": 1.2} if r is reference else {"color": "C0", "alpha": 0.75, "fill": True}
        ax_hist.stairs(counts, bins, label=label(r), **style)
    ax_hist.set_yscale("log")
    ax_hist.set_xlabel("rounding error (W - W_hat) / std(W)")
    ax_hist.set_ylabel("weights (log scale)")
    ax_hist.set_title(f"{label(result)}: {result['bits_per_parameter']:.3f} bits per weight", fontsize=10)
    ax_hist.legend(fontsize=8, loc="upper right")

    for r in shown:
        colour = "0.55" if r is reference else "C0"
        ax_plane.scatter([r["bits_per_parameter"]], [r["relative_error"]], color=colour, s=60, zorder=3)
        ax_plane.annotate(f"{r['bits_per_parameter']:.3f} bits, {r['relative_error']:.4f}",
                          (r["bits_per_parameter"], r["relative_error"]), textcoords="offset points",
                          xytext=(8, 6 if r is result else -12), fontsize=8, color=colour)
    bits = max(r["bits_per_parameter"] for r in shown)
    worst = max(r["relative_error"] for r in shown)
    ax_plane.set_xlim(3.9, max(6.6, bits + 0.6))
    ax_plane.set_ylim(0, max(0.2, 1.2 * worst))
    ax_plane.set_xlabel("stored bits per weight (float32: 32)")
    ax_plane.set_ylabel("||W - W_hat|| / ||W||")
    ax_plane.set_title("cost against error (lower left is better)", fontsize=10)
    ax_plane.grid(alpha=0.3)
    plt.close(fig)
    return fig


# ---- nbC

def plot_spread_panels(df, value: str, by: str, panel: str, *, absent: dict | None = None, live=None,
                       percent: bool = True, xlabel: str | None = None, title: str | None = None):
    """Runs over seeds, one panel per value of column ``panel`` (e.g. a task or a setting), one row per group
    (``by``): every run a small point, the mean a large marker, the range from the lowest to the highest run a bar,
    the number of runs beside it, as in ``plot_spread``. Rows keep the order of ``df`` in every panel, so a row is
    the same group everywhere. A group with no runs in a panel is listed there in grey with the reason
    ``absent[group]`` (default "no runs"), so a missing result never reads as a zero. ``live``: rows of your own
    run (same columns), drawn as black-edged stars."""
    absent = absent or {}
    scale = 100 if percent else 1
    panels = list(dict.fromkeys(df[panel]))
    groups = list(dict.fromkeys(df[by]))
    if not panels:
        raise ValueError("plot_spread_panels needs at least one row")
    styles = method_styles(groups)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1.6, 1.0 + 0.45 * len(groups)),
                             sharex=True, sharey=True, squeeze=False)
    rows_of = {g: len(groups) - 1 - k for k, g in enumerate(groups)}  # first group on top
    for ax, name in zip(axes[0], panels):
        here = df[df[panel] == name]
        for group in groups:
            values = scale * here.loc[here[by] == group, value].astype(float)
            row = rows_of[group]
            if values.empty:
                ax.annotate(f"none: {absent.get(group, 'no runs')}", (0.02, row), xycoords=("axes fraction", "data"),
                            va="center", fontsize=8, color="grey", style="italic")
                continue
            _draw_runs(ax, values, row, styles[group], point_size=18)
            if live is not None:
                mine = live[(live[panel] == name) & (live[by] == group)]
                ax.scatter(scale * mine[value].astype(float), [row] * len(mine), color=styles[group][0], marker="*",
                           s=150, edgecolors="black", linewidths=0.8, zorder=4)
        ax.set_title(str(name), fontsize=10)
        ax.set_xlabel(xlabel or (f"{value} (%)" if percent else value))
        ax.grid(axis="x", alpha=0.3)
        ax.axvline(0, color="black", linewidth=0.6)
    axes[0][0].set_yticks([rows_of[g] for g in groups], [str(g) for g in groups])
    axes[0][0].set_ylim(-0.6, len(groups) - 0.4)
    axes[0][0].margins(x=0.12)
    if live is not None:
        axes[0][-1].scatter([], [], color="white", marker="*", s=150, edgecolors="black", label="your run")
        axes[0][-1].legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_continual_sweep(rows, setting: str, ewc_lambda: float, buffer_size: int, live=None,
                         tasks: Sequence[str] = ("the first task", "the second task")):
    """The stability-plasticity trade-off of EWC and replay from a continual sweep (``ftlab.continual.load_sweep``):
    forgetting of the first task (solid) and accuracy on the second task right after training it (``R[1, 1]``,
    dashed) against EWC's lambda (left) and the replay buffer size (right), in one ``setting``. Mean over seeds as a
    line, range as a band; naive fine-tuning's forgetting as a grey band across (mean dotted); the chosen
    ``ewc_lambda`` and ``buffer_size`` as vertical lines. ``live``: rows of your own run, drawn as stars. The y axis
    spans the whole 0-100% range."""
    import numpy as np

    here = rows[rows.setting == setting]
    for strategy in ("ewc", "replay"):
        if not (here.strategy == strategy).any():
            raise ValueError(f"the sweep has no {setting!r} runs of {strategy}")
    naive = 100 * here.loc[here.strategy == "naive", "forgetting_first"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.9), sharey=True)
    panels = (("ewc", "ewc_lambda", ewc_lambda, "EWC's lambda"), ("replay", "buffer_size", buffer_size,
                                                                   "replay buffer size (images)"))
    for ax, (strategy, knob, chosen, label) in zip(axes, panels):
        mine = here[here.strategy == strategy]
        if not naive.empty:
            ax.axhspan(naive.min(), naive.max(), color="grey", alpha=0.2, linewidth=0)
            ax.axhline(naive.mean(), color="grey", linestyle=":", label=f"naive: forgetting of {tasks[0]}")
        for column, style, colour, name in (("forgetting_first", "-", "C3", f"forgetting of {tasks[0]}"),
                                            ("R_1_1", "--", "C0", f"accuracy on {tasks[1]} after learning it")):
            stats = mine.groupby(knob)[column].agg(["mean", "min", "max", "count"])
            xs = np.asarray(stats.index, dtype=float)
            ax.fill_between(xs, 100 * stats["min"], 100 * stats["max"], color=colour, alpha=0.15, linewidth=0)
            ax.plot(xs, 100 * stats["mean"], style, color=colour, marker="o", markersize=4,
                    label=f"{name} ({seed_count(stats['count'])})")
            if live is not None:
                points = live[(live.setting == setting) & (live.strategy == strategy)]
                ax.scatter(points[knob].astype(float), 100 * points[column], color=colour, marker="*", s=160,
                           edgecolors="black", linewidths=0.8, zorder=4)
        ax.axvline(chosen, color="black", linewidth=1)
        ax.set_xscale("log")
        ticks = sorted(set(mine[knob]))
        ax.set_xticks(ticks, [f"{t:.0e}" if knob == "ewc_lambda" else f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel(f"{label} (log scale); line: {chosen:.0e}" if knob == "ewc_lambda" else
                      f"{label} (log scale); line: {chosen:g}")
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("%")
    axes[0].set_title(f"EWC, {setting}-incremental", fontsize=10)
    axes[1].set_title(f"replay, {setting}-incremental", fontsize=10)
    if live is not None:
        axes[1].scatter([], [], color="white", marker="*", s=160, edgecolors="black", label="your run")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_task_shares(sizes: dict, T: float = 3.0, num_batches: int = 100):
    """How a temperature sampler shares the batches among tasks of ``sizes`` (``{task: training examples}``): left,
    each task's probability ``p_i`` (``ftlab.multitask.task_probabilities``) against the temperature (log scale,
    1 = proportional, large = round-robin), the chosen ``T`` as a vertical line; right, each task's expected number
    of batches among ``num_batches`` for proportional, temperature ``T`` and round-robin sampling."""
    import numpy as np

    from ftlab.multitask import task_probabilities
    from ftlab.validate import check_number, check_positive_int

    check_number("T", T, minimum=0, strict_minimum=True)
    check_positive_int("num_batches", num_batches)
    temperatures = np.geomspace(1.0, 100.0, 60)
    curves = [task_probabilities(sizes, "temperature", float(t)) for t in temperatures]
    samplers = {"proportional": task_probabilities(sizes, "proportional"),
                f"temperature T={T:g}": task_probabilities(sizes, "temperature", T),
                "round-robin": task_probabilities(sizes, "round_robin")}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    for k, task in enumerate(sizes):
        left.plot(temperatures, [curve[task] for curve in curves], color=f"C{k}", label=f"{task} ({sizes[task]:,})")
        heights = [num_batches * p[task] for p in samplers.values()]
        xs = np.arange(len(samplers)) + (k - (len(sizes) - 1) / 2) * 0.8 / len(sizes)
        bars = right.bar(xs, heights, width=0.8 / len(sizes), color=f"C{k}", label=task)
        right.bar_label(bars, [f"{h:.0f}" for h in heights], fontsize=8)
    left.axvline(T, color="black", linewidth=1)
    left.set_xscale("log")
    left.set_ylim(0, 1)
    left.set_xlabel(f"temperature T (log scale); line: T={T:g}")
    left.set_ylabel("share of the batches p_i")
    left.legend(fontsize=8, title="task (training examples)", title_fontsize=8)
    left.grid(alpha=0.3)
    right.set_xticks(range(len(samplers)), list(samplers), fontsize=9)
    right.set_ylabel(f"expected batches of {num_batches}")
    right.set_ylim(0, num_batches * 1.08)
    right.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


# ---- nbA

def plot_step_memory(rows: Sequence[dict], unit: str = "MB", title: str | None = None):
    """``plot_memory``'s stacked bars (one per row: weights, gradients, optimizer state, activations) with each
    bar's total written above it; ``title`` replaces the default title."""
    scale = {"KB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
    fig = plot_memory(rows, unit=unit)
    ax = fig.axes[0]
    for i, row in enumerate(rows):
        total = sum(row.get(part, 0) for part in MEMORY_PARTS) / scale
        ax.annotate(f"{total:,.0f} {unit}", (i, total), ha="center", va="bottom", textcoords="offset points",
                    xytext=(0, 2), fontsize=8)
    ax.margins(y=0.1)
    if title is not None:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_spread_live(df, live=None, values: Sequence[str] = ("test accuracy",), by: str = "method",
                     percent: bool = True):
    """One ``plot_spread`` panel per column of ``values``, side by side: the runs of ``df`` (e.g. stored reference
    results, one row per group and seed) as points, mean and range per group; the rows of ``live`` (your own run,
    same columns) as black-edged stars on top, so you see where your run falls in the stored spread."""
    scale = 100 if percent else 1
    groups = list(dict.fromkeys(df[by]))
    fig, axes = plt.subplots(1, len(values), figsize=(5.4 * len(values), 1.2 + 0.38 * len(groups)), squeeze=False)
    styles = method_styles(groups)
    for ax, value in zip(axes[0], values):
        plot_spread(df, value=value, by=by, ax=ax, percent=percent)
        ax.set_title(value, fontsize=10)
        if live is None:
            continue
        names = {str(name): name for name in groups}
        for row, label in enumerate(ax.get_yticklabels()):  # plot_spread's order: best mean on top
            name = names[label.get_text()]
            mine = scale * live.loc[live[by] == name, value].astype(float)
            ax.scatter(mine, [row] * len(mine), marker="*", s=150, color=styles[name][0], edgecolors="black",
                       linewidths=0.8, zorder=4)
    if live is not None:
        axes[0][-1].scatter([], [], marker="*", s=150, color="white", edgecolors="black", label="your run")
        axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    plt.close(fig)
    return fig


# ---- nbF

def plot_lr_finds(results: dict[str, dict]):
    """Several ``ftlab.lr_find`` results side by side, one panel each (``plot_lr_find``), titled by their keys,
    on one shared learning-rate axis so that the suggestions can be compared by eye."""
    if not results:
        raise ValueError("plot_lr_finds needs at least one lr_find result, e.g. {'full': result}")
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.6), sharex=True, squeeze=False)
    for ax, (title, result) in zip(axes[0], results.items()):
        plot_lr_find(result, ax=ax)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_lr_grid(rows, value: str = "value", by: str = "method", marks: dict[str, float] | None = None,
                 percent: bool = True):
    """A learning-rate grid: ``value`` against ``lr`` (log axis), one colour per ``by`` group; every run (seed) a
    small point, the mean over seeds a line, the range a band. ``marks``: ``{group: rate}`` drawn as a dashed
    vertical line in the group's colour (e.g. ``lr_find``'s suggestion for each method)."""
    import numpy as np

    scale = 100 if percent else 1
    names = list(dict.fromkeys(rows[by]))
    styles = method_styles(names)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in names:
        group = rows[rows[by] == name]
        stats = group.groupby("lr")[value].agg(["mean", "min", "max", "count"])
        colour, marker = styles[name]
        xs = np.asarray(stats.index, dtype=float)
        ax.fill_between(xs, scale * stats["min"], scale * stats["max"], color=colour, alpha=0.15, linewidth=0)
        ax.plot(xs, scale * stats["mean"], color=colour, marker=marker, label=f"{name} ({seed_count(stats['count'])})")
        ax.scatter(group["lr"], scale * group[value], color=colour, marker=marker, s=14, alpha=0.5, linewidths=0)
        if marks and name in marks:
            ax.axvline(marks[name], color=colour, linestyle="--", linewidth=1,
                       label=f"{name}: lr_find suggests {marks[name]:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel(f"{value} (%)" if percent else value)
    ax.set_title("every seed a point, mean a line, range a band", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_stored_curves(rows, method: str, lr: float):
    """Training and validation loss of the stored runs of ``method`` at rate ``lr`` (``ftlab.overfitting``'s rows,
    one label count): each seed a thin line, the mean a thick one. The y axis is the same for every rate of the
    method, so that rates can be compared by flipping between them."""
    from ftlab.overfitting import curve_values

    runs = rows[rows["method"] == method]
    if runs.empty:
        raise ValueError(f"no runs of {method!r}; the rows have {', '.join(dict.fromkeys(rows['method']))}")
    chosen = runs[(runs["lr"] - lr).abs() <= 1e-9 * lr]
    if chosen.empty:
        raise ValueError(f"no runs of {method!r} at lr {lr:g}; stored rates: "
                         f"{', '.join(f'{v:g}' for v in sorted(set(runs['lr'])))}")
    top = max(max(curve_values(c)) for column in ("train_curve", "validation_curve") for c in runs[column])
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for column, colour, label in (("train_curve", "C0", "training loss"), ("validation_curve", "C1",
                                                                             "validation loss")):
        curves = [curve_values(c) for c in chosen[column]]
        steps = curve_values(chosen["eval_steps"].iloc[0])
        for curve in curves:
            ax.plot(steps, curve, color=colour, alpha=0.3, linewidth=1)
        ax.plot(steps, [sum(values) / len(values) for values in zip(*curves)], color=colour, linewidth=2.2,
                label=f"{label} (mean of {len(curves)} seeds)")
    accuracy = 100 * chosen["validation"].mean()
    ax.set_ylim(0, 1.05 * top)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{method}, lr {lr:g}: final validation accuracy {accuracy:.1f}% (mean)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def memory_bars(ax, rows: Sequence[dict], unit: str = "MB", parts: Sequence[str] = MEMORY_PARTS):
    """Stacked bars of ``parts`` (``MEMORY_PARTS``) for ``rows`` (each with a ``name``) on ``ax``, every part in the
    same colour in every plot (its place in ``MEMORY_PARTS``), so that panels and figures can be compared."""
    scale = {"KB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
    names = [row.get("name", str(i)) for i, row in enumerate(rows)]
    bottom = [0.0] * len(rows)
    for part in parts:
        values = [row.get(part, 0) / scale for row in rows]
        ax.bar(names, values, bottom=bottom, color=f"C{MEMORY_PARTS.index(part)}", label=part.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel(f"memory ({unit})")


def _parts_present(rows) -> list[str]:
    return [part for part in MEMORY_PARTS if any(row.get(part, 0) for row in rows)]


def plot_memory_panels(tables: dict[str, Sequence[dict]], unit: str = "MB"):
    """Stacked memory bars for several models side by side, one panel per key of ``tables`` (each a list of
    ``memory_report`` rows with a ``name``), one legend for all, each part in the same colour everywhere."""
    if not tables:
        raise ValueError("plot_memory_panels needs at least one table, e.g. {'MiniLM': rows}")
    parts = _parts_present([row for rows in tables.values() for row in rows])
    widths = [len(rows) for rows in tables.values()]
    fig, axes = plt.subplots(1, len(tables), figsize=(1.1 * sum(widths) + 3, 4.4), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, (title, rows) in zip(axes[0], tables.items()):
        memory_bars(ax, rows, unit, parts)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=60, labelsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles[::-1], labels[::-1], fontsize=8, loc="upper right")
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    plt.close(fig)
    return fig


def plot_memory_against(baseline: dict, row: dict, unit: str = "MB", title: str | None = None):
    """Two stacked bars of ``memory_report`` / ``estimate_memory`` parts: a ``baseline`` step and another (``row``),
    each labelled with its ``name`` and its total, and the ratio of the totals in the title."""
    scale = {"KB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
    rows = [{**baseline, "name": "baseline: " + baseline.get("name", "")},
            {**row, "name": "yours: " + row.get("name", "")}]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    memory_bars(ax, rows, unit, _parts_present(rows))
    for x, r in enumerate(rows):
        ax.annotate(f"{r['total'] / scale:,.1f} {unit}", (x, r["total"] / scale), ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, 1.12 * max(r["total"] for r in rows) / scale)
    ratio = row["total"] / baseline["total"]
    ax.set_title(f"{title + ': ' if title else ''}{ratio:.2f} of the baseline", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    plt.close(fig)
    return fig


# ---- nbD

def plot_dpo_beta(beta: float = 0.1, compare: Sequence[float] = (0.02, 0.1, 0.5), span: float = 50.0):
    """DPO's ``beta`` at work, for one pair against its log-ratio margin m (nats; positive: the policy has moved
    towards the chosen response more than towards the rejected one, relative to the reference). Left: the loss
    -log sigmoid(beta m). Right: the weight sigmoid(-beta m) of the pair's gradient (the gradient is beta times
    it), with a dashed line where it falls to 0.1 (m = ln 9 / beta). ``beta`` is drawn bold, the betas of
    ``compare`` thin, grey and dashed. From ``ftlab.align.dpo.dpo_loss_curve``, the loss the training uses."""
    import math

    import numpy as np

    from ftlab.align.dpo import dpo_loss_curve

    margins = np.linspace(-span, span, 201)
    fig, (ax_loss, ax_weight) = plt.subplots(1, 2, figsize=(10, 3.6))
    others = [b for b in compare if b != beta]
    dashes = dict(zip(others, [":", "--", "-.", (0, (5, 1, 1, 1))] * len(others)))
    for b in others + [beta]:
        loss, slope = dpo_loss_curve(margins, b)
        style = dict(color="C0", linewidth=2.2) if b == beta else dict(color="grey", linewidth=1.2,
                                                                          linestyle=dashes[b])
        ax_loss.plot(margins, loss.numpy(), label=f"beta = {b:g}", **style)
        ax_weight.plot(margins, (slope / b).numpy(), label=f"beta = {b:g}", **style)
    cut = math.log(9) / beta
    where = f"m = {cut:.0f} nats" if cut <= span else f"m = {cut:.0f} nats, off the chart"
    if cut <= span:
        ax_weight.axvline(cut, color="C0", linestyle="--", linewidth=1)
    ax_loss.set_title(f"loss of one pair, beta = {beta:g}", fontsize=10)
    ax_weight.set_title(f"gradient weight: below 0.1 beyond {where}", fontsize=10)
    for ax in (ax_loss, ax_weight):
        ax.axvline(0, color="black", linewidth=0.6)
        ax.set_xlabel("log-ratio margin m (nats)")
        ax.grid(alpha=0.3)
    ax_loss.set_ylabel("-log sigmoid(beta m)")
    ax_weight.set_ylabel("sigmoid(-beta m)")
    ax_weight.set_ylim(0, 1.02)
    ax_loss.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_results_spread(rows, metrics: Sequence[str], by: str = "setting", live: dict | None = None):
    """Reference results in the long format of ``ftlab.align.results`` (columns ``setting, seed, iteration, metric,
    value``), one panel per metric at its last iteration, the groups (``by``) in the same order in every panel:
    every seed a small point, the mean a large marker, the range from the lowest to the highest seed a bar, as in
    ``plot_spread``. Overlapping bars mean the seeds cannot tell the groups apart. ``live``: ``{group: {metric:
    value}}`` of your own run, drawn as black-edged stars, so you see where it falls in the stored spread."""
    groups = list(dict.fromkeys(rows[by]))
    styles = method_styles(groups)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 1.4 + 0.5 * len(groups)), sharey=True,
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        mine = rows[rows.metric == metric]
        if mine.empty:
            raise ValueError(f"no rows of metric {metric!r}; the table has {', '.join(dict.fromkeys(rows.metric))}")
        last = mine[mine.iteration == mine.groupby(by).iteration.transform("max")]
        for row, group in enumerate(groups):
            values = last.loc[last[by] == group, "value"].astype(float)
            mine_live = live.get(group, {}).get(metric) if live else None
            _draw_runs(ax, values, row, styles[group], label_after=mine_live)
            if mine_live is not None:
                ax.scatter([mine_live], [row], marker="*", s=170, color="white", edgecolors="black",
                           linewidths=0.9, zorder=4)
        ax.set_xlabel(metric)
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.15, y=0.3)
    axes[0][0].set_yticks(range(len(groups)), groups)
    if live:
        axes[0][-1].scatter([], [], marker="*", s=170, color="white", edgecolors="black", label="your run")
        axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_ppo_kl(rows, live: dict | None = None):
    """PPO's reference results (``ftlab.align.rlhf.ppo_kl_sweep``'s long table) in two panels, one colour per
    setting: every seed a thin line through its evaluations, the mean over seeds a thick line with markers.

    Left: held-out reward against KL to the SFT model (labels: iteration; iteration 0 is the SFT model), KL on
    a symmetric log axis (linear below 1 nat), since one setting may drift tens of nats and another a few.
    Right: the share of held-out instructions answered right (greedy) against the iteration, a measure the
    reward model does not see. ``live``: ``{setting: ppo_train history}`` of your own runs (with
    ``"eval_metric"`` holding their right answers), drawn as black-edged stars."""
    fig, (ax_kl, ax_right) = plt.subplots(1, 2, figsize=(12, 4.2))
    curves = rows.pivot_table(index=["setting", "seed", "iteration"], columns="metric", values="value").reset_index()
    for k, setting in enumerate(dict.fromkeys(rows.setting)):
        colour = f"C{k}"
        mine = curves[curves.setting == setting]
        for _, run in mine.groupby("seed"):
            ax_kl.plot(run["kl"], run["reward"], color=colour, linewidth=0.8, alpha=0.35)
            ax_right.plot(run["iteration"], run["right answers"], color=colour, linewidth=0.8, alpha=0.35)
        mean = mine.groupby("iteration")[["kl", "reward", "right answers"]].mean()
        label = f"{setting}: mean of {mine.seed.nunique()} seeds"
        ax_kl.plot(mean["kl"], mean["reward"], "o-", color=colour, linewidth=2.2, label=label)
        ax_right.plot(mean.index, mean["right answers"], "o-", color=colour, linewidth=2.2, label=label)
        for iteration, point in mean.iterrows():
            ax_kl.annotate(str(int(iteration)), (point["kl"], point["reward"]), textcoords="offset points",
                           xytext=(4, -10), fontsize=7, color=colour)
        if live and setting in live:
            history = live[setting]
            ax_kl.scatter(history["eval_kl"], history["eval_reward"], marker="*", s=150, color=colour,
                          edgecolors="black", linewidths=0.8, zorder=4)
            if history.get("eval_metric"):
                ax_right.scatter(history["eval_iteration"], history["eval_metric"], marker="*", s=150, color=colour,
                                 edgecolors="black", linewidths=0.8, zorder=4)
    if live:
        for ax in (ax_kl, ax_right):
            ax.scatter([], [], marker="*", s=150, color="white", edgecolors="black", label="your runs")
    ax_kl.set_xscale("symlog", linthresh=1.0)
    ax_kl.set_xlabel("KL(policy || SFT model), nats per response (symmetric log scale)")
    ax_kl.set_ylabel("mean reward on held-out prompts")
    ax_kl.set_title("reward vs KL (thin: each seed; labels: iteration)", fontsize=10)
    ax_right.set_xlabel("PPO iteration")
    ax_right.set_ylabel("held-out instructions answered right")
    ax_right.set_ylim(0, 1)
    ax_right.set_title("a measure the reward model does not see", fontsize=10)
    for ax in (ax_kl, ax_right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    plt.close(fig)
    return fig


# ---- nbB2

def plot_update_ranks(layer, r: int = 8, decompose_factor: int = 4):
    """The shape of the change LoRA, LoHa and LoKr can make to ``layer`` at rank ``r``: the singular values of
    delta W with every factor drawn at random (``ftlab.methods.layer_delta``), drawn by ``plot_singular_values``.

    The legend gives each method's trainable parameters and the rank measured. LoRA (B A) reaches r;
    LoHa ((W1a W1b) * (W2a W2b)) r * r, since an element-wise product multiplies ranks; LoKr (W1 kron W2,
    W1 a full (f, f) matrix, f = ``decompose_factor``, and W2 of rank r) f * r, since a Kronecker product
    multiplies ranks too. Each is capped by the layer's size (LoKr's W2 is kept whole once r reaches half
    its size, as in peft).
    """
    import torch

    from ftlab.methods import layer_delta

    shapes = {f"LoRA r={r}": ("lora", {"r": r, "init_lora_weights": False}),
              f"LoHa r={r}": ("loha", {"r": r, "init_weights": False}),
              f"LoKr f={decompose_factor} r={r}": ("lokr", {"r": r, "decompose_factor": decompose_factor,
                                                             "init_weights": False})}
    deltas = {}
    for label, (method, options) in shapes.items():
        delta, trainable = layer_delta(layer, method, **options)  # (out, in), float64
        deltas[f"{label}: {trainable:,} trained, rank {torch.linalg.matrix_rank(delta).item()}"] = delta
    fig = plot_singular_values(deltas)
    out_features, in_features = delta.shape
    fig.axes[0].set_title(f"random changes of one {out_features} x {in_features} layer at r = {r}", fontsize=10)
    plt.close(fig)
    return fig


def plot_virtual_token_counts(base_model, num_virtual_tokens: int = 20, encoder_hidden_size: int | None = None,
                              r: int = 8):
    """Trainable parameters of prompt tuning, prefix tuning and prefix tuning with the projection MLP
    (``encoder_hidden_size``, default the model's width) at ``num_virtual_tokens`` = P on ``base_model``, next to
    LoRA of rank ``r`` on its default targets, on a log axis.

    Each count is taken from the wrapped model (``ftlab.apply`` on a copy; ``base_model`` is untouched), never from a
    formula: prompt P d, prefix P 2 L d, with the projection the table P d plus the MLP d h + h + h 2Ld + 2Ld during
    training, of which only the P 2 L d prefixes it produces are kept afterwards.
    """
    import copy

    import ftlab
    from ftlab.measure import count_parameters

    P, h = num_virtual_tokens, encoder_hidden_size
    runs = {"prompt": ("prompt", {"num_virtual_tokens": P}),
            "prefix": ("prefix", {"num_virtual_tokens": P}),
            "prefix + projection\n(while training)": ("prefix", {"num_virtual_tokens": P, "prefix_projection": True,
                                                                  **({"encoder_hidden_size": h} if h else {})}),
            f"LoRA r={r}": ("lora", {"r": r})}
    counts = {label: count_parameters(ftlab.apply(copy.deepcopy(base_model), method, **options))["trainable"]
              for label, (method, options) in runs.items()}
    total = count_parameters(base_model)["total"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = list(counts)[::-1]
    bars = ax.barh(labels, [counts[label] for label in labels], color=["C2", "C1", "C1", "C0"][::-1])
    for bar, label in zip(bars, labels):
        ax.text(bar.get_width() * 1.1, bar.get_y() + bar.get_height() / 2,
                f"{counts[label]:,} ({100 * counts[label] / total:.2g}% of {total / 1e6:.1f}M)", va="center",
                fontsize=9)
    ax.set_xscale("log")
    ax.set_xlim(right=max(counts.values()) * 30)
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_title(f"P = {P} virtual tokens, projection width {h or 'd'}", fontsize=10)
    return _finish(fig)


# ---- scenarios


def plot_seed_spread(df, metrics: Sequence[str], by: str = "method", group: str | None = None,
                     title: str | None = None, ncols: int = 3):
    """One panel per metric, ``ncols`` to a row: every run of ``df`` as a dot (one per seed) and the mean of each
    ``by`` value as a bar, side by side within each value of ``group`` (e.g. ``labels_per_class``) when given.
    Metrics in [0, 1]."""
    groups = list(dict.fromkeys(df[group])) if group else [None]
    names = list(dict.fromkeys(df[by]))
    width = 0.8 / len(names)
    ncols = min(ncols, len(metrics))
    nrows = (len(metrics) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(4.0, 1.0 + 0.7 * len(names) * len(groups)) * ncols,
                                                    3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        fig.delaxes(ax)
    for ax, metric in zip(axes.flat, metrics):
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
    handles, labels = axes[0][0].get_legend_handles_labels()  # under the panels: inside, it could hide a seed
    fig.legend(handles, labels, loc="lower center", ncol=min(len(names), 6), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.4 / fig.get_figheight(), 1, 1))
    plt.close(fig)
    return fig


def plot_perplexity_shift(df):
    """``ftlab.scenarios.domain_pretraining_experiment``'s table as arrows from before to after, one per run:
    perplexity on general text (x) against perplexity on domain text (y), both log scale. Down is adaptation, right
    is forgetting."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

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
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1, 2, 5, 10, 20, 50: plain numbers
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())  # labels at every minor tick would overlap
    ax.set_xlabel("perplexity on general text (held out)")
    ax.set_ylabel("perplexity on clinic notes (held out)")
    ax.set_title("continued pretraining: down = adapted, right = forgot", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_boxes(dataset, predicted=None, classes: Sequence[str] | None = None, n: int = 8, ncols: int = 8,
               start: int = 0, only_misses: bool = False):
    """``n`` images of a ``ftlab.tasks.boxes`` split from index ``start``, with their true boxes (green) and, given
    ``predicted`` ``(logits (N, C), boxes (N, 4))`` from ``predict_boxes``, the predicted box (red), class and IoU.
    ``only_misses``: only the images whose prediction has the wrong class or an IoU below 0.5."""
    import torch
    from matplotlib.patches import Rectangle

    from ftlab.tasks.boxes import box_iou
    from ftlab.tasks.images import to_unit

    x, y, boxes = dataset[:]
    indices = torch.arange(len(x))
    if predicted is not None:
        logits, predicted_boxes = predicted
        ious = box_iou(predicted_boxes, boxes)  # (N,)
        if only_misses:
            indices = indices[(logits.argmax(-1) != y) | (ious < 0.5)]
    indices = indices[start:start + n]
    nrows = max(1, (len(indices) + ncols - 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.9 * nrows), squeeze=False)
    size = x.shape[-1]
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, indices.tolist()):
        ax.imshow(to_unit(x[i]).permute(1, 2, 0))
        shown = [(boxes[i], "lime", str(classes[y[i]] if classes else int(y[i])))]
        if predicted is not None:
            k = int(logits[i].argmax())
            shown.append((predicted_boxes[i], "red", str(classes[k] if classes else k)))
        for box, color, _ in shown:
            b = (box * size).tolist()
            ax.add_patch(Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0], b[3] - b[1], fill=False, color=color,
                                   linewidth=1.5))
        title = " / ".join(name for _, _, name in shown)
        ax.set_title(f"#{i}: {title}" + (f"\nIoU {ious[i]:.2f}" if predicted is not None else ""), fontsize=8)
    what = "misses (wrong class or IoU < 0.5)" if only_misses and predicted is not None else "images"
    if len(indices) == 0:
        axes.flat[0].text(0.5, 0.5, f"no {what} from #{start} on", ha="center", va="center", fontsize=9)
    fig.suptitle(f"{what}: green true box and class" + (", red predicted" if predicted is not None else ""),
                 fontsize=9)
    fig.tight_layout()
    plt.close(fig)
    return fig
