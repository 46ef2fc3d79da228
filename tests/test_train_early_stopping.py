"""Validation on a schedule, the best step, early stopping with the best weights restored, and its plot."""
import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from ftlab.train import fit
from ftlab.viz import plot_train_val


def blobs(n, seed, flip=0):
    """Two overlapping Gaussian blobs in 2-D; the first ``flip`` labels are flipped (noise to memorise)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) + (y[:, None] * 2 - 1) * 1.0
    y = y.clone()
    y[:flip] = 1 - y[:flip]
    return x, y


def overfitting_run():
    """8 training points (one label flipped) in two batches of 4, a clean held-out set, an MLP with BatchNorm
    that first learns the blobs (validation loss falls), then memorises the flipped point (it rises)."""
    x, y = blobs(8, seed=1, flip=1)
    train = [(x[:4], y[:4]), (x[4:], y[4:])]
    validation = [blobs(256, seed=2)]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 2))
    return model, train, validation


def trained_for(num_steps):
    model, train, _ = overfitting_run()
    fit(model, train, num_steps=num_steps, lr=1e-3, progress=False, device="cpu")
    return model.state_dict()


def assert_states_equal(a, b):
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_early_stopping_restores_the_best_steps_weights_and_batchnorm_statistics_exactly():
    model, train, validation = overfitting_run()
    history = fit(model, train, num_steps=200, lr=1e-3, eval_data=validation, eval_every=5, patience=3,
                  progress=False, device="cpu")
    best, stopped = history["best_step"], history["stopped_step"]
    losses = dict(zip(history["eval_step"], (e["loss"] for e in history["eval"])))
    assert 5 <= best < stopped < 200, (best, stopped)
    assert losses[best] == min(losses.values())
    assert history["eval_step"][-3:] == [stopped - 10, stopped - 5, stopped]  # three evaluations without gain
    assert history["step"][-1] == stopped
    # the run overfits: the validation loss at the stop is above the best
    assert losses[stopped] > losses[best]
    assert_states_equal(model.state_dict(), trained_for(best))
    # and the test could fail: the weights at the stop are different (running statistics too)
    at_stop = trained_for(stopped)
    assert not torch.equal(at_stop["1.running_mean"], model.state_dict()["1.running_mean"])


def test_without_patience_fit_reports_the_best_step_and_keeps_the_last_weights():
    model, train, validation = overfitting_run()
    history = fit(model, train, num_steps=100, lr=1e-3, eval_data=validation, eval_every=5, progress=False,
                  device="cpu")
    assert history["stopped_step"] is None and history["step"][-1] == 100
    assert history["eval_step"] == list(range(5, 101, 5))
    assert 5 <= history["best_step"] < 100
    assert_states_equal(model.state_dict(), trained_for(100))


def test_monitoring_accuracy_keeps_the_step_with_the_highest_accuracy():
    model, train, validation = overfitting_run()
    history = fit(model, train, num_steps=60, lr=1e-3, eval_data=validation, eval_every=5, monitor="accuracy",
                  progress=False, device="cpu")
    accuracies = [e["accuracy"] for e in history["eval"]]
    first_best = history["eval_step"][accuracies.index(max(accuracies))]
    assert history["best_step"] == first_best  # ties do not move the best step: an improvement must be strict


def test_mode_overrides_the_direction():
    model, train, validation = overfitting_run()
    history = fit(model, train, num_steps=60, lr=1e-3, eval_data=validation, eval_every=5, monitor="loss",
                  mode="max", progress=False, device="cpu")
    losses = [e["loss"] for e in history["eval"]]
    assert history["best_step"] == history["eval_step"][losses.index(max(losses))]


def test_history_records_the_rate_and_the_gradient_norm_of_every_step():
    model, train, _ = overfitting_run()
    history = fit(model, train, num_steps=10, lr=1e-2, warmup_steps=4, max_grad_norm=0.5, progress=False,
                  device="cpu")
    assert history["lr"][:4] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])
    assert history["lr"][-1] < history["lr"][4]  # cosine decay after the warm-up
    assert len(history["grad_norm"]) == 10 and all(g > 0 for g in history["grad_norm"])
    assert history["best_step"] is None and history["stopped_step"] is None


def test_clipping_bounds_the_gradient_norm_applied():
    model, train, _ = overfitting_run()
    seen = []

    def spy(step, model, optimizer):  # the clipped gradients of the previous step are still there
        if step > 0:
            seen.append(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item())

    history = fit(model, train, num_steps=6, lr=1e-2, max_grad_norm=0.01, on_step=spy, progress=False, device="cpu")
    assert all(norm > 0.01 for norm in history["grad_norm"])  # recorded before clipping
    assert seen == pytest.approx([0.01] * 5, rel=1e-4)


def test_plot_train_val_draws_both_curves_and_marks_the_best_and_stopping_steps():
    model, train, validation = overfitting_run()
    history = fit(model, train, num_steps=200, lr=1e-3, eval_data=validation, eval_every=5, patience=3,
                  progress=False, device="cpu")
    fig = plot_train_val(history)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.lines]
    assert "validation loss" in labels
    assert f"best step {history['best_step']}" in labels and f"stopped at {history['stopped_step']}" in labels
    validation_line = ax.lines[labels.index("validation loss")]
    assert list(validation_line.get_xdata()) == history["eval_step"]


def test_plot_train_val_asks_for_validation_results():
    model, train, _ = overfitting_run()
    history = fit(model, train, num_steps=3, progress=False, device="cpu")
    with pytest.raises(ValueError, match="no validation results: run fit with eval_data="):
        plot_train_val(history)


def test_the_final_progress_line_counts_the_step_at_which_early_stopping_stopped(capsys):
    model, train, validation = overfitting_run()
    history = fit(model, train, num_steps=200, lr=1e-3, eval_data=validation, eval_every=5, patience=3, device="cpu")
    final = capsys.readouterr().err.strip().splitlines()[-1]
    assert final.startswith(f"fit: {history['stopped_step']}/200 steps in ") and final.endswith("(stopped)"), final
