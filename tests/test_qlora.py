"""QLoRA (ftlab/methods/qlora.py): 4-bit base layers with LoRA on top.

The reference for every parity test is an ordinary float model whose target weights are
replaced by their 4-bit round trip, ``nf4.dequantize(nf4.quantize(W))``, with plain LoRA on the
same layers and the same LoRA weights: QLoRA must compute exactly what that model computes.
"""
import copy

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

import ftlab
from ftlab.methods import lora, nf4, qlora
from ftlab.methods.base import TunedLayer, find_targets, tuned_layers

TOL = 1e-10
FIRST_BERT_LAYER = r"bert\.encoder\.layer\.0\..*(query|key|value|dense)"  # a quick subset for the slower checks


def max_diff(a, b):
    return (a - b).abs().max().item()


def bert_case(minilm):
    model = minilm[0]
    x = {"input_ids": torch.randint(0, 1000, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long),
         "labels": torch.tensor([0, 1])}
    return model, x


def gpt2_case(tiny_gpt2):
    return tiny_gpt2, {"input_ids": torch.randint(0, 500, (2, 12)), "labels": torch.randint(0, 500, (2, 12))}


@pytest.fixture(params=["bert", "gpt2"])
def case(request, minilm, tiny_gpt2):
    """(float32 base model, batch with labels) for MiniLM (nn.Linear) and a tiny GPT-2 (Conv1D)."""
    torch.manual_seed(0)
    return bert_case(minilm) if request.param == "bert" else gpt2_case(tiny_gpt2)


def dequantized_reference(base, targets="all-linear"):
    """A float copy of ``base`` whose target weights are their 4-bit round trip through nf4 directly."""
    ref = copy.deepcopy(base)
    for name in find_targets(ref, targets):
        layer = ref.get_submodule(name)
        with torch.no_grad():
            layer.weight.copy_(nf4.dequantize(nf4.quantize(layer.weight)))
    return ref


def pair(base, dtype=torch.float64, targets="all-linear", use_dora=False):
    """(QLoRA model, float reference with dequantised weights and plain LoRA), same random LoRA weights, in dtype."""
    torch.manual_seed(1)
    ours = qlora.apply(copy.deepcopy(base), r=4, lora_alpha=8, targets=targets, init_lora_weights=False,
                       use_dora=use_dora, compute_dtype=dtype)
    ref = lora.apply(dequantized_reference(base, targets), r=4, lora_alpha=8, targets=targets, use_dora=use_dora)
    adapters = {k: v for k, v in ours.state_dict().items() if ".lora_" in k}
    assert adapters and set(adapters) <= set(ref.state_dict())
    ref.load_state_dict(adapters, strict=False)
    return ours.to(dtype), ref.to(dtype)


def float_layer(kind, bias=True):
    torch.manual_seed(0)
    return nn.Linear(96, 40, bias=bias) if kind == "linear" else Conv1D(40, 96)  # Conv1D(nf=out, nx=in)


# The layer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_quantized_layer_keeps_only_packed_codes_statistics_and_bias(kind, double_quant):
    base = float_layer(kind)
    layer = qlora.quantize_layer(base, double_quant=double_quant)
    assert isinstance(layer, nn.Linear if kind == "linear" else Conv1D)
    assert [name for name, _ in layer.named_parameters()] == ["bias"] and not layer.bias.requires_grad
    buffers = {name: b.dtype for name, b in layer.named_buffers()}
    if double_quant:
        assert buffers == {"packed": torch.uint8, "absmax": torch.uint8, "absmax_scale": torch.float32,
                           "absmax_offset": torch.float32}
    else:
        assert buffers == {"packed": torch.uint8, "absmax": torch.float32}
    assert set(layer.state_dict()) == set(buffers) | {"bias"}
    assert layer.num_packed_parameters == 96 * 40
    expected = nf4.dequantize(nf4.quantize(base.weight, double_quant=double_quant))
    assert layer.weight.shape == base.weight.shape  # the layer's own layout: Conv1D (in, out)
    assert torch.equal(layer.weight, expected)
    assert torch.equal(layer.dequantized().weight, expected) and torch.equal(layer.dequantized().bias, base.bias)
    assert type(layer.dequantized()) is type(base)


