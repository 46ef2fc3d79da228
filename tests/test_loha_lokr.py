"""LoHa and LoKr (ftlab/methods/loha.py, lokr.py) against peft on nn.Linear and nn.Conv2d, and on GPT-2's
Conv1D (which peft refuses) against the same method on the equivalent nn.Linear.

Parity tests build the model twice, give ftlab's and peft's adapters the same non-zero
random weights and compare outputs in float64. alpha / r is a power of two everywhere:
peft's LoHa rounds the scaling to float32, which is then exact.
"""
import copy
import warnings

import pytest
import torch
from peft import LoHaConfig, LoKrConfig, get_peft_model
from peft.tuners.lokr.layer import factorization as peft_factorization
from torch import nn
from transformers.pytorch_utils import Conv1D

import ftlab
from ftlab.methods import loha, lokr
from ftlab.methods.base import RESNET_STAGE_CONVS, replace_module, tuned_layers

from builders import resnet18, tiny_bert

TOL = 1e-10
METHODS = {"loha": (loha, LoHaConfig), "lokr": (lokr, LoKrConfig)}
# ResNet parity tests adapt layer1 and layer2 only: 3x3 convs and a strided 1x1 shortcut.
RESNET_PARITY_TARGETS = r"layer[12]\.\d+\.(conv\d+|downsample\.0)"


def case(kind, tiny_gpt2):
    """(fresh float64 model, targets, input, out(model, x) -> logits) for one layer kind."""
    torch.manual_seed(0)
    if kind == "linear":
        x = {"input_ids": torch.randint(0, 500, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
        return tiny_bert().double(), ["query", "value"], x, lambda m, x: m(**x).logits
    if kind == "conv1d":
        return tiny_gpt2.double(), ["c_attn"], {"input_ids": torch.randint(0, 500, (2, 12))}, lambda m, x: m(**x).logits
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    return copy.deepcopy(resnet18()).double(), RESNET_PARITY_TARGETS, x, lambda m, x: m(x)


def randomize(model, scale=0.2):
    """Give every trainable parameter non-zero N(0, scale^2) values; return {name: value}."""
    torch.manual_seed(1)
    values = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(scale * torch.randn_like(p))
                values[name] = p.detach().clone()
    return values


def build_pair(method, kind, tiny_gpt2, **options):
    """(ftlab model, peft model, x, out) with the same non-zero adapter weights."""
    module, config_class = METHODS[method]
    base, targets, x, out = case(kind, tiny_gpt2)
    ours = module.apply(copy.deepcopy(base), targets=targets, init_weights=False, **options)
    ref = get_peft_model(base, config_class(target_modules=targets, init_weights=False, **options))
    ref_state = ref.state_dict()
    for name, value in randomize(ours).items():
        ref_state["base_model.model." + name].copy_(value)
    return ours, ref, x, out


def max_diff(a, b):
    return (a - b).abs().max().item()


PARITY_CASES = [
    ("loha", "linear", {"r": 4, "alpha": 8}),
    ("loha", "conv2d", {"r": 4, "alpha": 8}),
    ("loha", "conv2d", {"r": 4, "alpha": 2, "use_effective_conv2d": True}),
    # d = 96 = 8 * 12: W2 (12, 12) is low-rank for r = 2; W1 (4, 4) too with decompose_both and r = 1
    ("lokr", "linear", {"r": 2, "alpha": 8}),
    ("lokr", "linear", {"r": 1, "alpha": 4, "decompose_both": True, "decompose_factor": 4}),
    # 64 and 128 channels: W2 (8, 8, 3, 3) in full in layer1, W2a W2b (8 x 16 * 9) in layer2; 1x1 shortcuts
    ("lokr", "conv2d", {"r": 4, "alpha": 8}),
    ("lokr", "conv2d", {"r": 2, "alpha": 8, "use_effective_conv2d": True, "decompose_both": True}),
]


@pytest.mark.parametrize("method, kind, options", PARITY_CASES)
def test_loha_and_lokr_match_peft_merged_and_unmerged(method, kind, options, tiny_gpt2):
    ours, ref, x, out = build_pair(method, kind, tiny_gpt2, **options)
    layers = tuned_layers(ours)
    before = {name: layer.base_layer.weight.detach().clone() for name, layer in layers}
    with torch.no_grad():
        expected = out(ref, x)
        with ftlab.disable_adapters(ours):
            assert max_diff(expected, out(ours, x)) > 1e-4  # the adapters really change the output
        assert max_diff(out(ours, x), expected) < TOL

        deltas = {}
        for name, layer in layers:
            deltas[name] = layer.delta_weight("default")
            peft_delta = ref.base_model.model.get_submodule(name).get_delta_weight("default")
            assert deltas[name].shape == layer.base_layer.weight.shape
            assert max_diff(deltas[name], peft_delta) < 1e-12

        ftlab.merge(ours)
        ref.merge_adapter()
        assert max_diff(out(ours, x), out(ref, x)) < TOL
        assert max_diff(out(ours, x), expected) < TOL
        for name, layer in layers:
            assert max_diff(layer.base_layer.weight, before[name] + deltas[name]) < 1e-12

        ftlab.unmerge(ours)
        for name, layer in layers:
            assert max_diff(layer.base_layer.weight, before[name]) < 1e-12
        assert max_diff(out(ours, x), expected) < TOL


@pytest.mark.parametrize("method, kind, options", [
    ("loha", "linear", {}),
    ("loha", "conv2d", {}),
    ("lokr", "conv2d", {"use_effective_conv2d": True, "decompose_both": True, "r": 2}),
])
def test_gradients_match_peft(method, kind, options, tiny_gpt2):
    ours, ref, x, out = build_pair(method, kind, tiny_gpt2, **options)
    (out(ours, x) ** 2).sum().backward()
    (out(ref, x) ** 2).sum().backward()
    ref_params = dict(ref.named_parameters())
    grads = [(p.grad, ref_params["base_model.model." + name].grad)
             for name, p in ours.named_parameters() if p.requires_grad]
    assert grads and all(a is not None and a.abs().max() > 0 for a, _ in grads)
    assert max(max_diff(a, b) for a, b in grads) < 1e-10


def test_loha_tucker_gradients_pass_gradcheck():
    # Not compared with peft: peft 0.21's hand-written backward for Tucker LoHa (HadaWeightCP) returns
    # wrong gradients for hada_w1_a and hada_w2_a; ours come from autograd, checked here by finite differences.
    torch.manual_seed(0)
    model = loha.apply(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)).double(), targets=["0"], r=2,
                       use_effective_conv2d=True, init_weights=False)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    assert len(names) == 6  # t1, t2 and the four factors
    params = tuple(p.detach().clone().requires_grad_() for name, p in model.named_parameters() if name in names)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *ps: torch.func.functional_call(model, dict(zip(names, ps)), (x,)), params)


