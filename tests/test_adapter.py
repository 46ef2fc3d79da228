"""Bottleneck adapters (ftlab/methods/adapter.py) on BERT, GPT-2 and ResNet."""
import copy

import pytest
import torch
from torch import nn

import ftlab
from ftlab.measure import count_parameters
from ftlab.methods import adapter
from ftlab.methods.base import disable_adapters, tuned_layers
from ftlab.train import fit

from builders import resnet18


def case(kind, minilm, tiny_gpt2):
    """(float64 model, input batch, output function, head name) of one family."""
    if kind == "bert":
        model, tokenizer = minilm
        batch = dict(tokenizer(["the film was great", "a truly awful meal, honestly"], padding=True,
                               return_tensors="pt"))
        return model.eval().double(), batch, lambda m, b: m(**b).logits, "classifier"
    if kind == "gpt2":
        batch = {"input_ids": torch.randint(0, 500, (2, 9))}
        return tiny_gpt2.double(), batch, lambda m, b: m(**b).logits, "lm_head"
    return resnet18().double(), torch.randn(2, 3, 32, 32, dtype=torch.float64), lambda m, x: m(x), "fc"


def adapter_size(d: int, reduction_factor: int = 16) -> int:
    b = d // reduction_factor
    return 2 * d * b + b + d


@pytest.mark.parametrize("kind", ["bert", "gpt2", "resnet"])
@pytest.mark.parametrize("variant", ["houlsby", "pfeiffer"])
def test_adapters_start_with_the_base_models_exact_output(kind, variant, minilm, tiny_gpt2):
    model, batch, output, _ = case(kind, minilm, tiny_gpt2)
    with torch.no_grad():
        before = output(model, batch)
        ftlab.apply(model, "adapter", variant=variant)
        assert torch.equal(output(model, batch), before)


@pytest.mark.parametrize("kind, variant, places", [
    ("bert", "houlsby", [f"bert.encoder.layer.{i}.{sub}.dense" for i in range(6)
                         for sub in ("attention.output", "output")]),
    ("bert", "pfeiffer", [f"bert.encoder.layer.{i}.output.dense" for i in range(6)]),
    ("gpt2", "houlsby", ["transformer.h.0.attn", "transformer.h.0.mlp", "transformer.h.1.attn", "transformer.h.1.mlp"]),
    ("gpt2", "pfeiffer", ["transformer.h.0.mlp", "transformer.h.1.mlp"]),
    ("resnet", "houlsby", [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]),
])
def test_adapters_sit_after_attention_and_feed_forward_as_the_variant_says(kind, variant, places, minilm, tiny_gpt2):
    model, *_ = case(kind, minilm, tiny_gpt2)
    ftlab.apply(model, "adapter", variant=variant)
    assert [name for name, _ in tuned_layers(model)] == places


@pytest.mark.parametrize("kind, expected", [
    ("bert", 12 * adapter_size(384) + (384 * 2 + 2)),
    ("gpt2", 4 * adapter_size(64)),
    ("resnet", sum(2 * adapter_size(c) for c in (64, 128, 256, 512)) + 512 * 10 + 10),
])
def test_only_adapter_and_head_parameters_train(kind, expected, minilm, tiny_gpt2):
    model, batch, output, head = case(kind, minilm, tiny_gpt2)
    ftlab.apply(model, "adapter", modules_to_save=[head] if kind != "gpt2" else None)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert all(".bottleneck.default." in name or ".modules_to_save.default." in name for name in trainable)
    assert count_parameters(model)["trainable"] == expected


def test_training_moves_adapters_only_and_disabling_them_gives_the_base_output(tiny_gpt2):
    model = tiny_gpt2.double()
    batch = {"input_ids": torch.randint(0, 500, (4, 12))}
    batch["labels"] = batch["input_ids"]
    with torch.no_grad():
        base_logits = model(input_ids=batch["input_ids"]).logits
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    ftlab.apply(model, "adapter", variant="houlsby")
    fit(model, [batch], num_steps=3, lr=1e-2, device="cpu", progress=False)
    model.eval()
    state = model.state_dict()
    for name, value in frozen.items():
        wrapped = name.replace(".attn.", ".attn.base_layer.").replace(".mlp.", ".mlp.base_layer.")
        assert torch.equal(state[wrapped if wrapped in state else name], value)
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=batch["input_ids"]).logits, base_logits)
        with disable_adapters(model):
            assert torch.equal(model(input_ids=batch["input_ids"]).logits, base_logits)


def test_reduction_factor_and_non_linearity_shape_the_bottleneck(tiny_gpt2):
    ftlab.apply(tiny_gpt2, "adapter", variant="pfeiffer", reduction_factor=8, non_linearity="gelu")
    bottleneck = tiny_gpt2.transformer.h[0].mlp.bottleneck["default"]
    assert bottleneck.down.weight.shape == (8, 64) and bottleneck.up.weight.shape == (64, 8)
    assert isinstance(bottleneck.act, nn.GELU)
    assert not bottleneck.up.weight.any() and not bottleneck.up.bias.any()


def test_default_non_linearity_is_swish_for_houlsby_and_relu_for_pfeiffer(tiny_gpt2):
    houlsby = ftlab.apply(copy.deepcopy(tiny_gpt2), "adapter", variant="houlsby")
    pfeiffer = ftlab.apply(copy.deepcopy(tiny_gpt2), "adapter", variant="pfeiffer")
    assert isinstance(houlsby.transformer.h[0].mlp.bottleneck["default"].act, nn.SiLU)
    assert isinstance(pfeiffer.transformer.h[0].mlp.bottleneck["default"].act, nn.ReLU)


@pytest.mark.parametrize("options, error, message", [
    ({"reduction_factor": 0}, ValueError, "reduction_factor must be at least 1"),
    ({"reduction_factor": 65}, ValueError, "reduction_factor must be an int from 1 to 64"),
    ({"reduction_factor": 2.5}, TypeError, "reduction_factor must be a whole number"),
    ({"non_linearity": "sigmoid"}, ValueError, "non_linearity must be one of"),
    ({"variant": "lora"}, ValueError, "variant must be one of"),
    ({"targets": ["ln_1"]}, TypeError, "cannot place an adapter after a LayerNorm"),
    ({"targets": ["mlp", "mpl"]}, ValueError, "mlp"),
    ({"modules_to_save": ["lm_haed"]}, ValueError, "lm_head"),
])
def test_bad_adapter_options_raise_and_leave_the_model_untouched(options, error, message, tiny_gpt2, untouched):
    check = untouched(tiny_gpt2)
    with pytest.raises(error, match=message):
        adapter.apply(tiny_gpt2, **options)
    check()


def test_module_without_expected_sublayers_raises_and_leaves_bert_untouched(minilm, untouched):
    model, _ = minilm
    check = untouched(model)
    with pytest.raises(TypeError, match="cannot place an adapter after a BertSelfAttention"):
        adapter.apply(model, targets=r"bert\.encoder\.layer\.\d+\.attention\.self")
    check()
    for layer in model.bert.encoder.layer:  # a BERT whose blocks lack BertOutput.dense
        layer.output.proj = layer.output.dense
        del layer.output.dense
    check = untouched(model)
    with pytest.raises(ValueError, match="match no module"):
        adapter.apply(model, variant="pfeiffer")
    check()


def test_unknown_family_needs_targets(untouched):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    check = untouched(model)
    with pytest.raises(ValueError, match="Pass targets="):
        adapter.apply(model)
    check()
    adapter.apply(model, targets=["0"], reduction_factor=4)
    assert count_parameters(model)["trainable"] == adapter_size(8, 4)
