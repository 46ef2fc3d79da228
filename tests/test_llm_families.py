"""Llama, Mistral, Qwen2 and Phi: default targets of LoRA, IA3, QLoRA and bottleneck adapters, parity with peft.

Small random models built from each family's transformers config (no download), in float64. LoRA
and IA3 take peft's default targets for the family; the adapter, perturbed, goes to peft through
``export_peft`` and gives the same logits there. QLoRA quantises every linear layer but the head
(QLoRA's choice) and its adapter loads in peft on the dequantised model. Bottleneck adapters follow
each decoder block's self_attn and mlp (Houlsby), and every model starts equal to its base model.
"""
import copy

import pytest
import torch
import transformers
from peft import IA3Config, LoraConfig, PeftModel, get_peft_model

import ftlab
from ftlab.methods import nf4
from ftlab.methods.base import find_targets, tuned_layers

SIZE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "vocab_size": 100}
CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**SIZE, num_key_value_heads=2),
    "mistral": lambda: transformers.MistralConfig(**SIZE, num_key_value_heads=2),
    "qwen2": lambda: transformers.Qwen2Config(**SIZE, num_key_value_heads=2),
    "phi": lambda: transformers.PhiConfig(**SIZE),
}
FAMILIES = list(CONFIGS)


def build(family):
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(CONFIGS[family]()).double().eval()


def logits(model):
    torch.manual_seed(1)
    return model(input_ids=torch.randint(0, 100, (2, 7))).logits


def perturb(model):
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method, config_class", [("lora", LoraConfig), ("ia3", IA3Config)])
def test_default_targets_are_peft_defaults_and_the_adapter_equals_peft(family, method, config_class, tmp_path):
    base = build(family)
    model = ftlab.apply(copy.deepcopy(base), method)
    ref = get_peft_model(copy.deepcopy(base), config_class())  # peft's defaults for the family
    ours = [name for name, layer in tuned_layers(model)]
    assert ours and sorted(ours) == sorted(ref.base_model.targeted_module_names)
    if method == "ia3":  # the same layers scale their input
        flags = {name: layer.adapter_config["default"].is_feedforward for name, layer in tuned_layers(model)}
        assert {name for name, ff in flags.items() if ff} == {
            name for name in ours if ref.base_model.model.get_submodule(name).is_feedforward}
    assert ftlab.count_parameters(model)["trainable"] == ref.get_nb_trainable_parameters()[0]
    with torch.no_grad():
        assert (logits(model) - logits(base)).abs().max() < 1e-12  # starts as the base model
    perturb(model)
    ftlab.export_peft(model, tmp_path)
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    with torch.no_grad():
        expected = logits(loaded)
        assert (expected - logits(base)).abs().max() > 1e-4
        assert (logits(model) - expected).abs().max() < 1e-10


@pytest.mark.parametrize("family", FAMILIES)
def test_qlora_quantises_every_linear_layer_but_the_head_and_loads_in_peft(family, tmp_path):
    base = build(family)
    model = ftlab.apply(copy.deepcopy(base), "qlora", r=4)
    names = find_targets(base, "all-linear")
    assert "lm_head" not in names and any(name.endswith("down_proj") or name.endswith("fc2") for name in names)
    assert sorted(name for name, _ in tuned_layers(model)) == sorted(names)
    perturb(model)
    ftlab.export_peft(model, tmp_path)
    reference = copy.deepcopy(base)  # the float model whose weights are their 4-bit round trip
    with torch.no_grad():
        for name in names:
            weight = reference.get_submodule(name).weight
            weight.copy_(nf4.dequantize(nf4.quantize(weight)))
    loaded = PeftModel.from_pretrained(reference, tmp_path).eval()
    with torch.no_grad():
        assert (logits(loaded) - logits(model)).abs().max() < 1e-6  # float32 matmuls inside the 4-bit layers


@pytest.mark.parametrize("family", FAMILIES)
def test_bottleneck_adapters_follow_each_blocks_attention_and_mlp(family):
    base = build(family)
    model = ftlab.apply(copy.deepcopy(base), "adapter", reduction_factor=8)
    assert [name for name, _ in tuned_layers(model)] == [
        f"model.layers.{i}.{part}" for i in range(2) for part in ("self_attn", "mlp")]
    assert ftlab.count_parameters(model)["trainable"] == 4 * (2 * 64 * 8 + 8 + 64)  # 2 d b + b + d per adapter
    with torch.no_grad():
        assert (logits(model) - logits(base)).abs().max() < 1e-12
    perturb(model)
    with torch.no_grad(), ftlab.disable_adapters(model):
        assert (logits(model) - logits(base)).abs().max() < 1e-12