@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_module_and_rank_dropout_match_peft_in_training(method, tiny_gpt2):
    ours, ref, x, out = build_pair(method, "linear", tiny_gpt2, r=2, module_dropout=0.3, rank_dropout=0.4)
    ours.train()
    ref.train()
    outputs = []
    for model in (ours, ref):
        torch.manual_seed(5)
        outputs.append(torch.stack([out(model, x) for _ in range(4)]))  # several steps: skips and kept rows vary
    assert max_diff(*outputs) < TOL
    ours.eval()
    with torch.no_grad():  # in eval mode there is no dropout: every call gives the same output
        assert max_diff(out(ours, x), out(ours, x)) == 0


def linear_twin(model, targets):
    """A copy of ``model`` whose Conv1D targets are nn.Linear layers with the transposed weight."""
    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        if isinstance(module, Conv1D) and name.rsplit(".", 1)[-1] in targets:
            n_in, n_out = module.weight.shape
            linear = nn.Linear(n_in, n_out).double()
            with torch.no_grad():
                linear.weight.copy_(module.weight.T)
                linear.bias.copy_(module.bias)
            replace_module(twin, name, linear)
    return twin


@pytest.mark.parametrize("method, options", [
    ("loha", {"r": 4, "alpha": 8}),
    ("lokr", {"r": 2, "alpha": 8}),
    ("lokr", {"r": 2, "alpha": 4, "decompose_both": True, "decompose_factor": 4}),
])
def test_loha_and_lokr_on_conv1d_equal_the_same_method_on_the_equivalent_linear(method, options, tiny_gpt2):
    module = METHODS[method][0]
    base = tiny_gpt2.double()
    twin = linear_twin(base, ["c_attn"])
    x = torch.randint(0, 500, (2, 12))
    with torch.no_grad():
        assert max_diff(twin(x).logits, base(x).logits) < 1e-12
    ours = module.apply(copy.deepcopy(base), targets=["c_attn"], init_weights=False, **options)
    linear = module.apply(twin, targets=["c_attn"], init_weights=False, **options)
    values = randomize(ours)
    linear.load_state_dict({**linear.state_dict(), **values})
    with torch.no_grad():
        expected = linear(x).logits
        assert max_diff(expected, base(x).logits) > 1e-4
        assert max_diff(ours(x).logits, expected) < TOL
        for (_, conv1d_layer), (_, linear_layer) in zip(tuned_layers(ours), tuned_layers(linear)):
            assert isinstance(conv1d_layer.base_layer, Conv1D)
            delta = conv1d_layer.delta_weight("default")
            assert delta.shape == conv1d_layer.base_layer.weight.shape  # (in, out), Conv1D's own layout
            assert max_diff(delta, linear_layer.delta_weight("default").T) < 1e-12

        before = [layer.base_layer.weight.clone() for _, layer in tuned_layers(ours)]
        ftlab.merge(ours)
        assert max_diff(ours(x).logits, expected) < TOL
        ftlab.unmerge(ours)
        assert all(max_diff(layer.base_layer.weight, w) < 1e-12 for (_, layer), w in zip(tuned_layers(ours), before))
        assert max_diff(ours(x).logits, expected) < TOL