@pytest.mark.parametrize("quant_type", nf4.QUANT_TYPES)
@pytest.mark.parametrize("kind,bias", [("linear", True), ("linear", False), ("conv1d", True)])
def test_quantized_layer_computes_the_float_layer_with_dequantized_weight(kind, bias, quant_type):
    base = float_layer(kind, bias).double()
    layer = qlora.quantize_layer(base, quant_type=quant_type, compute_dtype=torch.float64)
    ref = copy.deepcopy(base)
    with torch.no_grad():
        ref.weight.copy_(nf4.dequantize(nf4.quantize(base.weight.float(), quant_type=quant_type)))
    x = torch.randn(3, 5, 96, dtype=torch.float64)
    assert max_diff(layer(x), ref(x)) < TOL
    assert max_diff(layer(x), base(x)) > 1e-4  # the rounding is real


def test_bfloat16_compute_dtype_multiplies_in_bfloat16_and_returns_the_input_dtype():
    base = float_layer("linear")
    layer = qlora.quantize_layer(base, compute_dtype=torch.bfloat16)
    x = torch.randn(4, 96)
    w = layer.weight
    expected = F.linear(x.bfloat16(), w.bfloat16(), base.bias.bfloat16()).float()
    out = layer(x)
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)
    in_float32 = F.linear(x, w, base.bias)
    assert 0 < max_diff(out, in_float32) < 0.05 * in_float32.abs().max()


@pytest.mark.parametrize("double_quant", [True, False])
def test_statistics_stay_float32_when_the_model_changes_dtype(tiny_gpt2, double_quant):
    model = qlora.apply(tiny_gpt2, r=2, double_quant=double_quant)
    layers = [m for m in model.modules() if isinstance(m, qlora.QuantizedLayer)]
    before = [{k: v.clone() for k, v in m.named_buffers()} for m in layers]
    weights = [m.weight for m in layers]
    for dtype in (torch.bfloat16, torch.float64):
        model.to(dtype)
        for m, saved, w in zip(layers, before, weights):
            for name, buffer in m.named_buffers():
                assert buffer.dtype == saved[name].dtype and torch.equal(buffer, saved[name])
            assert m.weight_dtype == dtype and torch.equal(m.weight, w.to(dtype)) and m.bias.dtype == dtype
            assert any(b.dtype == torch.float32 for b in m.buffers())  # absmax, or its scale and offset
        assert all(p.dtype == dtype for p in model.parameters())
        with torch.no_grad():
            assert model(torch.randint(0, 500, (1, 6))).logits.dtype == dtype


# The model ------------------------------------------------------------------------------------


def test_qlora_model_starts_equal_to_base_with_dequantized_weights(case):
    base, x = case
    model = qlora.apply(copy.deepcopy(base), r=4, compute_dtype=torch.float64).double()
    ref = dequantized_reference(base).double()
    with torch.no_grad():
        logits = model(**x).logits
        assert max_diff(logits, ref(**x).logits) < TOL
        assert max_diff(logits, base.double()(**x).logits) > 1e-4


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])  # bit-identical on CPU
def test_lora_gradients_equal_those_of_the_float_model_with_dequantized_weights(case, dtype, tol):
    base, x = case
    ours, ref = pair(base, dtype)
    loss = ours(**x).loss
    ref_loss = ref(**x).loss
    assert abs(loss.item() - ref_loss.item()) < tol
    loss.backward()
    ref_loss.backward()
    ref_params = dict(ref.named_parameters())
    grads = [(name, p.grad, ref_params[name].grad) for name, p in ours.named_parameters() if p.requires_grad]
    assert len(grads) == 2 * len(tuned_layers(ours)) > 0
    assert all(g is not None and g.abs().max() > 0 for _, g, _ in grads)
    worst = max(max_diff(g, r) / r.abs().max().item() for _, g, r in grads)
    assert worst < tol
    # nothing reaches the base: biases get no gradient, and the 4-bit weights are buffers
    assert all(p.grad is None for name, p in ours.named_parameters() if not p.requires_grad)


