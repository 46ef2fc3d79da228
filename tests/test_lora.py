"""LoRA and DoRA (ftlab/methods/lora.py) against peft, on nn.Linear, GPT-2 Conv1D and nn.Conv2d.

Parity tests build the model twice, give ftlab's and peft's adapters the same non-zero
random weights and compare outputs in float64.
"""
import copy
import math
import warnings

import pytest
import torch
from peft import LoraConfig, get_peft_model

import ftlab
from ftlab.methods import lora
from ftlab.methods.base import RESNET_STAGE_CONVS, tuned_layers

from builders import minilm_classifier, resnet18_float64, tiny_gpt2

TOL = 1e-10


@pytest.fixture(scope="module")
def minilm():
    return minilm_classifier()


# Parity tests on ResNet-18 adapt the convs of layer1 and layer2 only (3x3 convs and a
# strided 1x1 shortcut): every kind of conv there is, at a fraction of the time.
RESNET_PARITY_TARGETS = r"layer[12]\.\d+\.(conv\d+|downsample\.0)"


def case(kind, minilm=None):
    """(fresh float64 model, peft target_modules, input x, out(model, x) -> logits) for one layer kind."""
    if kind == "linear":
        model = copy.deepcopy(minilm).double()
        x = {"input_ids": torch.randint(0, 1000, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
        return model, ["query", "value"], x, lambda m, x: m(**x).logits
    if kind == "conv1d":
        x = {"input_ids": torch.randint(0, 500, (2, 12))}
        return tiny_gpt2().double(), ["c_attn"], x, lambda m, x: m(**x).logits
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    return copy.deepcopy(resnet18_float64()), RESNET_STAGE_CONVS, x, lambda m, x: m(x)


def peft_key(name: str) -> str:
    """peft's state_dict key for one of ftlab's adapter parameters (same names, peft's prefix)."""
    name = name.replace(".base_layer.", ".original_module.")
    return "base_model.model." + name + (".weight" if ".lora_magnitude_vector." in name else "")


def randomize_and_copy_to_peft(ours, ref):
    """Give ftlab's trainable parameters non-zero random values and copy them into peft's model.

    A and B get N(0, 0.05^2) entries (small enough that a ResNet's output does not blow up),
    DoRA magnitudes and saved modules a random perturbation of their values.
    """
    torch.manual_seed(1)
    ref_state = ref.state_dict()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if p.requires_grad:
                if ".lora_A." in name or ".lora_B." in name:
                    p.copy_(0.05 * torch.randn_like(p))
                else:
                    p.mul_(1 + 0.1 * torch.randn_like(p))
                ref_state[peft_key(name)].copy_(p.view_as(ref_state[peft_key(name)]))


def build_pair(kind, minilm, **options):
    """(ftlab model, peft model, base model, x, out) with the same non-zero adapter weights."""
    base, targets, x, out = case(kind, minilm)
    targets = RESNET_PARITY_TARGETS if kind == "conv2d" else targets
    ours, ref = copy.deepcopy(base), copy.deepcopy(base)
    lora.apply(ours, targets=targets, init_lora_weights=False, **options)
    peft_options = {k: v for k, v in options.items() if k in ("r", "lora_alpha", "use_rslora", "use_dora",
                                                                "lora_dropout", "modules_to_save")}
    ref = get_peft_model(ref, LoraConfig(target_modules=targets, init_lora_weights=False,
                                         fan_in_fan_out=kind == "conv1d", **peft_options))
    randomize_and_copy_to_peft(ours, ref)
    return ours, ref, base, x, out


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("use_dora", [False, True])
@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d"])
def test_lora_and_dora_match_peft_merged_and_unmerged(minilm, kind, use_dora):
    options = {"r": 4, "lora_alpha": 8, "use_dora": use_dora}
    if kind == "linear":
        options["modules_to_save"] = ["classifier"]
    ours, ref, base, x, out = build_pair(kind, minilm, **options)
    layers = tuned_layers(ours)
    before = {name: layer.base_layer.weight.detach().clone() for name, layer in layers}
    with torch.no_grad():
        expected = out(ref, x)
        assert max_diff(expected, out(base, x)) > 1e-3  # the adapters really change the output
        assert max_diff(out(ours, x), expected) < TOL

        # delta_weight is in the base weight's own layout (Conv1D: (in, out)) and is what merging adds
        for name, layer in layers:
            if isinstance(layer, lora.LoraLayer):
                delta = layer.delta_weight("default")
                assert delta.shape == layer.base_layer.weight.shape
                if not use_dora:
                    peft_delta = ref.base_model.model.get_submodule(name).get_delta_weight("default")
                    assert max_diff(delta, peft_delta) < 1e-12
                before[name] = (before[name], before[name] + delta)

        ftlab.merge(ours)
        ref.merge_adapter()
        assert max_diff(out(ours, x), out(ref, x)) < TOL
        assert max_diff(out(ours, x), expected) < TOL
        for name, layer in layers:
            if isinstance(layer, lora.LoraLayer):
                assert max_diff(layer.base_layer.weight, before[name][1]) < 1e-12

        ftlab.unmerge(ours)
        for name, layer in layers:
            if isinstance(layer, lora.LoraLayer):
                assert max_diff(layer.base_layer.weight, before[name][0]) < 1e-12
        assert max_diff(out(ours, x), expected) < TOL


@pytest.mark.parametrize("use_dora", [False, True])
def test_lora_matches_peft_with_rslora_scaling(minilm, use_dora):
    ours, ref, _, x, out = build_pair("conv1d", minilm, r=4, lora_alpha=6, use_rslora=True, use_dora=use_dora)
    layer = tuned_layers(ours)[0][1]
    assert layer.adapter_config["default"].scaling == pytest.approx(6 / math.sqrt(4))
    with torch.no_grad():
        assert max_diff(out(ours, x), out(ref, x)) < TOL


def test_dora_matches_peft_in_training_with_dropout(minilm):
    # With dropout active, DoRA computes W x on the dropped-out input (no reuse of the base output).
    ours, ref, _, x, out = build_pair("conv1d", minilm, r=4, lora_alpha=8, use_dora=True, lora_dropout=0.3)
    ours.train()
    ref.train()
    torch.manual_seed(5)
    a = out(ours, x)
    torch.manual_seed(5)
    b = out(ref, x)
    assert max_diff(a, b) < TOL


@pytest.mark.parametrize("use_dora", [False, True])
@pytest.mark.parametrize("kind", ["conv1d", "conv2d"])
def test_gradients_match_peft_including_the_detached_dora_norm(minilm, kind, use_dora):
    ours, ref, _, x, out = build_pair(kind, minilm, r=4, lora_alpha=8, use_dora=use_dora)
    (out(ours, x) ** 2).sum().backward()
    (out(ref, x) ** 2).sum().backward()
    ref_params = dict(ref.named_parameters())
    grads = [(p.grad, ref_params[peft_key(name)].grad) for name, p in ours.named_parameters() if p.requires_grad]
    assert grads and all(a is not None and a.abs().max() > 0 for a, _ in grads)
    assert max(max_diff(a, b.view_as(a)) for a, b in grads) < 1e-10


@pytest.mark.parametrize("use_dora", [False, True])
@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d"])
def test_default_init_leaves_output_unchanged(minilm, kind, use_dora):
    base, targets, x, out = case(kind, minilm)
    model = lora.apply(copy.deepcopy(base), targets=targets, use_dora=use_dora)
    with torch.no_grad():
        assert max_diff(out(model, x), out(base, x)) < 1e-12
    B = [p for name, p in model.named_parameters() if "lora_B" in name]
    A = [p for name, p in model.named_parameters() if "lora_A" in name]
    assert B and all((b == 0).all() for b in B) and all(a.abs().sum() > 0 for a in A)


@pytest.mark.parametrize("use_dora", [False, True])
@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d"])
def test_trainable_parameter_counts_match_peft(minilm, kind, use_dora):
    base, targets, _, _ = case(kind, minilm)
    extra = {"modules_to_save": ["classifier"]} if kind == "linear" else {}
    ours = lora.apply(copy.deepcopy(base), targets=targets, r=8, use_dora=use_dora, **extra)
    ref = get_peft_model(copy.deepcopy(base), LoraConfig(r=8, target_modules=targets, use_dora=use_dora,
                                                         fan_in_fan_out=kind == "conv1d", **extra))
    counts = ftlab.count_parameters(ours)
    assert (counts["trainable"], counts["total"]) == ref.get_nb_trainable_parameters()
    assert counts["trainable"] > 0


def test_only_lora_parameters_train_and_base_stays_bit_identical(minilm):
    model = lora.apply(copy.deepcopy(minilm).float(), r=4, modules_to_save=["classifier"])
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in name or ".modules_to_save." in name for name in trainable)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    adapters = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    torch.manual_seed(0)
    batch = {"input_ids": torch.randint(0, 1000, (4, 12)), "attention_mask": torch.ones(4, 12, dtype=torch.long),
             "labels": torch.tensor([0, 1, 0, 1])}
    ftlab.fit(model, [batch], num_steps=3, lr=1e-2, device="cpu", progress=False)
    for name, p in model.named_parameters():
        if name in frozen:
            assert p.grad is None and torch.equal(p, frozen[name]), name
    assert all(not torch.equal(p, adapters[name]) for name, p in model.named_parameters() if name in adapters)


@pytest.mark.parametrize("kind", ["conv1d", "conv2d"])
def test_weighted_sum_of_adapters_is_exact(minilm, kind):
    base, targets, x, out = case(kind, minilm)
    targets = RESNET_PARITY_TARGETS if kind == "conv2d" else targets
    model = lora.apply(copy.deepcopy(base), targets=targets, r=2, lora_alpha=4, init_lora_weights=False)
    ftlab.add_adapter(model, "second", r=3, lora_alpha=5, use_rslora=True, targets=targets, init_lora_weights=False)
    lora.add_weighted_adapter(model, ["default", "second"], [0.7, -1.3], "sum")
    for _, layer in tuned_layers(model):
        expected = 0.7 * layer.delta_weight("default") - 1.3 * layer.delta_weight("second")
        assert layer.adapter_config["sum"].r == 5
        assert max_diff(layer.delta_weight("sum"), expected) < 1e-12
    ftlab.set_adapter(model, "sum")
    merged_sum = copy.deepcopy(model)
    with torch.no_grad():
        for _, layer in tuned_layers(merged_sum):
            layer.base_layer.weight += 0.7 * layer.delta_weight("default") - 1.3 * layer.delta_weight("second")
        with ftlab.disable_adapters(merged_sum):
            expected = out(merged_sum, x)
        assert max_diff(out(model, x), expected) < 1e-10


def test_weighted_sum_rejects_dora_and_bad_input(minilm):
    base, targets, _, _ = case("conv1d", minilm)
    model = lora.apply(copy.deepcopy(base), targets=targets, use_dora=True)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="DoRA"):
        lora.add_weighted_adapter(model, ["default"], [1.0], "sum")
    with pytest.raises(ValueError, match="one weight per adapter"):
        lora.add_weighted_adapter(model, ["default"], [1.0, 2.0], "sum")
    with pytest.raises(ValueError, match="no adapters called"):
        lora.add_weighted_adapter(model, ["nope"], [1.0], "sum")
    assert model.state_dict().keys() == state.keys()