@pytest.mark.parametrize("method, init_weights", [("loha", True), ("lokr", True), ("lokr", "lycoris")])
@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d"])
def test_default_init_leaves_output_unchanged(method, init_weights, kind, tiny_gpt2):
    base, targets, x, out = case(kind, tiny_gpt2)
    model = ftlab.apply(copy.deepcopy(base), method, targets=targets, init_weights=init_weights,
                        use_effective_conv2d=True)
    with torch.no_grad():
        assert max_diff(out(model, x), out(base, x)) < 1e-12
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    zero = {("loha", True): ("hada_w2_b",), ("lokr", True): ("lokr_w1.", "lokr_w1_a"),
            ("lokr", "lycoris"): ("lokr_w2.", "lokr_w2_b")}[method, init_weights]
    zeros = [name for name, p in params.items() if (p == 0).all()]
    assert zeros and all(any(z in name for z in zero) for name in zeros)
    assert len(zeros) < len(params)


def lokr_size(n_in, n_out, r, kernel=1):
    """Trainable parameters of one LoKr layer with the default factors (peft's rules, written out)."""
    (a, b), (c, d) = lokr.factorization(n_out), lokr.factorization(n_in)
    w2 = b * d * kernel if r >= max(b, d) / 2 else r * (b + d * kernel)
    return a * c + w2


@pytest.mark.parametrize("method", ["loha", "lokr"])
@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d"])
def test_trainable_parameter_counts_match_peft(method, kind, minilm, tiny_gpt2):
    module, config_class = METHODS[method]
    # the real models with their default targets: MiniLM's query/value, GPT-2's c_attn, every ResNet-18 stage conv
    base, targets = {"linear": (minilm[0], ["query", "value"]), "conv1d": (tiny_gpt2, ["c_attn"]),
                     "conv2d": (resnet18(), RESNET_STAGE_CONVS)}[kind]
    ours = module.apply(copy.deepcopy(base))
    counts = ftlab.count_parameters(ours)
    assert counts["trainable"] > 0
    if kind == "conv1d":  # peft refuses Conv1D: count with the formula instead (c_attn: 64 -> 192, r = 8)
        per_layer = 2 * 8 * (64 + 192) if method == "loha" else lokr_size(64, 192, 8)
        assert counts["trainable"] == 2 * per_layer
        with pytest.raises((TypeError, ValueError)):
            get_peft_model(copy.deepcopy(base), config_class(target_modules=targets))
    else:
        ref = get_peft_model(copy.deepcopy(base), config_class(target_modules=targets))
        assert (counts["trainable"], counts["total"]) == ref.get_nb_trainable_parameters()


@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_only_adapter_parameters_train_and_base_stays_bit_identical(method, minilm):
    model = ftlab.apply(minilm[0], method, r=4, modules_to_save=["classifier"])
    prefix = "hada_" if method == "loha" else "lokr_"
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(f".{prefix}" in name or ".modules_to_save." in name for name in trainable)
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


