"""The shape of an update (notebook 07): ``layer_delta`` gives a method's delta W of one layer, float64, without
touching the layer or the global random state, and reaches the ranks the equations say; ``plot_update_ranks``
draws LoRA, LoHa and LoKr at one rank with their parameter counts and measured ranks."""
import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ftlab.methods import layer_delta
from ftlab.viz import plot_update_ranks


def _rank(delta):
    return torch.linalg.matrix_rank(delta).item()


def test_random_factors_reach_rank_r_r_squared_and_factor_times_r_with_their_parameter_counts():
    layer = nn.Linear(48, 48)
    lora, lora_trainable = layer_delta(layer, "lora", r=3, init_lora_weights=False)
    loha, loha_trainable = layer_delta(layer, "loha", r=3, init_weights=False)
    lokr, lokr_trainable = layer_delta(layer, "lokr", r=3, decompose_factor=4, init_weights=False)
    assert (_rank(lora), _rank(loha), _rank(lokr)) == (3, 9, 12)
    assert (lora_trainable, loha_trainable, lokr_trainable) == (3 * 96, 2 * 3 * 96, 4 * 4 + 3 * (12 + 12))
    assert lora.shape == loha.shape == lokr.shape == (48, 48) and lora.dtype == torch.float64


def test_the_default_start_is_a_zero_change_and_the_same_seed_gives_the_same_change():
    layer = nn.Linear(16, 8)
    zero, _ = layer_delta(layer, "lora", r=2)
    assert torch.count_nonzero(zero) == 0
    first, _ = layer_delta(layer, "loha", r=2, init_weights=False, seed=3)
    again, _ = layer_delta(layer, "loha", r=2, init_weights=False, seed=3)
    other, _ = layer_delta(layer, "loha", r=2, init_weights=False, seed=4)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_the_layer_and_the_global_random_state_are_left_as_they_were():
    layer = nn.Linear(16, 8)
    weight = layer.weight.detach().clone()
    state = torch.get_rng_state()
    layer_delta(layer, "lokr", r=2, decompose_factor=2, init_weights=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert layer.weight.dtype == torch.float32 and torch.equal(layer.weight, weight)
    assert type(layer) is nn.Linear and all(p.requires_grad for p in layer.parameters())


def test_a_gpt2_conv1d_change_comes_out_first_like_a_linear_one():
    delta, _ = layer_delta(Conv1D(12, 8), "lora", r=2, init_lora_weights=False)  # Conv1D(nf=out, nx=in)
    assert delta.shape == (12, 8) and _rank(delta) == 2


@pytest.mark.parametrize("method, why", [("full", "does not wrap single layers"), ("prefix", "does not wrap single"),
                                         ("adapter", "not a delta W added to the weight")])
def test_methods_without_a_delta_w_of_one_layer_are_refused_with_the_ones_that_have_it(method, why):
    with pytest.raises(ValueError, match=why) as err:
        layer_delta(nn.Linear(32, 32), method)
    assert "lora, loha, lokr" in str(err.value)


def test_plot_update_ranks_draws_three_spectra_labelled_with_parameters_and_measured_ranks():
    layer = nn.Linear(48, 48)
    weight = layer.weight.detach().clone()
    fig = plot_update_ranks(layer, r=2, decompose_factor=4)
    (ax,) = fig.axes
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == ["LoRA r=2: 192 trained, rank 2", "LoHa r=2: 384 trained, rank 4",
                      "LoKr f=4 r=2: 64 trained, rank 8"]
    assert [len(line.get_xdata()) for line in ax.get_lines()] == [48, 48, 48]
    assert ax.get_yscale() == "log" and "48 x 48" in ax.get_title() and torch.equal(layer.weight, weight)


def test_plot_update_ranks_shows_the_cap_by_the_layer_size():
    fig = plot_update_ranks(nn.Linear(16, 16), r=8, decompose_factor=2)
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert labels[1].endswith("rank 16") and labels[2].endswith("rank 16")  # r * r = 64 and 2 * 8 capped at 16
