"""plot_spread_panels (runs over seeds, one panel per task or setting) and plot_continual_sweep (EWC's lambda and the
replay buffer against forgetting) draw the data they were given, and say where a result is missing."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from ftlab.viz import plot_continual_sweep, plot_spread_panels


def _runs():
    rows = [{"setting": setting, "strategy": strategy, "seed": seed, "forgetting": value + 0.1 * seed}
            for setting in ("task", "class") for strategy, value in (("naive", 0.3), ("replay", 0.0), ("adapters", 0.0))
            for seed in range(3) if not (setting == "class" and strategy == "adapters")]
    return pd.DataFrame(rows)


def test_spread_panels_put_each_group_on_the_same_row_in_every_panel_and_name_the_missing_ones():
    runs = _runs()
    live = runs[runs.seed == 0]
    fig = plot_spread_panels(runs, "forgetting", "strategy", "setting", absent={"adapters": "needs the task id"},
                             live=live)
    task, klass = fig.axes
    assert [t.get_text() for t in task.get_yticklabels()] == ["naive", "replay", "adapters"]
    assert [tick for tick in task.get_yticks()] == [2, 1, 0]  # first group on top, shared by both panels
    assert task.get_title() == "task" and klass.get_title() == "class"
    means = [c for c in task.collections if c.get_sizes()[0] == 70]  # the mean markers
    assert sorted(tuple(np.round(m.get_offsets()[0], 6)) for m in means) == [(10.0, 0.0), (10.0, 1.0), (40.0, 2.0)]
    assert [t.get_text() for t in klass.texts if "none" in t.get_text()] == ["none: needs the task id"]
    assert not [t for t in task.texts if "none" in t.get_text()]
    stars = [c for ax in fig.axes for c in ax.collections if c.get_sizes()[0] == 150 and len(c.get_offsets())]
    assert len(stars) == len(live)


def test_spread_panels_refuse_an_empty_table():
    with pytest.raises(ValueError, match="at least one row"):
        plot_spread_panels(_runs().iloc[:0], "forgetting", "strategy", "setting")


def _sweep():
    rows = []
    for seed in range(2):
        rows.append({"setting": "task", "strategy": "naive", "ewc_lambda": None, "buffer_size": None, "seed": seed,
                     "forgetting_first": 0.4 + 0.1 * seed, "R_1_1": 0.95})
        for lam, f in ((1e4, 0.3), (1e6, 0.1)):
            rows.append({"setting": "task", "strategy": "ewc", "ewc_lambda": lam, "buffer_size": None, "seed": seed,
                         "forgetting_first": f + 0.02 * seed, "R_1_1": 0.9 - f})
        for size, f in ((10, 0.2), (100, 0.05)):
            rows.append({"setting": "task", "strategy": "replay", "ewc_lambda": None, "buffer_size": size,
                         "seed": seed, "forgetting_first": f, "R_1_1": 0.9})
    return pd.DataFrame(rows)


def test_continual_sweep_draws_the_mean_over_seeds_against_each_knob_on_a_full_percent_axis():
    rows = _sweep()
    fig = plot_continual_sweep(rows, "task", 1e6, 10, live=rows[rows.seed == 0])
    ewc, replay = fig.axes
    forgetting = [line for line in ewc.lines if line.get_linestyle() == "-" and len(line.get_xdata()) == 2
                  and line.get_marker() == "o"][0]
    np.testing.assert_allclose(forgetting.get_xdata(), [1e4, 1e6])
    np.testing.assert_allclose(forgetting.get_ydata(), [31, 11])  # 100 * mean over the two seeds
    naive = [line for line in ewc.lines if line.get_linestyle() == ":"][0]
    assert naive.get_ydata()[0] == pytest.approx(45)
    assert ewc.get_ylim() == (-5, 105) and replay.get_ylim() == (-5, 105)
    chosen = [line.get_xdata()[0] for ax in (ewc, replay) for line in ax.lines if line.get_color() == "black"]
    assert chosen == [1e6, 10]
    assert ewc.get_xscale() == "log" and "task-incremental" in ewc.get_title()


def test_continual_sweep_says_which_runs_are_missing_before_it_opens_a_figure():
    import matplotlib.pyplot as plt

    rows = _sweep()
    open_before = plt.get_fignums()
    with pytest.raises(ValueError, match="no 'class' runs of ewc"):
        plot_continual_sweep(rows, "class", 1e6, 10)
    assert plt.get_fignums() == open_before


def test_task_shares_draw_the_sampler_probabilities_and_the_expected_batches():
    from ftlab.multitask import task_probabilities
    from ftlab.viz import plot_task_shares

    sizes = {"small": 100, "big": 1000}
    fig = plot_task_shares(sizes, T=3.0, num_batches=200)
    left, right = fig.axes
    small, big = left.get_lines()[:2]
    assert small.get_xdata()[0] == 1.0 and np.isclose(small.get_ydata()[0], 100 / 1100)  # T = 1: proportional
    assert np.isclose(small.get_ydata()[-1] + big.get_ydata()[-1], 1.0)
    assert left.get_lines()[2].get_xdata()[0] == 3.0  # the chosen T
    heights = [patch.get_height() for patch in right.patches]  # small's three bars, then big's
    expected = [200 * p["small"] for p in (task_probabilities(sizes, "proportional"),
                                           task_probabilities(sizes, "temperature", 3.0),
                                           task_probabilities(sizes, "round_robin"))]
    np.testing.assert_allclose(heights[:3], expected)
    assert [t.get_text() for t in right.get_xticklabels()] == ["proportional", "temperature T=3", "round-robin"]


@pytest.mark.parametrize("T, num_batches, message", [(0.0, 10, "T must be greater than 0"),
                                                     (2.0, 0, "num_batches")])
def test_task_shares_refuse_a_temperature_or_batch_count_that_is_not_positive(T, num_batches, message):
    from ftlab.viz import plot_task_shares

    with pytest.raises(ValueError, match=message):
        plot_task_shares({"a": 1, "b": 2}, T=T, num_batches=num_batches)