@pytest.mark.parametrize("dim", [1, 2, 7, 12, 64, 127, 128, 192, 384, 768, 1000, 1536, 3072])
def test_factorization_matches_peft(dim):
    assert lokr.factorization(dim) == peft_factorization(dim)
    for factor in range(1, min(dim, 70) + 1):  # divisors, and the fallback for factors that do not divide
        assert lokr.factorization(dim, factor) == peft_factorization(dim, factor)


def test_decompose_factor_sets_the_kronecker_shapes(tiny_gpt2):
    model = lokr.apply(tiny_gpt2, targets=["c_attn"], r=1, decompose_factor=4, decompose_both=True)
    layer = tuned_layers(model)[0][1]  # c_attn: 64 inputs = 4 * 16, 192 outputs = 4 * 48
    assert layer.lokr_w1_a["default"].shape == (4, 1) and layer.lokr_w1_b["default"].shape == (1, 4)
    assert layer.lokr_w2_a["default"].shape == (48, 1) and layer.lokr_w2_b["default"].shape == (1, 16)
    assert layer.adapter_config["default"].decompose_factor == 4


@pytest.mark.parametrize("method, options, error, message", [
    ("lokr", {"decompose_factor": 0}, ValueError, "decompose_factor must be -1"),
    ("lokr", {"init_weights": "pissa"}, ValueError, "init_weights"),
    ("lokr", {"decompose_both": "yes"}, TypeError, "decompose_both must be True or False"),
    ("loha", {"r": 0}, ValueError, "r must be at least 1"),
    ("lokr", {"r": -1}, ValueError, "r must be at least 1"),
    ("loha", {"r": True}, TypeError, "r must be a whole number"),
    ("loha", {"alpha": "8"}, TypeError, "alpha must be a number"),
    ("lokr", {"alpha": float("inf")}, ValueError, "alpha must be a finite number"),
    ("loha", {"rank_dropout": 1.0}, ValueError, "rank_dropout"),
    ("lokr", {"module_dropout": -0.1}, ValueError, "module_dropout"),
    ("loha", {"init_weights": None}, ValueError, "init_weights"),
    ("loha", {"targets": ["c_atn"]}, ValueError, "c_attn"),
    ("lokr", {"targets": ["c_attn", "ln_1"]}, TypeError, "'transformer.h.0.ln_1': lokr cannot adapt a LayerNorm"),
    ("loha", {"modules_to_save": ["lm_haed"]}, ValueError, "lm_head"),
])
def test_bad_options_raise_and_leave_the_model_untouched(method, options, error, message, tiny_gpt2, untouched):
    check = untouched(tiny_gpt2)
    with pytest.raises(error, match=message):
        ftlab.apply(tiny_gpt2, method, **options)
    check()


def test_loha_rank_warning_counts_the_kernel_unless_tucker():
    targets = ["layer2.0.conv1"]  # a 3x3 conv, 64 -> 128 channels
    with pytest.warns(UserWarning, match=r"r=65 on 'layer2.0.conv1' \(64 inputs, 128 outputs\)"):
        loha.apply(copy.deepcopy(resnet18()), targets=targets, r=65, use_effective_conv2d=True)  # Tucker: W1b (r, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = loha.apply(copy.deepcopy(resnet18()), targets=targets, r=65)  # flattened: W1b (r, 64 * 3 * 3)
    assert tuned_layers(model)[0][1].hada_w1_b["default"].shape == (65, 576)


def test_a_decompose_factor_that_does_not_divide_falls_back_as_peft_does_and_says_so(tiny_gpt2):
    with pytest.warns(UserWarning, match=r"decompose_factor=5 does not divide the 192 outputs of "
                                         r"'transformer.h.0.attn.c_attn'.*splits them 4 x 48"):
        model = lokr.apply(tiny_gpt2, targets=["c_attn"], decompose_factor=5, r=1)
    layer = tuned_layers(model)[0][1]  # 192 outputs = 4 * 48, 64 inputs = 4 * 16 (5 divides neither)
    assert layer.lokr_w1["default"].shape == (4, 4)
    assert layer.lokr_w2_a["default"].shape == (48, 1) and layer.lokr_w2_b["default"].shape == (1, 16)
