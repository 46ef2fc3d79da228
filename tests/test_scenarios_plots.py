"""The scenario plots (end of ftlab/viz.py) draw what their tables hold."""
import matplotlib
import pandas as pd
import pytest
import torch

matplotlib.use("Agg")

from ftlab.viz import plot_boxes, plot_perplexity_shift, plot_seed_spread


def test_seed_spread_draws_one_dot_per_run_and_a_bar_per_method_and_group():
    df = pd.DataFrame({"method": ["full", "lora"] * 4, "labels_per_class": [10] * 4 + [50] * 4,
                       "accuracy": [0.5, 0.4, 0.6, 0.5, 0.8, 0.7, 0.9, 0.6], "mean iou": [0.3] * 8})
    fig = plot_seed_spread(df, ["accuracy", "mean iou"], group="labels_per_class")
    assert len(fig.axes) == 2
    ax = fig.axes[0]
    assert len(ax.patches) == 4  # 2 methods x 2 label counts
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == [0.45, 0.55, 0.65, 0.85]  # the means of the seeds
    dots = sum(len(line.get_xdata()) for line in ax.lines)
    assert dots == 8
    assert [t.get_text() for t in ax.get_xticklabels()] == ["labels_per_class = 10", "labels_per_class = 50"]
    # the legend sits under the panels, where it cannot hide a seed's dot
    assert ax.get_legend() is None and [t.get_text() for t in fig.legends[0].get_texts()] == ["full", "lora"]


def test_perplexity_shift_draws_one_arrow_per_run_on_log_axes():
    df = pd.DataFrame({"method": ["lora", "lora", "full"], "seed": [0, 1, 0],
                       "domain ppl before": [30.0] * 3, "domain ppl after": [5.0, 5.5, 3.0],
                       "general ppl before": [2.0] * 3, "general ppl after": [2.2, 2.1, 6.0]})
    fig = plot_perplexity_shift(df)
    ax = fig.axes[0]
    arrows = [a for a in ax.texts if hasattr(a, "arrow_patch") and a.arrow_patch is not None]
    assert len(arrows) == 3
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert arrows[2].xy == (6.0, 3.0) and arrows[2].xyann == (2.0, 30.0)  # full: from before to after


def test_boxes_plot_shows_true_and_predicted_boxes():
    x = torch.zeros(3, 3, 64, 64)
    y = torch.tensor([1, 2, 3])
    truth = torch.tensor([[0.1, 0.1, 0.5, 0.5]] * 3)
    dataset = torch.utils.data.TensorDataset(x, y, truth)
    fig = plot_boxes(dataset, n=3, ncols=3)
    assert sum(len(ax.patches) for ax in fig.axes) == 3
    logits = torch.nn.functional.one_hot(torch.tensor([1, 0, 3]), 10).float()
    fig = plot_boxes(dataset, predicted=(logits, truth + 0.1), n=3, ncols=3)
    assert sum(len(ax.patches) for ax in fig.axes) == 6
    iou = 0.3 ** 2 / (2 * 0.4 ** 2 - 0.3 ** 2)  # boxes of side 0.4 shifted by 0.1 in x and y
    assert [ax.get_title() for ax in fig.axes] == [f"#{i}: {t}\nIoU {iou:.2f}" for i, t in
                                                   enumerate(["1 / 1", "2 / 0", "3 / 3"])]
    patch = fig.axes[0].patches[0]
    assert patch.get_width() == pytest.approx(0.4 * 64) and patch.get_xy() == pytest.approx((0.1 * 64 - 0.5,) * 2)


def test_boxes_plot_pages_through_the_split_and_can_show_only_the_misses():
    x, y = torch.zeros(5, 3, 64, 64), torch.tensor([0, 1, 2, 3, 4])
    truth = torch.tensor([[0.1, 0.1, 0.5, 0.5]] * 5)
    predicted_boxes = truth.clone()
    predicted_boxes[3] = torch.tensor([0.6, 0.6, 0.9, 0.9])  # #3: no overlap
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 0, 3, 4]), 10).float()  # #2: wrong class
    dataset = torch.utils.data.TensorDataset(x, y, truth)
    titles = [ax.get_title().split(":")[0] for ax in plot_boxes(dataset, n=2, ncols=2, start=3).axes]
    assert titles == ["#3", "#4"]
    fig = plot_boxes(dataset, predicted=(logits, predicted_boxes), n=4, ncols=4, only_misses=True)
    assert [ax.get_title().split(":")[0] for ax in fig.axes if ax.get_title()] == ["#2", "#3"]
    assert "misses" in fig._suptitle.get_text()
    empty = plot_boxes(dataset, predicted=(logits, predicted_boxes), n=4, ncols=4, only_misses=True, start=2)
    assert "no misses" in empty.axes[0].texts[0].get_text()


def test_seed_spread_wraps_its_panels_into_rows():
    df = pd.DataFrame({"method": ["a", "b"], **{f"m{i}": [0.1, 0.2] for i in range(4)}})
    fig = plot_seed_spread(df, [f"m{i}" for i in range(4)], ncols=3)
    assert [ax.get_ylabel() for ax in fig.axes] == ["m0", "m1", "m2", "m3"]  # the two spare panels are removed
    rows = sorted({round(ax.get_position().y0, 3) for ax in fig.axes})
    assert len(rows) == 2


def test_perplexity_shift_labels_its_log_axis_with_plain_numbers():
    df = pd.DataFrame({"method": ["lora"], "seed": [0], "domain ppl before": [3e5], "domain ppl after": [2.2],
                       "general ppl before": [2.0], "general ppl after": [60.0]})
    fig = plot_perplexity_shift(df)
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert "10" in labels and "2" in labels and not any("times" in t or "^" in t for t in labels), labels