def test_backward_keeps_no_dequantized_weight(tiny_gpt2):
    # With a plain x @ W.T autograd would save each float W for backward; we dequantise again instead,
    # so the activations saved are exactly those of the float model (whose frozen W are parameters).
    x = {"input_ids": torch.randint(0, 500, (2, 12)), "labels": torch.randint(0, 500, (2, 12))}
    ours, ref = pair(tiny_gpt2, torch.float32)
    ours_report, ref_report = ftlab.memory_report(ours, x), ftlab.memory_report(ref, x)
    assert ours_report["activations"] == ref_report["activations"] > 0
    assert ours_report["total"] < ref_report["total"]


def test_count_parameters_counts_packed_weights_as_frozen(case):
    base, _ = case
    model = qlora.apply(copy.deepcopy(base), r=8)
    float_lora = lora.apply(copy.deepcopy(base), r=8, targets="all-linear")
    counts = ftlab.count_parameters(model)
    assert counts == ftlab.count_parameters(float_lora)
    assert counts["total"] == ftlab.count_parameters(base)["total"] + counts["trainable"]
    assert counts["trainable"] == sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)


@pytest.mark.parametrize("use_dora", [False, True])
def test_merge_gives_a_dequantized_float_model_with_the_same_outputs(case, use_dora):
    base, x = case
    targets = FIRST_BERT_LAYER if hasattr(base, "bert") else "all-linear"
    ours, _ = pair(base, torch.float64, targets=targets, use_dora=use_dora)
    layers = tuned_layers(ours)
    dequantized = {name: layer.base_layer.weight for name, layer in layers}
    deltas = {name: layer.delta_weight("default") for name, layer in layers}
    with torch.no_grad():
        expected = ours(**x).logits
        ftlab.merge(ours)
        assert max_diff(ours(**x).logits, expected) < TOL
        for name, layer in layers:
            assert type(layer.base_layer) in (nn.Linear, Conv1D)
            assert max_diff(layer.base_layer.weight, dequantized[name] + deltas[name]) < 1e-12
        ftlab.unmerge(ours)
        assert max_diff(ours(**x).logits, expected) < TOL
        assert all(max_diff(layer.base_layer.weight, dequantized[name]) < 1e-12 for name, layer in layers)

        plain = ftlab.merge_and_unload(ours)
        assert not any(isinstance(m, (TunedLayer, qlora.QuantizedLayer)) for m in plain.modules())
        assert max_diff(plain(**x).logits, expected) < TOL


def test_minilm_with_every_linear_layer_quantized_stores_its_weights_in_under_a_third(minilm):
    base = minilm[0]
    before = ftlab.measure.weight_bytes(base)
    names = find_targets(base, "all-linear")
    model = qlora.apply(base)
    report = qlora.storage_report(model)
    assert report["layers"] == len(names) == 37  # 6 x (q, k, v, attention output, intermediate, output) + pooler
    assert report["parameters"] == sum(model.get_submodule(n).base_layer.num_packed_parameters for n in names)
    layers = [m for m in model.modules() if isinstance(m, qlora.QuantizedLayer)]
    assert report["bytes"] == sum(b.numel() * b.element_size() for m in layers for b in m.buffers())
    assert report["ratio"] == pytest.approx(report["bits_per_parameter"] / 32)
    assert report["ratio"] < 0.3
    assert report["bits_per_parameter"] <= 4.13
    # the memory report sees the same: float32 weights swapped for 4-bit storage, LoRA added
    after = ftlab.measure.weight_bytes(model)
    total = lambda w: w["trainable"] + w["frozen"] + w["buffers"]  # noqa: E731
    assert total(after) == total(before) - report["float32_bytes"] + report["bytes"] + after["trainable"]


def test_quantized_model_state_round_trips_through_safetensors(tiny_gpt2):
    trained = qlora.apply(copy.deepcopy(tiny_gpt2), r=2, init_lora_weights=False)
    fresh = qlora.apply(copy.deepcopy(tiny_gpt2), r=2)
    state = {k: v for k, v in trained.state_dict().items() if k != "lm_head.weight"}  # tied to the input embedding
    missing, unexpected = fresh.load_state_dict(safetensors.torch.load(safetensors.torch.save(state)), strict=False)
    assert (missing, unexpected) == (["lm_head.weight"], [])
    x = torch.randint(0, 500, (2, 8))
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, trained(x).logits)


