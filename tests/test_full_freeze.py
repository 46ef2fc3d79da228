"""Full fine-tuning and layer freezing (ftlab/methods/full.py, freeze.py)."""
import pytest
import torch
import torchvision
from torch import nn

import ftlab
from ftlab.measure import count_parameters
from ftlab.methods import freeze
from ftlab.train import fit


@pytest.fixture
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


def numel(params) -> int:
    return sum(p.numel() for p in params)


def trainable_ids(model) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def test_full_makes_every_parameter_trainable(resnet):
    for p in resnet.parameters():
        p.requires_grad_(False)
    model = ftlab.apply(resnet, "full")
    counts = count_parameters(model)
    assert model is resnet
    assert counts["trainable"] == counts["total"] == 11_181_642


def test_resnet_groups_are_stem_stages_and_fc_and_cover_every_parameter_once(resnet):
    groups = freeze.group_parameters(resnet)
    assert list(groups) == ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in resnet.parameters()}
    assert numel(groups["stem"]) == 64 * 3 * 7 * 7 + 2 * 64
    assert numel(groups["fc"]) == 512 * 10 + 10


def test_bert_groups_are_embeddings_layers_and_head(minilm):
    model, _ = minilm
    groups = freeze.group_parameters(model)
    assert list(groups) == ["embeddings"] + [f"layer.{i}" for i in range(6)] + ["head"]
    assert sum(len(params) for params in groups.values()) == len(list(model.parameters()))
    assert numel(groups["head"]) == (384 * 384 + 384) + (384 * 2 + 2)  # pooler + classifier


def test_gpt2_tied_lm_head_belongs_to_the_embeddings_group(tiny_gpt2):
    groups = freeze.group_parameters(tiny_gpt2)
    assert list(groups) == ["embeddings", "h.0", "h.1", "head"]
    assert any(p is tiny_gpt2.lm_head.weight for p in groups["embeddings"])
    assert numel(groups["head"]) == 2 * 64  # ln_f only: lm_head's weight is wte's
    assert sum(numel(params) for params in groups.values()) == count_parameters(tiny_gpt2)["total"]


@pytest.mark.parametrize("n", [-6, -3, -1, 0, 2, 6])
def test_freeze_to_trains_exactly_the_unfrozen_groups(resnet, n):
    freeze.freeze_to(resnet, n)
    groups = list(freeze.group_parameters(resnet).values())
    expected = [p for params in groups[n:] for p in params]
    assert trainable_ids(resnet) == {id(p) for p in expected}
    assert count_parameters(resnet)["trainable"] == numel(expected)


def test_apply_freeze_leaves_the_top_groups_trainable(minilm):
    model, _ = minilm
    ftlab.apply(model, "freeze", trainable_groups=2)
    groups = freeze.group_parameters(model)
    assert trainable_ids(model) == {id(p) for p in groups["layer.5"] + groups["head"]}


def test_train_bn_keeps_batchnorm_parameters_of_frozen_groups_trainable(resnet):
    freeze.freeze_to(resnet, -1, train_bn=True)
    bn = [p for m in resnet.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    assert trainable_ids(resnet) == {id(p) for p in bn + list(resnet.fc.parameters())}
    assert count_parameters(resnet)["trainable"] == 9_600 + 5_130


def test_gradual_unfreezing_unfreezes_one_group_every_k_steps_during_fit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 3))
    groups = {"a": ["0"], "b": ["2"], "c": ["4"], "d": ["6"]}
    optimizer = torch.optim.AdamW(freeze.discriminative_param_groups(model, lr=1e-2, groups=groups))
    schedule = freeze.gradual_unfreezing(model, every=2, start=2, groups=groups)
    seen, weights = [], []

    def on_step(step, model, optimizer):
        schedule(step, model, optimizer)
        seen.append("".join(name for name, names in groups.items()
                            if model.get_submodule(names[0]).weight.requires_grad))
        weights.append(model[2].weight.detach().clone())

    data = [(torch.randn(16, 8), torch.randint(0, 3, (16,)))]
    fit(model, data, num_steps=6, optimizer=optimizer, on_step=on_step, device="cpu", progress=False)
    assert seen == ["cd", "cd", "bcd", "bcd", "abcd", "abcd"]
    assert torch.equal(weights[0], weights[2])  # group b frozen during steps 0 and 1
    assert not torch.equal(weights[2], weights[4])  # and trained from step 2 on


def test_discriminative_rates_fall_geometrically_in_the_optimizer_groups(minilm):
    model, _ = minilm
    optimizer = torch.optim.AdamW(freeze.discriminative_param_groups(model, lr=1e-3, factor=2.0))
    names = [g["name"] for g in optimizer.param_groups]
    assert names == ["embeddings"] + [f"layer.{i}" for i in range(6)] + ["head"]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3 / 2.0 ** k for k in range(7, -1, -1)])
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_explicit_groups_work_for_a_model_of_unknown_family():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))
    groups = {"bottom": ["0"], "middle": ["2"], "top": ["3"]}
    freeze.freeze_to(model, -2, groups=groups)
    assert trainable_ids(model) == {id(p) for p in [*model[2].parameters(), *model[3].parameters()]}
    rates = [g["lr"] for g in freeze.discriminative_param_groups(model, 1.0, 10.0, groups=groups)]
    assert rates == pytest.approx([0.01, 0.1, 1.0])


@pytest.mark.parametrize("call, message", [
    (lambda m: freeze.freeze_to(m, 1), "groups="),
    (lambda m: freeze.apply(m), "known families"),
    (lambda m: freeze.freeze_to(m, 1, groups={"a": ["0"], "b": ["5"]}), "'5'"),
    (lambda m: freeze.freeze_to(m, 1, groups={"a": ["0"], "b": ["1"]}), "no parameters"),
    (lambda m: freeze.freeze_to(m, 1, groups={"a": ["0"], "b": ["0"]}), "put it in one group"),
    (lambda m: freeze.freeze_to(m, 3, groups={"a": ["0"], "b": ["2"]}), "from -2 to 2"),
    (lambda m: freeze.apply(m, trainable_groups=0, groups={"a": ["0"], "b": ["2"]}), "from 1"),
    (lambda m: freeze.gradual_unfreezing(m, every=0, groups={"a": ["0"], "b": ["2"]}), "every"),
    (lambda m: freeze.discriminative_param_groups(m, lr=1e-3, factor=0.5, groups={"a": ["0"]}), "factor"),
])
def test_bad_freezing_input_raises_and_leaves_the_model_untouched(call, message, untouched):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    check = untouched(model)
    with pytest.raises(ValueError, match=message):
        call(model)
    check()
