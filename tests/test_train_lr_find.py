"""lr_find: the exponential ramp, the smoothed curve, the suggestion, the early stop, and a model, optimizer,
random number generators and data loader left bit for bit as they were."""
import copy
import math
import random

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ftlab
from ftlab.train import fit, lr_find
from ftlab.viz import plot_lr_find


def classifier(seed=0):
    """An MLP with BatchNorm (running statistics) and dropout (consumes the random number generator)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 2))


def shuffled_loader(seed=0):
    g = torch.Generator().manual_seed(123)
    y = torch.randint(0, 2, (256,), generator=g)
    x = torch.randn(256, 2, generator=g) * 0.5 + (y[:, None] * 2 - 1) * 1.5
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def everything(model, optimizer, loader):
    """A deep copy of every state lr_find promises to leave as it was."""
    return {
        "state": copy.deepcopy(model.state_dict()),
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "rng": (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()),
        "loader": loader.generator.get_state(),
    }


def assert_same(a, b):
    assert list(a["state"]) == list(b["state"])
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(a["grads"], b["grads"]))
    assert a["modes"] == b["modes"]
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for key, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][key][name]), (key, name)
    assert a["rng"][0] == b["rng"][0] and np.array_equal(a["rng"][1], b["rng"][1])
    assert torch.equal(a["rng"][2], b["rng"][2])
    assert torch.equal(a["loader"], b["loader"])


def test_lr_find_leaves_model_optimizer_rngs_and_loader_bit_identical():
    model = classifier()
    loader = shuffled_loader()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fit(model, loader, num_steps=3, optimizer=optimizer, progress=False, device="cpu")  # optimizer state exists
    model.eval()
    model[3].train()  # a mixed train/eval state to put back
    model[0].weight.grad = torch.ones_like(model[0].weight)
    before = everything(model, optimizer, loader)
    result = lr_find(model, loader, optimizer=optimizer, num_steps=30, progress=False)
    assert len(result["losses"]) >= 10
    assert_same(everything(model, optimizer, loader), before)


def test_a_fit_after_lr_find_runs_exactly_as_without_it():
    def run(with_lr_find):
        model, loader = classifier(), shuffled_loader()
        torch.manual_seed(7)
        if with_lr_find:
            lr_find(model, loader, num_steps=20, progress=False)
        return fit(model, loader, num_steps=15, lr=1e-2, progress=False, device="cpu")["loss"], model.state_dict()

    (loss_a, state_a), (loss_b, state_b) = run(False), run(True)
    assert loss_a == loss_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_lr_find_ramps_exponentially_and_smooths_with_a_bias_corrected_average():
    result = lr_find(classifier(), shuffled_loader(), start_lr=1e-6, end_lr=1.0, num_steps=25, beta=0.8,
                     diverge=1e9, progress=False)
    lrs = result["lrs"]
    assert len(lrs) == 25 and lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    assert all(b / a == pytest.approx(10 ** 0.25) for a, b in zip(lrs, lrs[1:]))  # 6 decades in 24 steps
    average, expected = 0.0, []
    for i, loss in enumerate(result["losses"]):
        average = 0.8 * average + 0.2 * loss
        expected.append(average / (1 - 0.8 ** (i + 1)))
    assert result["smoothed"] == pytest.approx(expected, rel=1e-12)
    assert result["smoothed"][0] == pytest.approx(result["losses"][0])  # bias correction: no pull towards 0
    i_min = result["smoothed"].index(min(result["smoothed"]))
    assert result["lr_min"] == lrs[i_min] and result["suggestion"] == pytest.approx(lrs[i_min] / 10)
    assert result["stopped_early"] is False


def test_lr_find_stops_when_the_loss_explodes_and_its_suggestion_is_below_the_explosion():
    result = lr_find(classifier(), shuffled_loader(), start_lr=1e-5, end_lr=1e4, num_steps=60, progress=False)
    assert result["stopped_early"] and len(result["losses"]) < 60
    last = result["smoothed"][-1]
    assert last > 4 * min(result["smoothed"]) or not math.isfinite(last)
    assert result["suggestion"] < result["lr_min"] < result["lrs"][-1]
    # the suggestion trains: loss falls at the suggested rate
    model = classifier()
    history = fit(model, shuffled_loader(), num_steps=40, lr=result["suggestion"], progress=False, device="cpu")
    assert sum(history["loss"][-5:]) < sum(history["loss"][:5])


def test_lr_find_is_exported_and_plots():
    assert ftlab.lr_find is lr_find
    result = lr_find(classifier(), shuffled_loader(), num_steps=30, progress=False)
    fig = plot_lr_find(result)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = [line.get_label() for line in ax.lines]
    assert f"suggestion {result['suggestion']:.1e}" in labels
    assert list(ax.lines[labels.index("smoothed")].get_ydata()) == result["smoothed"]


@pytest.mark.parametrize("options, error, message", [
    (dict(start_lr=0.0), ValueError, "start_lr must be greater than 0"),
    (dict(start_lr=1.0, end_lr=0.1), ValueError, "end_lr must be larger than start_lr"),
    (dict(num_steps=3), ValueError, "too few points"),
    (dict(num_steps=20.0), TypeError, "num_steps must be a whole number"),
    (dict(beta=1.0), ValueError, r"beta must be in \[0, 1\)"),
    (dict(diverge=1.0), ValueError, "diverge must be greater than 1"),
    (dict(optimizer="sgd"), TypeError, "optimizer must be a torch.optim.Optimizer"),
    (dict(train_data=[]), ValueError, "train_data yielded no batches"),
])
def test_lr_find_refuses_bad_options_before_changing_anything(options, error, message, untouched):
    model = classifier()
    check = untouched(model)
    data = options.pop("train_data", shuffled_loader())
    with pytest.raises(error, match=message):
        lr_find(model, data, progress=False, **options)
    check()


def test_the_final_progress_line_counts_every_rate_on_the_curve(capsys):
    result = lr_find(classifier(), shuffled_loader(), num_steps=60, end_lr=1e3)
    assert result["stopped_early"]  # the loss blew up before the last rate
    final = capsys.readouterr().err.strip().splitlines()[-1]
    assert final.startswith(f"lr_find: {len(result['losses'])}/60 steps in ") and final.endswith("(stopped)"), final
