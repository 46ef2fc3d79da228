"""The shared machinery of weight-space methods (ftlab/methods/base.py): target finding with
peft's rules, layer kinds, wrapping, and the model-level adapter functions."""
import copy
from dataclasses import dataclass

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

import ftlab
from ftlab.methods import base, lora
from ftlab.methods.base import (
    RESNET_STAGE_CONVS,
    TunedLayer,
    active_adapter,
    adapter_names,
    find_targets,
    layer_features,
    tuned_layers,
)

from builders import minilm_classifier as minilm
from builders import resnet18
from builders import tiny_gpt2 as build_tiny_gpt2


def tiny_gpt2():
    return build_tiny_gpt2().double()


def snapshot(model):
    """Everything a failed call must leave as it was: state, module classes, requires_grad."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return state, [type(m) for m in model.modules()], [p.requires_grad for p in model.parameters()]


def assert_same(model, snap):
    state, types, grads = snap
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert [type(m) for m in model.modules()] == types
    assert [p.requires_grad for p in model.parameters()] == grads


def gpt2_logits(model, seed=0):
    torch.manual_seed(seed)
    return model(torch.randint(0, 500, (2, 10))).logits


@pytest.mark.parametrize("build, targets, task_type", [
    (minilm, ["query", "value"], None),
    (minilm, ["attention.output.dense"], None),
    (minilm, r".*\.layer\.[0-2]\.attention\.self\.(query|key)", None),
    (minilm, "all-linear", "SEQ_CLS"),
    (tiny_gpt2, ["c_attn"], None),
    (tiny_gpt2, ["attn.c_proj", "c_fc"], None),
    (tiny_gpt2, "all-linear", None),
    (resnet18, RESNET_STAGE_CONVS, None),
])
def test_targets_select_the_same_modules_as_peft(build, targets, task_type):
    model = build()
    ref = get_peft_model(copy.deepcopy(model), LoraConfig(target_modules=targets, task_type=task_type))
    assert sorted(find_targets(model, targets)) == sorted(ref.base_model.targeted_module_names)


def test_suffix_targets_match_whole_name_components_only():
    model = tiny_gpt2()
    assert find_targets(model, ["attn"]) == ["transformer.h.0.attn", "transformer.h.1.attn"]
    with pytest.raises(ValueError, match="c_attn"):
        find_targets(model, ["_attn"])


@pytest.mark.parametrize("targets, candidate", [
    (["qurey"], "query"),
    (["query", "vlaue"], "value"),
    (r".*\.qeury", "query"),
])
def test_targets_that_match_nothing_raise_with_close_candidates(targets, candidate):
    with pytest.raises(ValueError, match=f"match no module.*{candidate}"):
        find_targets(minilm(), targets)


def test_default_targets_follow_the_model_family():
    assert base.model_family(minilm()) == "bert"
    assert find_targets(minilm()) == find_targets(minilm(), ["query", "value"])
    assert len(find_targets(minilm())) == 12
    assert find_targets(tiny_gpt2()) == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    convs = [name for name, m in resnet18().named_modules() if isinstance(m, nn.Conv2d) and name.startswith("layer")]
    assert find_targets(resnet18()) == convs and len(convs) == 19
    with pytest.raises(ValueError, match="no default lora targets.*all-linear"):
        find_targets(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))


def test_all_linear_leaves_out_the_output_head():
    gpt2_names = find_targets(tiny_gpt2(), "all-linear")
    assert "lm_head" not in gpt2_names and "transformer.h.0.mlp.c_fc" in gpt2_names
    bert_names = find_targets(minilm(), "all-linear")
    assert "classifier" not in bert_names and "bert.pooler.dense" in bert_names
    assert len(bert_names) == 6 * 6 + 1  # six linear layers per block, and the pooler
    with pytest.raises(ValueError, match="no linear layer outside the output head"):
        find_targets(resnet18(), "all-linear")  # its only linear layer is the fc head


def test_layer_features_of_supported_kinds_and_typeerror_for_others():
    assert layer_features(nn.Linear(3, 5)) == (3, 5)
    assert layer_features(Conv1D(5, 3)) == (3, 5)  # Conv1D(nf=out, nx=in), weight (in, out)
    assert layer_features(nn.Conv2d(3, 5, 3)) == (3, 5)
    assert layer_features(nn.Conv3d(3, 6, 3, groups=3)) == (3, 6)
    assert layer_features(nn.Embedding(100, 8)) == (100, 8)
    assert layer_features(nn.MultiheadAttention(8, 2)) == (8, 8)
    with pytest.raises(TypeError, match="cannot adapt a LayerNorm.*nn.Linear"):
        layer_features(nn.LayerNorm(4))
    with pytest.raises(TypeError, match="padding_mode='circular'"):
        layer_features(nn.Conv2d(3, 6, 3, padding=1, padding_mode="circular"))


def test_weight_out_in_transposes_conv1d_and_embeddings_only():
    conv1d, linear, embedding = Conv1D(5, 3), nn.Linear(3, 5), nn.Embedding(3, 5)
    assert base.weight_out_in(conv1d).shape == (5, 3) == base.weight_out_in(linear).shape
    assert base.weight_out_in(embedding).shape == (5, 3)  # (dim, num_embeddings): a token picks a column
    assert base.weight_out_in(nn.Conv1d(4, 6, 3, groups=2)).shape == (6, 2, 3)
    t = torch.randn(5, 3)
    assert torch.equal(base.weight_out_in(conv1d, base.weight_out_in(conv1d, t)), t)


@pytest.mark.parametrize("layer, x", [
    (nn.Linear(3, 5), torch.randn(2, 3)),
    (Conv1D(5, 3), torch.randn(2, 3)),
    (nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2), torch.randn(2, 4, 9)),
    (nn.Conv3d(2, 4, 3, dilation=2, padding=2), torch.randn(1, 2, 5, 5, 5)),
    (nn.Embedding(10, 4, padding_idx=0), torch.tensor([[0, 3, 9]])),
])
def test_apply_weight_is_the_layer_without_its_bias(layer, x):
    bias = getattr(layer, "bias", None)
    expected = layer(x) if bias is None else layer(x) - base.per_output(layer, bias)
    assert torch.allclose(base.apply_weight(layer, x, base.weight_out_in(layer)), expected, atol=1e-6)


def test_replace_module_and_freeze():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 3)))
    new = nn.Linear(2, 3)
    old = base.replace_module(model, "1.0", new)
    assert model[1][0] is new and isinstance(old, nn.Linear) and old is not new
    base.freeze(model)
    assert not any(p.requires_grad for p in model.parameters())


def test_a_failing_apply_validates_every_layer_first_and_leaves_the_model_untouched():
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4, bias=False))
    snap = snapshot(model)
    with pytest.raises(ValueError, match="'1': lora_bias=True merges B's bias"):
        lora.apply(model, targets=["0", "1"], lora_bias=True)  # fits layer 0, not layer 1
    assert_same(model, snap)


def test_a_rank_above_what_a_layer_can_use_warns_and_says_why():
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4))
    with pytest.warns(UserWarning, match=r"r=8 on '1' \(16 inputs, 4 outputs\).*4 of the ranks only add parameters"):
        lora.apply(model, targets=["0", "1"], r=8)
    assert model[1].lora_A["default"].weight.shape == (8, 16)


@dataclass
class ScaleOptions:
    value: float = 1.0


class Scale(TunedLayer):
    """A minimal method for the tests: the output times a learned per-output factor, W' = diag(s) W."""

    method = "scale"
    options_class = ScaleOptions
    kinds = (nn.Linear,)

    def __init__(self, base_layer):
        super().__init__(base_layer)
        self.scale = nn.ParameterDict()

    def build(self, adapter, options):
        self.scale[adapter] = nn.Parameter(torch.full_like(self.base_layer.bias, options.value))

    def forward(self, x):
        adapter = self.adapter_in_use()
        if adapter is None:
            return self.base_layer(x)
        return (self.base_layer(x) - self.base_layer.bias) * self.scale[adapter] + self.base_layer.bias

    def delta_weight(self, adapter):
        return (self.scale[adapter][:, None] - 1) * self.base_layer.weight


