"""Bad or unusual input to the methods: a clear error raised before anything changes, or a correct result.

The method cases of issue #15: stacking two methods, disable_adapters on prefix and prompt tuning,
degenerate options (no targets, NaN, a string where a number belongs, a broken regex), LoRA on
nn.MultiheadAttention, and the rounding of merge -> unmerge in low precision. Each refusal test
checks the message and that the model is untouched (the ``untouched`` fixture).
"""
import copy
import warnings

import pytest
import torch
from torch import nn

import ftlab
from ftlab.methods import lora

from builders import tiny_bert


def gpt2_logits(model, seed=0):
    torch.manual_seed(seed)
    return model(input_ids=torch.randint(0, 500, (2, 10))).logits


def bert_logits(model, tokenizer):
    batch = tokenizer(["a fine film", "a dull one"], return_tensors="pt", padding=True)
    return model(**batch).logits


# ---------------------------------------------------------------- stacking methods: refused, with how to combine

@pytest.mark.parametrize("first, second", [
    ("lora", "prefix"), ("lora", "prompt"), ("ia3", "bitfit"), ("loha", "freeze"), ("lora", "full"),
])
def test_a_second_method_that_would_freeze_or_bypass_the_adapters_is_refused(first, second, tiny_gpt2, untouched):
    model = ftlab.apply(tiny_gpt2, first, **({"targets": ["c_attn"]} if first != "ia3" else {}))
    check = untouched(model)
    with pytest.raises(ValueError, match=f"already carries '{first}' adapters.*merge_and_unload.*{second}"):
        ftlab.apply(model, second)
    check()


@pytest.mark.parametrize("first, second", [("prefix", "lora"), ("prompt", "ia3"), ("prefix", "prompt"),
                                           ("prompt", "bitfit")])
def test_any_method_on_a_prefix_or_prompt_tuned_model_is_refused(first, second, tiny_gpt2, untouched):
    model = ftlab.apply(tiny_gpt2, first, num_virtual_tokens=4)
    check = untouched(model)
    with pytest.raises(ValueError, match=f"already wrapped by {type(model).__name__}.*one method at a time"):
        ftlab.apply(model, second)
    check()


def test_methods_combine_once_the_first_is_merged_into_the_weights(tiny_gpt2):
    model = ftlab.apply(tiny_gpt2, "lora", targets=["c_attn"], init_lora_weights=False)
    with torch.no_grad():
        adapted = gpt2_logits(model)
    plain = ftlab.merge_and_unload(model)
    prefixed = ftlab.apply(plain, "prefix", num_virtual_tokens=4)
    with torch.no_grad(), ftlab.disable_adapters(prefixed):  # the merged LoRA is now the base model
        assert (gpt2_logits(prefixed) - adapted).abs().max() < 1e-5
    assert [n for n, p in prefixed.named_parameters() if p.requires_grad] == ["embedding.weight"]


# ---------------------------------------------------------------- disable_adapters gives the base model

@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_disable_adapters_on_prefix_and_prompt_tuned_gpt2_gives_the_base_output(method, tiny_gpt2):
    base = copy.deepcopy(tiny_gpt2)
    model = ftlab.apply(tiny_gpt2, method, num_virtual_tokens=5)
    with torch.no_grad():
        adapted = gpt2_logits(model)
        assert (adapted - gpt2_logits(base)).abs().max() > 1e-3
        with ftlab.disable_adapters(model):
            assert torch.equal(gpt2_logits(model), gpt2_logits(base))
        assert torch.equal(gpt2_logits(model), adapted)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_disable_adapters_on_prefix_and_prompt_tuned_minilm_gives_the_base_output(method, minilm):
    base, tokenizer = minilm
    model = ftlab.apply(copy.deepcopy(base), method, num_virtual_tokens=5, modules_to_save=["classifier"])
    with torch.no_grad():
        model.base_model.classifier.modules_to_save["default"].weight.mul_(1.5)  # the trained head copy
        adapted = bert_logits(model, tokenizer)
        with ftlab.disable_adapters(model):
            assert torch.equal(bert_logits(model, tokenizer), bert_logits(base, tokenizer))
        assert torch.equal(bert_logits(model, tokenizer), adapted)


def test_disable_adapters_refuses_when_the_adapter_trains_the_base_biases(tiny_gpt2):
    model = ftlab.apply(tiny_gpt2, "lora", targets=["c_attn"], bias="lora_only")
    with pytest.raises(ValueError, match="trains the base model's own biases.*bias='none'"), \
            ftlab.disable_adapters(model):
        pass


# ---------------------------------------------------------------- degenerate options: errors before any change