def test_exported_adapter_loads_in_peft_on_the_dequantized_model(tiny_gpt2, tmp_path):
    from peft import PeftModel

    from ftlab.peft_io import export_peft

    model = qlora.apply(copy.deepcopy(tiny_gpt2), r=2, init_lora_weights=False)
    export_peft(model, tmp_path)
    ref = PeftModel.from_pretrained(dequantized_reference(tiny_gpt2), tmp_path)  # Conv1D: fan_in_fan_out
    x = torch.randint(0, 500, (2, 8))
    with torch.no_grad():
        assert max_diff(ref(x).logits, model(x).logits) < 1e-6
        assert max_diff(ref(x).logits, tiny_gpt2(x).logits) > 1e-4


def test_more_adapters_go_on_the_quantized_layers_with_method_lora(tiny_gpt2):
    model = qlora.apply(tiny_gpt2, r=2)
    ftlab.add_adapter(model, "second", method="lora", r=4, targets="all-linear")
    for _, layer in tuned_layers(model):
        assert isinstance(layer.base_layer, qlora.QuantizedLayer) and layer.adapters == ["default", "second"]


@pytest.mark.parametrize("options,error,message", [
    ({"quant_type": "nf8"}, ValueError, "quant_type must be one of 'nf4', 'fp4', 'int4'; got 'nf8'"),
    ({"block_size": 48}, ValueError, "positive power of two"),
    ({"block_size": 0}, ValueError, "positive power of two"),
    ({"block_size": True}, TypeError, "block_size must be a whole number"),
    ({"double_quant": "yes"}, TypeError, "double_quant must be True or False"),
    ({"compute_dtype": torch.int8}, TypeError, "compute_dtype must be one of"),
    ({"targets": ["wte"]}, TypeError, "quantises nn.Linear and transformers' Conv1D layers, but 'transformer.wte'"),
    ({"targets": ["c_atn"]}, ValueError, "close candidates"),
    # LoRA refuses after the layers were quantised: they go back
    ({"modules_to_save": ["c_attn"]}, ValueError, "both targets and modules_to_save"),
    ({"lora_alpha": "8"}, TypeError, "lora_alpha must be a number"),
])
def test_bad_options_raise_and_leave_the_model_untouched(tiny_gpt2, untouched, options, error, message):
    check = untouched(tiny_gpt2)
    with pytest.raises(error, match=message):
        qlora.apply(tiny_gpt2, **options)
    check()


def test_non_floating_or_nan_weights_raise_and_leave_the_model_untouched(untouched):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    model[2].weight = nn.Parameter(torch.ones(8, 8, dtype=torch.int64), requires_grad=False)
    check = untouched(model)
    with pytest.raises(TypeError, match="'2' has a torch.int64 weight; only floating-point"):
        ftlab.apply(model, "qlora")
    check()
    model[2].weight = nn.Parameter(torch.full((8, 8), float("inf")))
    check = untouched(model)
    with pytest.raises(ValueError, match="NaN or infinite"):
        ftlab.apply(model, "qlora")
    check()


def test_quantizing_twice_or_under_an_adapter_raises_and_leaves_the_model_untouched(tiny_gpt2, untouched):
    model = ftlab.apply(copy.deepcopy(tiny_gpt2), "qlora", r=2)
    check = untouched(model)
    with pytest.raises(TypeError, match="already quantised.*method='lora'"):
        ftlab.apply(model, "qlora")
    with pytest.raises(TypeError, match="already quantised"):
        ftlab.add_adapter(model, "second", method="qlora", targets=["c_attn"])
    check()
    layer = model.transformer.h[0].attn.c_attn.base_layer
    with pytest.raises(TypeError, match="already quantised"):
        qlora.quantize_layer(layer)

    adapted = lora.apply(tiny_gpt2, r=2)
    check = untouched(adapted)
    with pytest.raises(TypeError, match="already carries a 'lora' adapter"):
        qlora.apply(adapted, targets=["c_attn"])
    check()
