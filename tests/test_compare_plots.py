"""Plots of results over seeds: every seed a point, the mean with its range, labels that cannot overlap (legends and
one row per method), a distinct colour for each of the 12 methods, and reference sweeps with a live run on top."""
import matplotlib.colors
import numpy as np
import pandas as pd
import pytest

from ftlab.methods import available
from ftlab.viz import method_styles, plot_comparison, plot_params_vs_accuracy, plot_rank_sweep, plot_spread, plot_sweep


def _runs(methods, seeds=(0, 1, 2)) -> pd.DataFrame:
    rows = [{"method": m, "seed": s, "trainable": 10 ** (2 + i % 5), "test accuracy": 0.5 + 0.03 * i + 0.01 * s}
            for i, m in enumerate(methods) for s in seeds]
    df = pd.DataFrame(rows)
    df.attrs.update(task="sentiment", metric="test accuracy")
    return df


def test_method_styles_give_each_of_the_twelve_methods_its_own_colour_and_the_same_style_in_every_plot():
    styles = method_styles(available())
    colours = {matplotlib.colors.to_hex(colour) for colour, _ in styles.values()}
    assert len(colours) == 12 and len({marker for _, marker in styles.values()}) == 12
    assert method_styles(["ia3", "lora"])["lora"] == styles["lora"]  # by name, not by position
    assert len(set(method_styles(["a", "b", "lora"]).values())) == 3


def test_plot_spread_ranks_methods_best_on_top_with_every_seed_and_its_mean():
    df = _runs(["full", "lora", "ia3"])
    (ax,) = plot_spread(df).axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["full", "lora", "ia3"]  # bottom to top: ia3 is best
    seeds, means = ax.collections[0::2], ax.collections[1::2]
    assert [len(c.get_offsets()) for c in seeds] == [3, 3, 3]
    np.testing.assert_allclose(means[2].get_offsets()[0], [100 * (0.5 + 0.06 + 0.01), 2])  # ia3: mean of 3 seeds
    assert [t.get_text() for t in ax.texts] == ["n=3"] * 3


def test_plot_params_vs_accuracy_draws_every_seed_and_the_mean_with_its_range_named_in_a_legend():
    df = _runs(["lora", "ia3"], seeds=(0, 1))
    (ax,) = plot_params_vs_accuracy(df).axes
    assert ax.get_xscale() == "log" and not ax.texts  # names in the legend, never on top of each other
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["lora (n=2)", "ia3 (n=2)"]
    points = [c for c in ax.collections if len(c.get_offsets()) == 2]
    np.testing.assert_allclose(points[0].get_offsets(), [[100, 50], [100, 51]])
    lora_mean = ax.lines[0]
    assert list(lora_mean.get_xdata()) == [100] and lora_mean.get_ydata()[0] == pytest.approx(50.5)


def test_plot_comparison_of_twelve_methods_over_three_seeds_has_readable_distinct_labels():
    df = _runs(available())
    fig = plot_comparison(df)
    assert len(fig.axes) == 2  # no memory panel when compare did not measure memory
    ranking, params = fig.axes
    assert sorted(t.get_text() for t in ranking.get_yticklabels()) == sorted(available())
    legend = [t.get_text() for t in params.get_legend().get_texts()]
    assert legend == [f"{m} (n=3)" for m in available()]
    colours = {matplotlib.colors.to_hex(line.get_color()) for line in params.lines}
    assert len(colours) == 12
    measured = df.assign(weights_trainable=1, weights_frozen=2, buffers=0, gradients=1, optimizer_state=2,
                         activations=3)
    assert len(plot_comparison(measured).axes) == 3


def test_plot_rank_sweep_shows_each_rank_once_and_the_spread_over_seeds_with_the_highlight_in_red():
    df = pd.DataFrame({"r": [1, 1, 4, 4, 16, 16], "alpha": [2, 2, 8, 8, 32, 32], "seed": [0, 1] * 3,
                       "trainable": [100, 100, 400, 400, 1600, 1600],
                       "test accuracy": [0.5, 0.6, 0.7, 0.8, 0.9, 0.9]})
    ax_params, ax_acc = plot_rank_sweep(df, highlight=2).axes
    (line,) = ax_params.get_lines()
    assert list(line.get_xdata()) == [1, 4, 16] and list(line.get_ydata()) == [100, 400, 1600]
    assert [t.get_text() for t in ax_acc.texts] == ["r=1, alpha=2", "r=4, alpha=8", "r=16, alpha=32"]
    assert ax_acc.texts[1].get_color() == "C3" and ax_acc.texts[0].get_color() == "C0"
    means = [line.get_ydata()[0] for line in ax_acc.lines if line.get_marker() == "o"]
    assert means == pytest.approx([55, 75, 90])
    assert ax_acc.get_title() == "mean and range over 2 seed(s)"