def test_a_new_method_plugs_in_with_a_small_tuned_subclass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    base_out = model(x)
    base.inject(model, [Scale], ScaleOptions(value=2.0), targets=["0"])
    assert isinstance(model[0], Scale)
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["0.scale.default"]
    adapted = model(x)
    assert (adapted - base_out).abs().max() > 1e-3
    ftlab.merge(model)
    assert (model(x) - adapted).abs().max() < 1e-12
    plain = ftlab.merge_and_unload(model)
    assert isinstance(plain[0], nn.Linear) and (plain(x) - adapted).abs().max() < 1e-12


def test_one_method_per_layer():
    model = lora.apply(tiny_gpt2(), r=2)
    snap = snapshot(model)
    with pytest.raises(TypeError, match="already carries a 'lora' adapter"):
        base.inject(model, [Scale], ScaleOptions(), targets=["c_attn"], adapter_name="other")
    assert_same(model, snap)


def test_add_set_and_delete_adapters():
    base = tiny_gpt2()
    base_out = gpt2_logits(base)
    model = lora.apply(copy.deepcopy(base), r=2, init_lora_weights=False)
    first = gpt2_logits(model)
    ftlab.add_adapter(model, "second", r=4, init_lora_weights=False, targets=["c_attn", "c_fc"])
    assert adapter_names(model) == ["default", "second"]
    assert active_adapter(model) == "default"  # adding does not switch, as in peft
    assert torch.equal(gpt2_logits(model), first)
    assert all(".default." in n for n, p in model.named_parameters() if p.requires_grad)

    ftlab.set_adapter(model, "second")
    second = gpt2_logits(model)
    assert (second - first).abs().max() > 1e-3
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".second." in n for n in trainable) and any("c_fc" in n for n in trainable)

    ftlab.delete_adapter(model, "second")
    assert active_adapter(model) == "default"
    assert (gpt2_logits(model) - first).abs().max() < 1e-12
    assert isinstance(model.transformer.h[0].mlp.c_fc, Conv1D)  # no adapter left there: plain again
    ftlab.delete_adapter(model, "default")
    assert not tuned_layers(model)
    assert (gpt2_logits(model) - base_out).abs().max() < 1e-12