@pytest.mark.parametrize("method, options, error, message", [
    ("lora", {"targets": []}, ValueError, r"targets=\[\] selects no module, so nothing would be trained"),
    ("ia3", {"targets": []}, ValueError, r"targets=\[\] selects no module"),
    ("lora", {"lora_alpha": float("nan")}, ValueError, "lora_alpha must be a finite number, got nan"),
    ("lora", {"lora_alpha": float("inf")}, ValueError, "lora_alpha must be a finite number, got inf"),
    ("loha", {"alpha": float("nan")}, ValueError, "alpha must be a finite number"),
    ("lora", {"lora_dropout": float("nan")}, ValueError, "lora_dropout must be a finite number"),
    ("lora", {"lora_dropout": "0.1"}, TypeError, "lora_dropout must be a number, got '0.1'"),
    ("lokr", {"rank_dropout": "0.5"}, TypeError, "rank_dropout must be a number"),
    ("lora", {"r": "8"}, TypeError, "r must be a whole number, got '8'"),
    ("lora", {"targets": "c_attn["}, ValueError, r"targets='c_attn\[' is not a valid regular expression"),
    ("lora", {"targets": "c_attn"}, ValueError,
     r"a string is a regex that must match the whole module name .* as a list, targets=\['c_attn'\] would select"),
    ("lora", {"modules_to_save": []}, ValueError, r"modules_to_save must be a non-empty list"),
    ("lora", {"rank_pattern": ["c_attn", 4]}, TypeError, "the pattern for r must be a dict"),
    ("lora", {"rank_pattern": {"c_attn": 0}}, ValueError, "'transformer.h.0.attn.c_attn': r must be at least 1"),
    ("lora", {"targets": "transformer.h.0.attn.c_attn", "layers_to_transform": [0]}, ValueError,
     "layers_to_transform works with a list of targets"),
    ("lora", {"targets": ["c_attn"], "layers_to_transform": ["1"]}, TypeError,
     "layers_to_transform must be a whole number, got '1'"),
    ("lora", {"targets": ["c_attn"], "layers_to_transform": [5]}, ValueError,
     r"keeps none of the 2 targets; their block numbers are \[0, 1\]"),
    ("lora", {"lora_alpah": 16}, TypeError, "lora has no option 'lora_alpah'; did you mean 'lora_alpha'"),
    ("lora", {"target_parameters": ["c_attn.weight"]}, ValueError,
     "peft's option 'target_parameters' is not supported by ftlab: .*name the module in targets"),
    ("dora", {"use_dora": False}, TypeError, "dora has no option 'use_dora'"),
    ("adapter", {"variant": "houlsbi"}, ValueError, "variant must be one of 'houlsby', 'pfeiffer'"),
])
def test_degenerate_options_raise_before_anything_changes(method, options, error, message, tiny_gpt2, untouched):
    check = untouched(tiny_gpt2)
    with pytest.raises(error, match=message):
        ftlab.apply(tiny_gpt2, method, **options)
    check()


def test_an_unknown_method_names_the_close_one(tiny_gpt2, untouched):
    check = untouched(tiny_gpt2)
    with pytest.raises(ValueError, match="unknown method 'lroa' \\(did you mean 'lora'"):
        ftlab.apply(tiny_gpt2, "lroa")
    check()


def test_a_contradicting_fan_in_fan_out_only_warns_as_in_peft(tiny_gpt2):
    with pytest.warns(UserWarning, match=r"fan_in_fan_out=False but 'transformer.h.0.attn.c_attn' stores .*\(in, "):
        ftlab.apply(tiny_gpt2, "lora", targets=["c_attn"], fan_in_fan_out=False)


# ---------------------------------------------------------------- nn.MultiheadAttention

def encoder_layer():
    torch.manual_seed(0)
    return nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).double().eval()


def test_all_linear_on_a_transformer_encoder_layer_adapts_the_attention_and_runs():
    layer = encoder_layer()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    with torch.no_grad():
        before = layer(x)
    lora.apply(layer, targets="all-linear", init_lora_weights=False)
    assert type(layer.self_attn).__name__ == "LoraMultiheadAttention"
    with torch.no_grad():
        assert (layer(x) - before).abs().max() > 1e-3  # in_proj and out_proj changes both act
        with ftlab.disable_adapters(layer):
            assert (layer(x) - before).abs().max() < 1e-12


@pytest.mark.parametrize("method", ["lora", "ia3", "loha"])
def test_adapted_transformer_layers_give_the_same_output_on_pytorchs_inference_fast_path(method):
    # in eval mode without gradients nn.TransformerEncoderLayer reads every weight instead of calling its layers
    layer = encoder_layer()
    targets = "all-linear" if method == "lora" else ["linear1", "linear2"]
    ftlab.apply(layer, method, targets=targets, **({"init_weights": False} if method == "loha" else {}))
    perturbed = [p for p in layer.parameters() if p.requires_grad]
    with torch.no_grad():
        for p in perturbed:
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    with torch.no_grad():
        fast = layer(x)
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            slow = layer(x)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
        with ftlab.disable_adapters(layer):
            plain = layer(x)
    assert (slow - plain).abs().max() > 1e-3 and (fast - slow).abs().max() < 1e-10


