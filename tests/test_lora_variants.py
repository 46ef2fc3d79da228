"""VeLoRA (velora.py) and BD-LoRA (bdlora.py) against peft: the same gradients in training, the same parameters.

Their outputs and merges equal peft's in tests/test_peft_matrix.py; what makes them variants is
tested here: VeLoRA's compressed backward (gradients of A from rank-1 sub-token summaries) and
BD-LoRA's block-diagonal factors.
"""
import copy

import pytest
import torch
from peft import BdLoraConfig, LoraConfig, VeloraConfig, get_peft_model
from torch import nn

import ftlab
from ftlab.methods.bdlora import BlockDiagonalLinear

TOL = 1e-10


def base_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 12), nn.Tanh(), nn.Linear(12, 4)).double()


def pair(options: dict, peft_options: dict):
    """(ftlab model, peft model) with the same random adapter weights, both in train mode."""
    base = base_model()
    ours = ftlab.apply(copy.deepcopy(base), "lora", targets=["0", "2"], r=4, init_lora_weights=False, **options)
    ref = get_peft_model(copy.deepcopy(base), LoraConfig(target_modules=["0", "2"], r=4, init_lora_weights=False,
                                                         **peft_options))
    ref_state = ref.state_dict()
    with torch.no_grad():
        for name, tensor in ours.state_dict().items():
            if "lora_" in name:
                ref_state["base_model.model." + name].copy_(tensor)
    return ours.train(), ref.train()


def gradients(model, x):
    model.zero_grad()
    (model(x) ** 2).sum().backward()
    return {name.removeprefix("base_model.model."): p.grad.clone() for name, p in model.named_parameters()
            if p.requires_grad}


@pytest.mark.parametrize("init_type", ["random", "batch_average", "batch_average_once"])
def test_velora_gradients_equal_peft_and_differ_from_plain_lora(init_type):
    config = {"num_groups": 3, "init_type": init_type, "scale": 1.5}
    ours, ref = pair({"velora_config": config}, {"velora_config": VeloraConfig(**config)})
    torch.manual_seed(3)
    for step in range(2):  # the second step shows whether v follows the batch
        x = torch.randn(6, 10, dtype=torch.float64) * (1 + step)
        ours_grads, ref_grads = gradients(ours, x), gradients(ref, x)
        assert ours_grads.keys() == ref_grads.keys() and len(ours_grads) == 4
        assert all((ours_grads[k] - ref_grads[k]).abs().max() < TOL for k in ours_grads)
        for name in ("0", "2"):
            v = ours.get_submodule(name).lora_velora_embed.default
            assert (v - ref.base_model.model.get_submodule(name).lora_velora_embed["default"]).abs().max() < TOL
            assert abs(v.norm().item() - 1) < 1e-6
    plain = copy.deepcopy(ours)
    plain_grads = gradients(plain.eval(), x)  # in eval A keeps its whole input: plain LoRA's exact gradient
    assert (plain_grads["0.lora_A.default.weight"] - ours_grads["0.lora_A.default.weight"]).abs().max() > 1e-6
    assert (plain_grads["0.lora_B.default.weight"] - ours_grads["0.lora_B.default.weight"]).abs().max() < TOL


def test_velora_with_one_feature_per_group_gives_the_exact_gradient():
    # sub-tokens of one feature: c = s v with v = +-1 rebuilds s exactly (scale 1)
    ours = ftlab.apply(base_model(), "lora", targets=["0", "2"], r=4, init_lora_weights=False,
                       velora_config={"num_groups": 12, "init_type": "random"}).train()  # 10 inputs, 12 groups
    x = torch.randn(5, 10, dtype=torch.float64)
    compressed = gradients(ours, x)
    exact = gradients(copy.deepcopy(ours).eval(), x)
    assert all((compressed[k] - exact[k]).abs().max() < 1e-12 for k in compressed)


def test_bd_lora_factors_are_block_diagonal_with_peft_s_parameters_and_gradients():
    bd = {"target_modules_bd_a": ["0"], "target_modules_bd_b": ["2"], "nblocks": 2}
    ours, ref = pair({"use_bdlora": bd}, {"use_bdlora": BdLoraConfig(**bd)})
    A, B = ours[0].lora_A["default"], ours[2].lora_B["default"]
    assert isinstance(A, BlockDiagonalLinear) and A.weight.shape == (4, 5)  # (r, in / 2)
    assert isinstance(B, BlockDiagonalLinear) and B.weight.shape == (4, 2)  # (out, r / 2)
    dense = A.dense()
    assert dense.shape == (4, 10) and (dense[:2, 5:] == 0).all() and (dense[2:, :5] == 0).all()
    assert ftlab.count_parameters(ours)["trainable"] == ref.get_nb_trainable_parameters()[0]
    x = torch.randn(6, 10, dtype=torch.float64)
    ours_grads, ref_grads = gradients(ours, x), gradients(ref, x)
    assert all((ours_grads[k] - ref_grads[k]).abs().max() < TOL for k in ours_grads)
    with torch.no_grad():
        x_in = torch.randn(3, 10, dtype=torch.float64)
        assert (A(x_in) - x_in @ dense.T).abs().max() < TOL


@pytest.mark.parametrize("options, message", [
    ({"use_bdlora": {"target_modules_bd_a": ["0"], "nblocks": 3}}, "'0': a block-diagonal A with nblocks=3 needs"),
    ({"use_bdlora": {"target_modules_bd_a": ["0"]}}, "'2' matches neither .*match_strict=False"),
    ({"use_bdlora": {"target_modules_bd_a": ["0"], "target_modules_bd_b": ["0"]}}, "matches both"),
    ({"velora_config": {"num_groups": 0}}, "velora_config's num_groups must be at least 1"),
    ({"velora_config": {"init_type": "mean"}}, "velora_config's init_type must be one of"),
    ({"velora_config": {}, "use_dora": True}, "LoRA variants: choose one of them"),
    ({"velora_config": 3}, "velora_config must be a dict"),
])
def test_bad_variant_options_raise_and_leave_the_model_untouched(options, message, untouched):
    model = base_model()
    check = untouched(model)
    with pytest.raises((ValueError, TypeError), match=message):
        ftlab.apply(model, "lora", targets=["0", "2"], r=4, **options)
    check()