@pytest.mark.parametrize("call, message", [
    (lambda m: ftlab.add_adapter(m, "default", r=2), "already exists"),
    (lambda m: ftlab.set_adapter(m, "nope"), "no adapter called 'nope'"),
    (lambda m: ftlab.delete_adapter(m, "nope"), "no adapter called 'nope'"),
    (lambda m: ftlab.unmerge(m), "nothing to unmerge"),
    (lambda m: lora.apply(m, adapter_name="a.b"), "without '.'"),
])
def test_bad_adapter_calls_raise_and_leave_the_model_untouched(call, message):
    model = lora.apply(tiny_gpt2(), r=2, init_lora_weights=False)
    snap = snapshot(model)
    with pytest.raises(ValueError, match=message):
        call(model)
    assert_same(model, snap)


def test_merging_twice_raises_and_leaves_the_merged_weights():
    model = lora.apply(tiny_gpt2(), r=2, init_lora_weights=False)
    ftlab.merge(model)
    snap = snapshot(model)
    for call in (ftlab.merge, lambda m: ftlab.add_adapter(m, "other"), lambda m: ftlab.set_adapter(m, "default")):
        with pytest.raises(ValueError, match="already merged|unmerge"):
            call(model)
        assert_same(model, snap)


@pytest.mark.parametrize("merged", [False, True])
def test_disable_adapters_gives_exactly_the_base_output(merged):
    base = tiny_gpt2()
    model = lora.apply(copy.deepcopy(base), r=2, init_lora_weights=False, modules_to_save=["ln_f"])
    with torch.no_grad():
        model.transformer.ln_f.modules_to_save["default"].weight.mul_(1.5)
    adapted = gpt2_logits(model)
    if merged:
        ftlab.merge(model)
    with ftlab.disable_adapters(model):
        assert (gpt2_logits(model) - gpt2_logits(base)).abs().max() < 1e-12
    assert (gpt2_logits(model) - adapted).abs().max() < 1e-12
    assert all((layer.merged is not None) == merged for _, layer in tuned_layers(model) if layer.mergeable)


def test_merge_and_unload_gives_the_original_classes_and_the_adapted_output():
    base = tiny_gpt2()
    model = lora.apply(copy.deepcopy(base), r=2, init_lora_weights=False, modules_to_save=["ln_f"])
    with torch.no_grad():
        model.transformer.ln_f.modules_to_save["default"].weight.mul_(1.5)
    adapted = gpt2_logits(model)
    plain = ftlab.merge_and_unload(model)
    assert [type(m) for m in plain.modules()] == [type(m) for m in base.modules()]
    assert list(plain.state_dict()) == list(base.state_dict())
    assert (gpt2_logits(plain) - adapted).abs().max() < 1e-12


def test_injected_layers_keep_the_model_in_eval_mode(tiny_gpt2):
    import ftlab

    model = tiny_gpt2.eval()
    ftlab.apply(model, "lora", r=2, lora_dropout=0.5)
    assert not any(m.training for m in model.modules())
    model.train()
    ftlab.add_adapter(model, "second", r=2, lora_dropout=0.5)
    assert all(m.training for m in model.modules())
