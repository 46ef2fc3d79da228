"""IA3 (ftlab/methods/ia3.py) against peft on nn.Linear, GPT-2 Conv1D and nn.Conv2d, and BitFit
(ftlab/methods/bitfit.py), which peft does not have: it is checked against the count of bias terms.

Parity tests give ftlab's and peft's scaling vectors the same random values (not ones) and
compare outputs in float64.
"""
import copy

import pytest
import torch
from peft import IA3Config, get_peft_model
from torch import nn

import ftlab
from ftlab.methods import bitfit, ia3
from ftlab.methods.base import RESNET_STAGE_CONVS, tuned_layers

from builders import resnet18, tiny_bert

TOL = 1e-10
RESNET_PARITY_TARGETS = r"layer[12]\.\d+\.(conv\d+|downsample\.0)"


def case(kind, tiny_gpt2):
    """(fresh float64 model, IA3 options (None: the family default), input, out(model, x) -> logits)."""
    torch.manual_seed(0)
    if kind == "linear":
        x = {"input_ids": torch.randint(0, 500, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
        return tiny_bert().double(), {}, x, lambda m, x: m(**x).logits
    if kind == "conv1d":
        return tiny_gpt2.double(), {}, {"input_ids": torch.randint(0, 500, (2, 12))}, lambda m, x: m(**x).logits
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    options = {"targets": RESNET_PARITY_TARGETS, "feedforward_modules": ["conv2"]}
    return copy.deepcopy(resnet18()).double(), options, x, lambda m, x: m(x)


def peft_config(options):
    return IA3Config(target_modules=options.get("targets"), feedforward_modules=options.get("feedforward_modules"))


def max_diff(a, b):
    return (a - b).abs().max().item()


def build_pair(kind, tiny_gpt2):
    """(ftlab model, peft model, x, out) with the same random scaling vectors l ~ 1 + N(0, 0.3^2)."""
    base, options, x, out = case(kind, tiny_gpt2)
    ours = ia3.apply(copy.deepcopy(base), **options)
    ref = get_peft_model(base, peft_config(options))
    ref_state = ref.state_dict()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if p.requires_grad:
                p.copy_(1 + 0.3 * torch.randn_like(p))
                ref_state["base_model.model." + name].copy_(p.view_as(ref_state["base_model.model." + name]))
    return ours, ref, x, out


@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d"])
def test_ia3_matches_peft_merged_and_unmerged(kind, tiny_gpt2):
    ours, ref, x, out = build_pair(kind, tiny_gpt2)
    layers = tuned_layers(ours)
    assert {layer.adapter_config["default"].is_feedforward for _, layer in layers} == {True, False}
    before = {name: [None if p is None else p.detach().clone()
                     for p in (layer.base_layer.weight, layer.base_layer.bias)] for name, layer in layers}
    with torch.no_grad():
        expected = out(ref, x)
        with ftlab.disable_adapters(ours):
            assert max_diff(expected, out(ours, x)) > 1e-4  # the vectors really change the output
        assert max_diff(out(ours, x), expected) < TOL
        deltas = {name: layer.delta_weight("default") for name, layer in layers}

        ftlab.merge(ours)
        ref.merge_adapter()
        assert max_diff(out(ours, x), out(ref, x)) < TOL
        assert max_diff(out(ours, x), expected) < TOL
        for name, layer in layers:
            assert max_diff(layer.base_layer.weight, before[name][0] + deltas[name]) < 1e-12

        # peft unmerges by dividing by l + 1e-8 (approximately); ftlab divides by l
        ftlab.unmerge(ours)
        for name, layer in layers:
            weight, bias = before[name]
            assert max_diff(layer.base_layer.weight, weight) < 1e-12
            assert bias is None or max_diff(layer.base_layer.bias, bias) < 1e-12
        assert max_diff(out(ours, x), expected) < TOL


@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d"])
def test_ia3_gradients_match_peft(kind, tiny_gpt2):
    ours, ref, x, out = build_pair(kind, tiny_gpt2)
    (out(ours, x) ** 2).sum().backward()
    (out(ref, x) ** 2).sum().backward()
    ref_params = dict(ref.named_parameters())
    grads = [(p.grad, ref_params["base_model.model." + name].grad)
             for name, p in ours.named_parameters() if p.requires_grad]
    assert grads and all(a is not None and a.abs().max() > 0 for a, _ in grads)
    assert max(max_diff(a, b.view_as(a)) for a, b in grads) < 1e-10


def feedforward_names(model):
    """{wrapped layer name: is_feedforward} of an ftlab or peft IA3 model."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, ia3.IA3Layer):
            out[name] = module.adapter_config["default"].is_feedforward
        elif hasattr(module, "is_feedforward") and hasattr(module, "ia3_l"):
            out[name.removeprefix("base_model.model.")] = module.is_feedforward
    return out


@pytest.mark.parametrize("family, targets", [
    ("bert", None),                        # key, value, output.dense; feedforward: output.dense
    ("gpt2", None),                        # c_attn, mlp.c_proj; feedforward: mlp.c_proj
    ("bert", ["query", "output.dense"]),   # the default feedforward layers among other targets
])
def test_ia3_defaults_and_trainable_counts_match_peft(family, targets, minilm, tiny_gpt2):
    base = minilm[0] if family == "bert" else tiny_gpt2
    ours = ia3.apply(copy.deepcopy(base), targets=targets)
    ref = get_peft_model(copy.deepcopy(base), IA3Config(target_modules=targets))
    assert feedforward_names(ours) == feedforward_names(ref)
    assert any(feedforward_names(ours).values()) and not all(feedforward_names(ours).values())
    counts = ftlab.count_parameters(ours)
    assert (counts["trainable"], counts["total"]) == ref.get_nb_trainable_parameters()


def test_ia3_trainable_counts_match_peft_on_resnet18():
    options = {"targets": RESNET_STAGE_CONVS, "feedforward_modules": ["conv1"]}
    ours = ia3.apply(copy.deepcopy(resnet18()), **options)
    ref = get_peft_model(copy.deepcopy(resnet18()), peft_config(options))
    counts = ftlab.count_parameters(ours)
    assert (counts["trainable"], counts["total"]) == ref.get_nb_trainable_parameters()
    # ftlab's default for a ResNet: the output channels of every stage conv
    default = ftlab.count_parameters(ia3.apply(copy.deepcopy(resnet18())))
    assert default["trainable"] == sum(m.out_channels for name, m in resnet18().named_modules()
                                       if isinstance(m, nn.Conv2d) and name.startswith("layer"))


@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d"])
def test_ia3_default_init_leaves_output_unchanged(kind, tiny_gpt2):
    base, options, x, out = case(kind, tiny_gpt2)
    model = ftlab.apply(copy.deepcopy(base), "ia3", **options)
    with torch.no_grad():
        assert max_diff(out(model, x), out(base, x)) == 0  # l = 1 exactly
    vectors = [p for p in model.parameters() if p.requires_grad]
    assert vectors and all((v == 1).all() for v in vectors)
    random = ia3.apply(copy.deepcopy(base), init_ia3_weights=False, **options)
    assert not any((p == 1).all() for p in random.parameters() if p.requires_grad)


def test_ia3_merge_and_unmerge_are_exact_even_with_a_zero_scale(tiny_gpt2):
    model = ia3.apply(tiny_gpt2.double())
    before = copy.deepcopy(model.state_dict())
    x = torch.randint(0, 500, (2, 10))
    with torch.no_grad():
        for _, layer in tuned_layers(model):
            layer.ia3_l["default"].uniform_(0.5, 1.5)
            layer.ia3_l["default"][:3] = 0  # erases rows (or columns) of W in the merge
        expected = model(x).logits
        ftlab.merge(model)
        assert max_diff(model(x).logits, expected) < TOL
        ftlab.unmerge(model)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if "ia3_l" not in k)


@pytest.mark.parametrize("method, kind", [("ia3", "bert"), ("bitfit", "bert"), ("bitfit", "resnet")])
def test_only_method_parameters_train_and_the_rest_stays_bit_identical(method, kind, minilm):
    if kind == "bert":
        model = minilm[0]
        batch = {"input_ids": torch.randint(0, 1000, (4, 12)), "attention_mask": torch.ones(4, 12, dtype=torch.long),
                 "labels": torch.tensor([0, 1, 0, 1])}
    else:
        model = copy.deepcopy(resnet18())
        batch = (torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))
    model = ftlab.apply(model, method, modules_to_save=["classifier" if kind == "bert" else "fc"])
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    head = (".modules_to_save.",) if method == "ia3" else ("classifier.", "fc.")
    marker = ".ia3_l." if method == "ia3" else "bias"
    assert trainable and all(marker in name or any(h in name for h in head) for name in trainable)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    trained = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    torch.manual_seed(0)
    ftlab.fit(model, [batch], num_steps=3, lr=1e-2, device="cpu", progress=False)
    for name, p in model.named_parameters():
        if name in frozen:
            assert p.grad is None and torch.equal(p, frozen[name]), name
    assert all(not torch.equal(p, trained[name]) for name, p in model.named_parameters() if name in trained)


@pytest.mark.parametrize("options, error, message", [
    ({"targets": ["c_attn"], "feedforward_modules": ["c_fc"]}, ValueError, r"\['c_fc'\] match none of the targets"),
    ({"feedforward_modules": ["c_proj", "c_fcc"]}, ValueError, r"\['c_fcc'\] match none .*\['c_attn', 'c_proj'\]"),
    ({"feedforward_modules": 3}, TypeError, "feedforward_modules must be a list"),
    ({"targets": ["c_atn"]}, ValueError, "c_attn"),
    ({"targets": ["c_attn", "ln_1"]}, TypeError, "'transformer.h.0.ln_1': ia3 cannot adapt a LayerNorm"),
    ({"init_ia3_weights": "ones"}, TypeError, "init_ia3_weights must be True or False"),
    ({"modules_to_save": ["lm_haed"]}, ValueError, "lm_head"),
])
def test_bad_ia3_options_raise_and_leave_the_model_untouched(options, error, message, tiny_gpt2, untouched):
    check = untouched(tiny_gpt2)
    with pytest.raises(error, match=message):
        ia3.apply(tiny_gpt2, **options)
    check()


def test_ia3_on_an_unknown_family_needs_targets(untouched):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    check = untouched(model)
    with pytest.raises(ValueError, match="no default ia3 targets for Sequential"):
        ia3.apply(model)
    check()
    ia3.apply(model, targets=["0", "2"], feedforward_modules=["2"])
    assert [p.shape for p in model.parameters() if p.requires_grad] == [(8,), (8,)]  # outputs of 0, inputs of 2


# ---------------------------------------------------------------- BitFit

def bias_count(model):
    return sum(p.numel() for name, p in model.named_parameters() if name.endswith("bias"))


@pytest.mark.parametrize("kind", ["bert", "gpt2", "resnet"])
def test_bitfit_trains_exactly_the_bias_terms(kind, minilm, tiny_gpt2):
    model = {"bert": minilm[0], "gpt2": tiny_gpt2, "resnet": copy.deepcopy(resnet18())}[kind]
    structure = repr(model)
    expected = bias_count(model)
    ftlab.apply(model, "bitfit")
    assert repr(model) == structure  # nothing injected
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, _ in model.named_parameters() if name.endswith("bias")}
    assert ftlab.count_parameters(model)["trainable"] == expected > 0
    if kind == "bert":  # LayerNorm shifts count too
        assert "bert.embeddings.LayerNorm.bias" in trainable


def test_bitfit_with_the_head_trains_the_whole_classifier(minilm):
    model = bitfit.apply(minilm[0], modules_to_save=["classifier"])
    classifier = minilm[0].classifier
    expected = bias_count(model) + classifier.weight.numel()
    assert classifier.weight.requires_grad and classifier.bias.requires_grad
    assert ftlab.count_parameters(model)["trainable"] == expected


def test_bitfit_errors_leave_the_model_untouched(tiny_gpt2, untouched):
    no_bias = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False))
    check = untouched(no_bias)
    with pytest.raises(ValueError, match="Sequential has no bias parameters.*'lora' or 'ia3'"):
        ftlab.apply(no_bias, "bitfit")
    check()
    check = untouched(tiny_gpt2)
    with pytest.raises(ValueError, match="lm_head"):
        bitfit.apply(tiny_gpt2, modules_to_save=["lm_haed"])
    check()