def test_ftlab_apply_dispatches_lora_and_dora(minilm):
    base, _, _, _ = case("conv1d", minilm)
    plain = ftlab.apply(copy.deepcopy(base), "lora", r=2)
    dora = ftlab.apply(copy.deepcopy(base), "dora", r=2)
    assert not any("magnitude" in name for name, _ in plain.named_parameters())
    assert any("lora_magnitude_vector.default" in name for name, _ in dora.named_parameters())


def assert_untouched(model, state, types):
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert [type(m) for m in model.modules()] == types
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("options, error, message", [
    ({"r": 0}, ValueError, "r must be at least 1"),
    ({"r": -2}, ValueError, "r must be at least 1"),
    ({"r": 2.5}, TypeError, "r must be a whole number"),
    ({"lora_alpha": float("nan")}, ValueError, "lora_alpha must be a finite number"),
    ({"lora_dropout": 1.5}, ValueError, "lora_dropout"),
    ({"init_lora_weights": "pissa"}, ValueError, "init_lora_weights"),
    ({"targets": ["c_atn"]}, ValueError, "c_attn"),
    ({"targets": ["c_attn", "ln_1"]}, TypeError, "'transformer.h.0.ln_1': lora cannot adapt a LayerNorm"),
    ({"modules_to_save": ["lm_haed"]}, ValueError, "lm_head"),
])
def test_bad_lora_options_raise_and_leave_the_model_untouched(options, error, message):
    model = tiny_gpt2()
    state = copy.deepcopy(model.state_dict())
    types = [type(m) for m in model.modules()]
    with pytest.raises(error, match=message):
        lora.apply(model, **options)
    assert_untouched(model, state, types)