def test_plot_rank_sweep_stacks_the_labels_of_alphas_that_share_a_rank():
    df = pd.DataFrame({"r": [8, 8, 8], "alpha": [8, 16, 64], "seed": [0, 0, 0], "trainable": [800] * 3,
                       "test accuracy": [0.70, 0.70, 0.71]})
    ax_acc = plot_rank_sweep(df).axes[1]
    offsets = [text.xyann for text in ax_acc.texts]
    assert len(set(offsets)) == 3, "each label at its own offset, none drawn over another"

def test_plot_sweep_draws_a_band_per_method_and_puts_the_live_run_on_top():
    rows = pd.DataFrame([{"method": m, "seed": s, "num_steps": n, "value": 0.5 + 0.001 * n + 0.01 * s + (m == "full")
                          * 0.1} for m in ("lora", "full") for s in range(3) for n in (30, 80, 150)])
    live = pd.DataFrame({"method": ["lora"], "num_steps": [80], "value": [0.7]})
    (ax,) = plot_sweep(rows, live=live).axes
    lora = ax.lines[0]
    assert list(lora.get_xdata()) == [30, 80, 150]
    np.testing.assert_allclose(lora.get_ydata(), [100 * (0.5 + 0.001 * n + 0.01) for n in (30, 80, 150)])
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(100 * 0.53) and band.max() == pytest.approx(100 * (0.65 + 0.02))
    star = [c for c in ax.collections if len(c.get_offsets()) == 1 and c.get_offsets()[0][0] == 80]
    assert star and star[0].get_offsets()[0][1] == pytest.approx(70)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["lora (n=3)", "full (n=3)", "your run"]
    with pytest.raises(ValueError, match="no rows for method \\['qlora'\\]"):
        plot_sweep(rows, methods=["qlora"])


def test_a_sweep_line_resting_on_different_numbers_of_seeds_says_so_in_its_legend():
    import matplotlib.pyplot as plt
    import pandas as pd

    from ftlab.viz import plot_sweep

    rows = pd.DataFrame({"method": ["full"] * 8, "labels_per_class": [1] * 5 + [2] * 3, "seed": [*range(5), *range(3)],
                         "value": [0.5, 0.6, 0.55, 0.52, 0.58, 0.7, 0.72, 0.71]})
    fig = plot_sweep(rows, x="labels_per_class")
    assert fig.axes[0].get_legend_handles_labels()[1] == ["full (n=3-5)"]
    plt.close(fig)


def test_plot_spread_keeps_the_tables_order_top_to_bottom_when_not_ranked():
    import matplotlib.pyplot as plt
    import pandas as pd

    from ftlab.viz import plot_spread

    rows = pd.DataFrame({"setting": ["b", "b", "a", "a", "c", "c"], "value": [0.5, 0.6, 0.9, 0.8, 0.7, 0.7]})
    ranked = [t.get_text() for t in plot_spread(rows, by="setting").axes[0].get_yticklabels()]
    kept = [t.get_text() for t in plot_spread(rows, by="setting", ranked=False).axes[0].get_yticklabels()]
    assert ranked == ["b", "c", "a"]  # bottom to top: the best mean on top
    assert kept == ["c", "a", "b"]  # bottom to top: the table's first group on top
    plt.close("all")


def test_groups_with_nearly_equal_counts_are_drawn_side_by_side_and_the_others_where_they_are():
    from ftlab.viz import dodged_positions

    shown = dodged_positions({"lora": 74_498, "dora": 76_000, "ia3": 17_000, "full": 22_713_986})
    assert shown["ia3"] == 17_000 and shown["full"] == 22_713_986 and shown["lora"] == 74_498
    assert shown["dora"] > 76_000 * 1.1  # moved right, clear of LoRA's marker, still the same decade
    assert shown["dora"] < 76_000 * 1.2


def test_the_axis_says_when_markers_were_moved_apart():
    import matplotlib.pyplot as plt
    import pandas as pd

    from ftlab.viz import plot_params_vs_accuracy

    apart = pd.DataFrame({"method": ["lora", "full"], "trainable": [74_498, 22_713_986], "test accuracy": [0.9, 0.95]})
    close = apart.assign(trainable=[74_498, 76_000])
    assert "side by side" not in plot_params_vs_accuracy(apart).axes[0].get_xlabel()
    assert "side by side" in plot_params_vs_accuracy(close).axes[0].get_xlabel()
    plt.close("all")