@pytest.mark.parametrize("method, options, error, message", [
    ("lora", {"targets": ["self_attn.out_proj"]}, TypeError,
     "'self_attn.out_proj' is nn.MultiheadAttention's output projection.*target the attention module 'self_attn'"),
    ("ia3", {"targets": "all-linear"}, TypeError, "'self_attn': ia3 cannot adapt a MultiheadAttention"),
    ("dora", {"targets": ["self_attn"]}, TypeError, "'self_attn': dora cannot adapt a MultiheadAttention"),
])
def test_adapters_that_nn_multiheadattention_would_ignore_are_refused_before_any_change(method, options, error,
                                                                                        message, untouched):
    layer = encoder_layer()
    check = untouched(layer)
    with pytest.raises(error, match=message):
        ftlab.apply(layer, method, **options)
    check()


# ---------------------------------------------------------------- merge that cannot be done, merge precision

def test_a_merge_that_one_layer_cannot_do_changes_no_layer(untouched):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.Linear(8, 2))
    lora.apply(model, targets=["0", "2"], r=2, init_lora_weights=False)
    check = untouched(model)
    with pytest.raises(TypeError, match="'0': LoRA on a grouped convolution \\(groups=2\\).*cannot be merged"):
        ftlab.merge(model)
    check()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_merge_then_unmerge_is_exact_in_float32_and_64_and_within_one_ulp_in_16_bits(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64)).to(dtype)
    lora.apply(model, targets=["0"], r=8, init_lora_weights=False)
    with torch.no_grad():
        model[0].lora_B["default"].weight.normal_(std=0.05)
    weight = model[0].base_layer.weight.detach().clone()
    merged_max = (weight.double() + model[0].delta_weight("default").double()).abs().max()
    ftlab.unmerge(ftlab.merge(model))
    error = (model[0].base_layer.weight.double() - weight.double()).abs()
    bound = torch.finfo(dtype).eps * max(weight.double().abs().max(), merged_max)  # one unit in the last place
    print(f"{dtype}: max drift {error.max():.2e} ({(error > 0).double().mean():.0%} of the weights moved), "
          f"bound {bound:.2e}")
    assert error.max() <= bound
    if dtype in (torch.float64, torch.float32):
        assert error.max() <= 4 * torch.finfo(dtype).eps * weight.double().abs().max()
    else:
        assert error.max() > 0  # 16 bits: the round trip does move weights, as the merge docstring says


def test_every_methods_layer_built_directly_with_its_defaults_runs():
    from ftlab.methods.adapter import AdapterLayer
    from ftlab.methods.dora import DoraEmbedding, DoraLayer
    from ftlab.methods.ia3 import IA3Layer
    from ftlab.methods.loha import LoHaLayer
    from ftlab.methods.lokr import LoKrLayer
    from ftlab.methods.lora import LoraLayer
    from ftlab.methods.lora_embedding import LoraEmbedding
    from ftlab.methods.lora_mha import LoraMultiheadAttention

    x, ids, seq = torch.randn(3, 32), torch.tensor([[1, 2, 3]]), torch.randn(4, 2, 32)
    cases = [(LoraLayer, nn.Linear(32, 16), x), (DoraLayer, nn.Linear(32, 16), x), (LoHaLayer, nn.Linear(32, 16), x),
             (LoKrLayer, nn.Linear(32, 16), x), (IA3Layer, nn.Linear(32, 16), x), (AdapterLayer, nn.Linear(32, 32), x),
             (LoraEmbedding, nn.Embedding(40, 16), ids), (DoraEmbedding, nn.Embedding(40, 16), ids),
             (LoraLayer, nn.Conv1d(32, 16, 3), torch.randn(2, 32, 7))]
    for cls, base_layer, inputs in cases:
        layer = cls(base_layer)
        layer.add("a")
        assert layer.adapter_config["a"] == cls.options_class()  # every option stored, with its default
        with torch.no_grad():
            assert torch.allclose(layer(inputs), base_layer(inputs), atol=1e-6)  # starts as the base layer
    layer = LoraMultiheadAttention(nn.MultiheadAttention(32, 4))
    layer.add("a", r=2)
    assert layer(seq, seq, seq)[0].shape == (4, 2, 32)


def test_a_lora_layer_built_directly_takes_keyword_options():
    layer = lora.LoraLayer(nn.Linear(8, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer.add("a", r=2)
    assert layer.adapter_config["a"] == lora.LoraOptions(r=2)
    assert layer(torch.randn(5, 8)).shape == (5, 4)
    with pytest.raises(ValueError, match="adapter 'a' already exists on this layer"):
        layer.add("a", r=2)


def test_bert_sized_model_keeps_eval_mode_through_a_refused_stack(untouched):
    model = tiny_bert()
    ftlab.apply(model, "lora")
    check = untouched(model)
    with pytest.raises(ValueError, match="already carries 'lora' adapters"):
        ftlab.apply(model, "bitfit")
    check()
    assert not any(m.training for m in model.modules())