def test_rank_warning_for_conv_counts_the_kernel():
    # layer1's 3x3 convs: A sees 64 * 9 inputs, B gives 64 outputs, so ranks above 64 add nothing
    with pytest.warns(UserWarning, match=r"r=65 on 'layer1.0.conv1' \(576 inputs, 64 outputs\)"):
        lora.apply(copy.deepcopy(resnet18_float64()), r=65)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lora.apply(copy.deepcopy(resnet18_float64()), r=64)


# ---------------------------------------------------------------- nn.MultiheadAttention (lora_mha.py)

def attention_pair():
    """(float64 nn.MultiheadAttention, the same with LoRA and random B), input (L, N, E)."""
    torch.manual_seed(0)
    base = torch.nn.MultiheadAttention(12, 3).double().eval()
    model = torch.nn.Sequential(copy.deepcopy(base))
    lora.apply(model, targets=["0"], r=4, lora_alpha=8, init_lora_weights=False)
    x = torch.randn(5, 2, 12, dtype=torch.float64)
    return base, model, x


def test_lora_on_multihead_attention_is_the_attention_with_both_projections_changed():
    base, model, x = attention_pair()
    layer = model[0]
    reference = copy.deepcopy(base)
    with torch.no_grad():
        reference.in_proj_weight += 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight  # (3E, E)
        out = layer.base_layer.out_proj
        reference.out_proj.weight += 2.0 * out.lora_B["default"].weight @ out.lora_A["default"].weight  # (E, E)
        expected = reference(x, x, x)[0]
        assert max_diff(expected, base(x, x, x)[0]) > 1e-3
        assert max_diff(layer(x, x, x)[0], expected) < TOL
        ftlab.merge(model)
        assert max_diff(layer(x, x, x)[0], expected) < TOL
        ftlab.unmerge(model)
        with ftlab.disable_adapters(model):
            assert max_diff(layer(x, x, x)[0], base(x, x, x)[0]) < 1e-12
    (layer(x, x, x)[0] ** 2).sum().backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == 4 and all(p.grad is not None and p.grad.abs().max() > 0 for p in trainable)
    plain = ftlab.merge_and_unload(model)
    assert type(plain[0]) is torch.nn.MultiheadAttention and type(plain[0].out_proj) is not lora.LoraLayer
    with torch.no_grad():
        assert max_diff(plain[0](x, x, x)[0], expected) < TOL


