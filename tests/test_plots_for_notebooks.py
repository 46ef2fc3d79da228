"""plot_step_memory (notebook 00's widget) and plot_spread_live (notebook 02's reference results with a live run):
the figures hold the numbers they were given, on the scale asked for."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from ftlab.measure import MEMORY_PARTS
from ftlab.viz import plot_spread_live, plot_step_memory


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def row(name, **parts):
    return {"name": name, **{part: 0 for part in MEMORY_PARTS}, **parts}


def test_step_memory_writes_each_total_above_its_bar():
    rows = [row("full", weights_trainable=90e6, gradients=90e6, optimizer_state=180e6, activations=40e6),
            row("lora", weights_frozen=90e6, weights_trainable=1e6, gradients=1e6, optimizer_state=2e6,
                activations=30e6)]
    fig = plot_step_memory(rows, title="batch 16, 32 tokens")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["400 MB", "124 MB"]
    assert [t.xy for t in ax.texts] == [(0, 400.0), (1, 124.0)]
    assert ax.get_ylim()[0] == 0 and 400 < ax.get_ylim()[1] < 480  # room above the tallest bar for its total
    assert ax.get_title() == "batch 16, 32 tokens"
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["full", "lora"]
    assert fig.number not in plt.get_fignums(), "the figure is closed, so a notebook shows it once"


def test_step_memory_writes_totals_in_the_unit_asked_for():
    fig = plot_step_memory([row("full", weights_trainable=4e6)], unit="KB")
    assert fig.axes[0].texts[0].get_text() == "4,000 KB" and fig.axes[0].get_ylabel() == "memory (KB)"


def test_spread_live_draws_one_panel_per_value_with_a_star_per_live_row_at_its_groups_row():
    stored = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2,
                           "test accuracy": [0.9, 0.92, 0.94, 0.5, 0.6, 0.7],
                           "shifted accuracy": [0.3, 0.35, 0.4, 0.8, 0.85, 0.9]})
    live = pd.DataFrame({"method": ["a", "b"], "seed": [5, 5], "test accuracy": [0.91, 0.65],
                         "shifted accuracy": [0.33, 0.88]})
    fig = plot_spread_live(stored, live, values=["test accuracy", "shifted accuracy"])
    assert [ax.get_title() for ax in fig.axes] == ["test accuracy", "shifted accuracy"]
    for ax, value in zip(fig.axes, ["test accuracy", "shifted accuracy"]):
        order = [t.get_text() for t in ax.get_yticklabels()]  # best mean on top, each panel by its own value
        stars = [c for c in ax.collections if c.get_offsets().shape[0] == 1 and c.get_sizes()[0] == 150]
        drawn = {order[int(y)]: x for x, y in (c.get_offsets()[0] for c in stars)}
        assert drawn == pytest.approx({m: 100 * v for m, v in zip(live.method, live[value])})
    assert fig.axes[0].get_yticklabels()[-1].get_text() == "a"  # a leads on the test set
    assert fig.axes[1].get_yticklabels()[-1].get_text() == "b"  # b on the shifted set
    assert fig.axes[1].get_legend().get_texts()[0].get_text() == "your run"


def test_spread_live_without_a_live_run_is_the_stored_spread_alone():
    stored = pd.DataFrame({"method": ["a", "a", "b"], "test accuracy": [0.5, 0.6, 0.7]})
    fig = plot_spread_live(stored)
    assert len(fig.axes) == 1 and fig.axes[0].get_legend() is None


def test_plot_comparison_gives_a_label_the_same_colour_in_both_panels():
    from matplotlib.colors import to_hex

    from ftlab.viz import plot_comparison

    df = pd.DataFrame({"method": ["head only"] * 2 + ["houlsby"] * 2 + ["pfeiffer"] * 2, "seed": [0, 1] * 3,
                       "trainable": [10] * 2 + [20] * 2 + [30] * 2, "test accuracy": [0.9, 0.8, 0.5, 0.6, 0.7, 0.75]})
    spread, params = plot_comparison(df).axes
    ranked = [t.get_text() for t in spread.get_yticklabels()]  # ordered by mean, not by appearance
    assert ranked != list(dict.fromkeys(df.method))
    bars = {ranked[int(line.get_ydata()[0])]: to_hex(line.get_color()) for line in spread.get_lines()}
    legend = {text.get_text().split(" (")[0]: to_hex(handle.get_color()) for text, handle in
              zip(params.get_legend().get_texts(), params.get_legend().legend_handles)}
    assert bars == legend


def test_memory_bars_give_each_part_one_colour_whichever_parts_are_zero():
    from matplotlib.colors import to_hex

    from ftlab.viz import plot_memory

    def colours(rows):
        ax = plot_memory(rows).axes[0]
        return {text.get_text(): to_hex(handle.get_facecolor()) for text, handle in
                zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles)}

    full = colours([row("full", weights_trainable=1, gradients=1, optimizer_state=2, activations=1)])
    lora = colours([row("lora", weights_frozen=1, weights_trainable=1, gradients=1, optimizer_state=2, activations=1)])
    assert set(lora) - set(full) == {"weights frozen"}
    assert all(full[part] == lora[part] for part in full)
