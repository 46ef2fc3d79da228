"""Plot functions return Figures whose axes and lines hold the data they were given."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from torch.utils.data import TensorDataset

from ftlab.viz import (
    plot_accuracy_vs_labels,
    plot_curves,
    plot_images,
    plot_quant_error,
    plot_weight_histogram_with_codes,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_plot_images_draws_n_labelled_images_and_leaves_the_rest_of_the_grid_empty():
    x = torch.linspace(-1, 1, 7 * 3 * 8 * 8).reshape(7, 3, 8, 8)
    dataset = TensorDataset(x, torch.tensor([0, 1, 2, 0, 1, 2, 0]))
    fig = plot_images(dataset, n=7, classes=["a", "b", "c"], ncols=4)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 8  # a 2 x 4 grid
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == 7
    assert [ax.get_title() for ax in drawn] == ["a", "b", "c", "a", "b", "c", "a"]
    shown = drawn[0].images[0].get_array()
    assert shown.shape == (8, 8, 3) and shown.min() >= 0 and shown.max() <= 1  # un-normalised to [0, 1]


def test_plot_images_rejects_more_images_than_the_dataset_has():
    dataset = TensorDataset(torch.zeros(3, 3, 8, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="between 1 and the dataset's 3 images"):
        plot_images(dataset, n=4)


SUMMARY = pd.DataFrame({"test_glyphs": [0.5, 0.8], "test_scratch": [0.2, 0.6],
                        "test_shifted_glyphs": [0.4, 0.6], "test_shifted_scratch": [0.1, 0.4]},
                       index=pd.Index([1, 5], name="labels_per_class"))


def test_plot_accuracy_vs_labels_draws_test_and_shifted_lines_for_both_models_in_percent():
    fig = plot_accuracy_vs_labels(SUMMARY)
    (ax,) = fig.axes
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines == {"glyphs: test": [50, 80], "glyphs: shifted test": [40, 60],
                     "scratch: test": [20, 60], "scratch: shifted test": [10, 40]}
    assert list(ax.get_lines()[0].get_xdata()) == [1, 5]
    assert len(plot_accuracy_vs_labels(SUMMARY, shifted=False).axes[0].get_lines()) == 2


def test_plot_curves_averages_the_seeds_of_each_model_at_one_label_count():
    runs = [
        {"model": "glyphs", "labels_per_class": 5, "curve": [(5, 0.6), (10, 0.8)]},
        {"model": "glyphs", "labels_per_class": 5, "curve": [(5, 0.4), (10, 0.6)]},
        {"model": "scratch", "labels_per_class": 5, "curve": [(5, 0.1), (10, 0.3)]},
        {"model": "scratch", "labels_per_class": 1, "curve": [(5, 0.9), (10, 0.9)]},
    ]
    (ax,) = plot_curves(runs, labels_per_class=5).axes
    glyphs, scratch = ax.get_lines()
    assert list(glyphs.get_xdata()) == [5, 10]
    assert list(glyphs.get_ydata()) == pytest.approx([50, 70])
    assert list(scratch.get_ydata()) == pytest.approx([10, 30])  # the 1-label run is not mixed in
    assert glyphs.get_label().startswith("glyphs (mean of 2 seeds")
    with pytest.raises(ValueError, match="labels_per_class=20"):
        plot_curves(runs, labels_per_class=20)


def test_weight_histogram_draws_one_panel_per_code_table_with_a_line_per_distinct_level():
    values = torch.linspace(-1, 1, 201)
    codes = {"a": torch.tensor([-1.0, 0.0, 0.0, 1.0]), "b": torch.tensor([-0.5, 0.5])}  # "a" repeats 0 (like FP4's +-0)
    fig = plot_weight_histogram_with_codes(values, codes, bins=20)
    ax_a, ax_b = fig.axes
    assert [ax_a.get_title(), ax_b.get_title()] == ["a: 3 distinct levels", "b: 2 distinct levels"]
    assert sorted(line.get_xdata()[0] for line in ax_a.get_lines()) == [-1.0, 0.0, 1.0]
    assert sorted(line.get_xdata()[0] for line in ax_b.get_lines()) == [-0.5, 0.5]
    heights = [patch.get_height() for patch in ax_a.patches]
    assert len(heights) == 20 and sum(h * 0.1 for h in heights) == pytest.approx(1.0)  # a density over [-1, 1]


def test_quant_error_bars_have_one_labelled_bar_per_type_in_order():
    errors = {"nf4": 0.094, "fp4": 0.127, "int4": 0.115}
    (ax,) = plot_quant_error(errors).axes
    assert [patch.get_height() for patch in ax.patches] == pytest.approx([0.094, 0.127, 0.115])
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["nf4", "fp4", "int4"]
    assert [text.get_text() for text in ax.texts] == ["0.0940", "0.1270", "0.1150"]


def test_plot_singular_values_draws_each_spectrum_relative_to_its_largest_value():
    import numpy as np

    from ftlab.viz import plot_singular_values

    rank_two = torch.diag(torch.tensor([4.0, 2.0, 0.0]))
    (ax,) = plot_singular_values({"rank 2": rank_two, "identity": torch.eye(3)}).axes
    first, second = ax.get_lines()
    assert first.get_label() == "rank 2" and ax.get_yscale() == "log"
    assert list(first.get_xdata()) == [1, 2, 3]
    assert np.allclose(first.get_ydata()[:2], [1.0, 0.5]) and first.get_ydata()[2] < 1e-15  # rank shows as a drop
    assert np.allclose(second.get_ydata(), [1, 1, 1])
    assert len(plot_singular_values({"a": torch.eye(5)}, top=2).axes[0].get_lines()[0].get_xdata()) == 2
    with pytest.raises(ValueError, match="2-D matrix"):
        plot_singular_values({"v": torch.ones(3)})


def test_plot_abs_matrix_shows_absolute_values_and_rejects_vectors():
    from ftlab.viz import plot_abs_matrix

    fig = plot_abs_matrix(torch.tensor([[-1.0, 2.0], [3.0, -4.0]]))
    assert fig.axes[0].images[0].get_array().tolist() == [[1, 2], [3, 4]]
    with pytest.raises(ValueError, match="2-D matrix"):
        plot_abs_matrix(torch.ones(3))


def test_accuracy_matrices_grouped_bars_and_storage_curve_hold_their_data():
    import numpy as np

    from ftlab.viz import plot_accuracy_matrices, plot_grouped_bars, plot_storage_curve

    R = {"naive": np.array([[0.9, 0.1], [0.5, 0.95]]), "replay": np.array([[0.9, 0.1], [0.85, 0.9]])}
    fig = plot_accuracy_matrices(R, ["a", "b"])
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "replay"
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), 100 * R["naive"])
    with pytest.raises(ValueError, match="shape"):
        plot_accuracy_matrices({"x": np.zeros((3, 3))}, ["a", "b"])
    table = pd.DataFrame({"task": ["a", "b", "a"], "training": ["one", "one", "two"], "accuracy": [0.5, 0.25, 0.75]})
    fig = plot_grouped_bars(table, group="task", bar="training", value="accuracy")
    heights = sorted(p.get_height() for p in fig.axes[0].patches)
    assert heights == [25.0, 50.0, 75.0]
    assert fig.axes[0].get_legend_handles_labels()[1] == ["one", "two"]
    curve = pd.DataFrame({"num_tasks": [1, 2], "full_copies": [2e6, 4e6], "base_plus_adapters": [2e6, 2.5e6]})
    lines = plot_storage_curve(curve).axes[0].get_lines()
    assert list(lines[0].get_ydata()) == [2.0, 4.0] and list(lines[1].get_ydata()) == [2.0, 2.5]


def test_plot_round_trip_draws_the_error_histogram_and_the_bits_error_point_of_the_setting_and_the_reference():
    import numpy as np

    from ftlab.methods.nf4 import round_trip
    from ftlab.viz import plot_round_trip

    weight = torch.randn(64, 48, generator=torch.Generator().manual_seed(0))
    setting, reference = round_trip(weight, "int4", 256, False), round_trip(weight)
    fig = plot_round_trip(setting, weight.std().item(), reference=reference)
    ax_hist, ax_plane = fig.axes
    labels = ["int4, block 256, double quant off", "nf4, block 64, double quant on"]
    assert ax_hist.get_title() == f"{labels[0]}: {setting['bits_per_parameter']:.3f} bits per weight"
    curves = {patch.get_label(): patch for patch in ax_hist.patches}
    assert set(curves) == set(labels)
    for label, result in zip(labels, [setting, reference]):
        counts = curves[label].get_data().values
        assert counts.sum() == weight.numel()  # every weight counted (beyond the range: in the outermost bins)
        want, _ = np.histogram(np.clip(result["error"].numpy().ravel() / weight.std().item(), -2.5, 2.5),
                               bins=np.linspace(-2.5, 2.5, 121))
        assert np.array_equal(counts, want)
    points = [tuple(c.get_offsets()[0]) for c in ax_plane.collections]
    assert points == [(setting["bits_per_parameter"], setting["relative_error"]),
                      (reference["bits_per_parameter"], reference["relative_error"])]
    assert ax_plane.get_xlim() == (3.9, 6.6) and ax_plane.get_ylim() == (0, 0.2)  # fixed for the usual settings
    assert len(plot_round_trip(setting, 1.0).axes[0].patches) == 1  # no reference: one histogram
    same = plot_round_trip(reference, 1.0, reference=round_trip(weight))
    assert len(same.axes[0].patches) == 1 and len(same.axes[1].collections) == 1  # the same setting: drawn once