def test_peft_adds_out_projs_change_twice_so_export_and_import_are_refused(tmp_path, untouched):
    # huggingface/peft#3774: when peft computes W_out + 2 * delta, lift the refusal in lora.LORA_FORMAT.broken
    base, model, x = attention_pair()
    with pytest.raises(ValueError, match="'0' is a MultiheadAttention: peft 0.21.2 adds the change.*peft#3774"):
        ftlab.export_peft(model, tmp_path / "ours")
    peft_model = get_peft_model(torch.nn.Sequential(copy.deepcopy(base)),
                                LoraConfig(target_modules=["0"], r=4, lora_alpha=8, init_lora_weights=False))
    peft_layer, layer = peft_model.base_model.model[0], model[0]
    with torch.no_grad():
        for ours, theirs in [(layer, peft_layer), (layer.base_layer.out_proj, peft_layer.base_layer.out_proj)]:
            theirs.lora_A["default"].weight.copy_(ours.lora_A["default"].weight)
            theirs.lora_B["default"].weight.copy_(ours.lora_B["default"].weight)
        doubled = copy.deepcopy(model)
        out = doubled[0].base_layer.out_proj
        out.lora_B["default"].weight.mul_(2)
        theirs = peft_layer(x, x, x)[0]
        assert max_diff(theirs, doubled[0](x, x, x)[0]) < TOL  # peft: out_proj's change twice
        assert max_diff(theirs, layer(x, x, x)[0]) > 1e-3
    peft_model.save_pretrained(tmp_path / "peft")
    fresh = torch.nn.Sequential(copy.deepcopy(base))
    check = untouched(fresh)
    with pytest.raises(ValueError, match="peft#3774"):
        ftlab.import_peft(fresh, tmp_path / "peft")
    check()
