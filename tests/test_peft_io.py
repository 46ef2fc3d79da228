"""export_peft / import_peft (ftlab/peft_io.py): adapters move between ftlab and peft with identical outputs.

Every parity case builds a float64 model, gives the adapter non-zero random weights, moves it
through peft's files and compares both sides' outputs to 1e-10.
"""
import copy
import json
import warnings

import pytest
import torch
from peft import IA3Config, LoHaConfig, LoKrConfig, LoraConfig, PeftModel, get_peft_model

import ftlab
from ftlab import peft_io
from ftlab.methods import lora

from builders import resnet18_float64

TOL = 1e-10
# every kind of conv in ResNet-18 (3x3, strided, 1x1 shortcut) at a fraction of the cost
RESNET_TARGETS = r"layer[12]\.\d+\.(conv\d+|downsample\.0)"
SAVE = {"modules_to_save": ["classifier"]}  # MiniLM's new head trains in full

# (method, layer kind) -> (ftlab options, the same adapter as a peft config)
CASES = {
    ("lora", "linear"): ({"targets": ["query", "value"], **SAVE},
                         LoraConfig(target_modules=["query", "value"], **SAVE)),
    ("lora", "conv1d"): ({"targets": ["c_attn", "c_fc"], "lora_alpha": 6},
                         LoraConfig(target_modules=["c_attn", "c_fc"], lora_alpha=6, fan_in_fan_out=True)),
    ("lora", "conv2d"): ({"targets": RESNET_TARGETS, "modules_to_save": ["fc"]},
                         LoraConfig(target_modules=RESNET_TARGETS, modules_to_save=["fc"])),
    ("dora", "linear"): ({"targets": ["query", "value"], **SAVE},
                         LoraConfig(target_modules=["query", "value"], use_dora=True, **SAVE)),
    ("dora", "conv1d"): ({"targets": ["c_attn"], "r": 4, "use_rslora": True},
                         LoraConfig(target_modules=["c_attn"], r=4, use_dora=True, use_rslora=True,
                                    fan_in_fan_out=True)),
    ("dora", "conv2d"): ({"targets": RESNET_TARGETS}, LoraConfig(target_modules=RESNET_TARGETS, use_dora=True)),
    ("loha", "linear"): ({"targets": ["query", "value"], "alpha": 4, **SAVE},
                         LoHaConfig(target_modules=["query", "value"], alpha=4, **SAVE)),
    ("loha", "conv2d"): ({"targets": RESNET_TARGETS}, LoHaConfig(target_modules=RESNET_TARGETS)),
    ("loha", "conv2d-tucker"): ({"targets": RESNET_TARGETS, "use_effective_conv2d": True},
                                LoHaConfig(target_modules=RESNET_TARGETS, use_effective_conv2d=True)),
    ("lokr", "linear"): ({"targets": ["query", "value"], "decompose_both": True, "r": 4, **SAVE},
                         LoKrConfig(target_modules=["query", "value"], decompose_both=True, r=4, **SAVE)),
    ("lokr", "conv2d"): ({"targets": RESNET_TARGETS, "decompose_factor": 8},
                         LoKrConfig(target_modules=RESNET_TARGETS, decompose_factor=8)),
    ("lokr", "conv2d-tucker"): ({"targets": RESNET_TARGETS, "use_effective_conv2d": True, "r": 2},
                                LoKrConfig(target_modules=RESNET_TARGETS, use_effective_conv2d=True, r=2)),
    ("ia3", "linear"): ({"targets": ["key", "value", "output.dense"], "feedforward_modules": ["output.dense"], **SAVE},
                        IA3Config(target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"],
                                  **SAVE)),
    ("ia3", "conv1d"): ({"targets": ["c_attn", "mlp.c_proj"], "feedforward_modules": ["mlp.c_proj"]},
                        IA3Config(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"],
                                  fan_in_fan_out=True)),
    ("ia3", "conv2d"): ({"targets": RESNET_TARGETS, "feedforward_modules": ["layer1.0.conv2", "layer2.1.conv1"]},
                        IA3Config(target_modules=RESNET_TARGETS,
                                  feedforward_modules=["layer1.0.conv2", "layer2.1.conv1"])),
}
PAIRS = list(CASES)
IDS = [f"{method}-{kind}" for method, kind in PAIRS]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tiny float64 batches run fastest on one thread (two threads mostly wait for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def minilm64(_minilm_pristine):
    return copy.deepcopy(_minilm_pristine[0]).double().eval()


def base_for(kind, minilm64=None, tiny_gpt2=None):
    """(float64 base model in eval mode, input x, out(model, x) -> logits) for a layer kind."""
    torch.manual_seed(0)
    kind = kind.split("-")[0]
    if kind == "linear":
        x = {"input_ids": torch.randint(0, 1000, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
        return copy.deepcopy(minilm64), x, lambda m, x: m(**x).logits
    if kind == "conv1d":
        return tiny_gpt2.double(), {"input_ids": torch.randint(0, 500, (2, 12))}, lambda m, x: m(**x).logits
    return copy.deepcopy(resnet18_float64()), torch.randn(2, 3, 16, 16, dtype=torch.float64), lambda m, x: m(x)


def perturb_trainable(model):
    """Add N(0, 0.05^2) noise to every trainable tensor: adapters become non-zero, saved modules change."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


def max_diff(a, b):
    return (a - b).abs().max().item()


def load_in_peft(base_model, folder):
    """PeftModel.from_pretrained, failing on any warning about missing or unexpected keys."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ref = PeftModel.from_pretrained(copy.deepcopy(base_model), folder).eval()
    key_warnings = [str(w.message) for w in caught if "keys" in str(w.message).lower()]
    assert not key_warnings, key_warnings
    return ref


@pytest.mark.parametrize("method, kind", PAIRS, ids=IDS)
def test_adapter_goes_to_peft_and_back_with_identical_outputs(minilm64, tiny_gpt2, method, kind, tmp_path):
    """ftlab -> export_peft -> PeftModel.from_pretrained -> peft's save_pretrained -> import_peft."""
    base_model, x, out = base_for(kind, minilm64, tiny_gpt2)
    ours = ftlab.apply(copy.deepcopy(base_model), method, **CASES[method, kind][0])
    perturb_trainable(ours)
    ftlab.export_peft(ours, tmp_path / "ftlab")
    assert sorted(p.name for p in (tmp_path / "ftlab").iterdir()) == [peft_io.CONFIG_NAME, peft_io.WEIGHTS_NAME]
    ref = load_in_peft(base_model, tmp_path / "ftlab")
    ref.save_pretrained(tmp_path / "peft")
    back = ftlab.import_peft(copy.deepcopy(base_model), tmp_path / "peft")
    with torch.no_grad():
        expected = out(ours, x)
        assert max_diff(expected, out(base_model, x)) > 1e-4  # the adapter really changes the output
        assert max_diff(out(ref, x), expected) < TOL
        assert max_diff(out(back, x), expected) < TOL
    assert back.state_dict().keys() == ours.state_dict().keys()
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ours.state_dict().items())


# adapters made by peft itself (get_peft_model), one per method; the MiniLM one as peft trains a classifier
TRAINED_BY_PEFT = {
    ("lora", "linear"): LoraConfig(target_modules=["query", "value"], task_type="SEQ_CLS", lora_dropout=0.1),
    ("dora", "conv2d"): LoraConfig(target_modules=RESNET_TARGETS, use_dora=True, modules_to_save=["fc"],
                                   rank_pattern={"conv2": 4}, alpha_pattern={"layer1.0.conv1": 3}),
    ("loha", "conv2d-tucker"): LoHaConfig(target_modules=RESNET_TARGETS, use_effective_conv2d=True, r=4),
    ("lokr", "linear"): LoKrConfig(target_modules=["query", "value"], decompose_both=True, r=2, **SAVE),
    ("ia3", "conv1d"): IA3Config(target_modules=["c_attn", "attn.c_proj", "mlp.c_proj"],
                                 feedforward_modules=["mlp.c_proj"], fan_in_fan_out=True),
}


@pytest.mark.parametrize("method, kind", list(TRAINED_BY_PEFT), ids=[f"{m}-{k}" for m, k in TRAINED_BY_PEFT])
def test_adapter_made_by_peft_imports_with_identical_outputs(minilm64, tiny_gpt2, method, kind, tmp_path):
    base_model, x, out = base_for(kind, minilm64, tiny_gpt2)
    ref = save_from_peft(base_model, TRAINED_BY_PEFT[method, kind], tmp_path)
    ours = ftlab.import_peft(copy.deepcopy(base_model), tmp_path)
    assert ftlab.count_parameters(ours)["trainable"] == ref.get_nb_trainable_parameters()[0]
    with torch.no_grad():
        expected = out(ref, x)
        assert max_diff(expected, out(base_model, x)) > 1e-4
        assert max_diff(out(ours, x), expected) < TOL
        ftlab.merge(ours)  # the imported adapter is a complete ftlab adapter: merged, the same outputs
        assert max_diff(out(ours, x), expected) < TOL


def save_from_peft(base_model, config, folder):
    """A peft model of ``config`` with non-zero random adapter weights, saved with save_pretrained."""
    ref = get_peft_model(copy.deepcopy(base_model), copy.deepcopy(config)).eval()
    perturb_trainable(ref)
    ref.save_pretrained(folder)
    return ref


def test_weighted_sum_with_different_ranks_per_layer_uses_rank_pattern(tiny_gpt2, tmp_path):
    base_model, x, out = base_for("conv1d", tiny_gpt2=tiny_gpt2)
    model = lora.apply(copy.deepcopy(base_model), r=2, lora_alpha=4, targets=["c_attn"], init_lora_weights=False)
    ftlab.add_adapter(model, "second", r=3, lora_alpha=5, use_rslora=True, targets=["c_attn", "c_fc"],
                      init_lora_weights=False)
    lora.add_weighted_adapter(model, ["default", "second"], [0.7, -1.3], "sum")  # rank 5 on c_attn, 3 on c_fc
    ftlab.export_peft(model, tmp_path, adapter_name="sum")
    config = json.loads((tmp_path / peft_io.CONFIG_NAME).read_text())
    assert config["r"] in (3, 5) and config["rank_pattern"] and config["alpha_pattern"]
    ftlab.set_adapter(model, "sum")
    ref = load_in_peft(base_model, tmp_path)
    back = ftlab.import_peft(copy.deepcopy(base_model), tmp_path)
    with torch.no_grad():
        assert max_diff(out(ref, x), out(model, x)) < TOL
        assert max_diff(out(back, x), out(model, x)) < TOL


def test_import_as_a_second_adapter_keeps_the_active_one(tiny_gpt2, tmp_path):
    base_model, x, out = base_for("conv1d", tiny_gpt2=tiny_gpt2)
    ref = save_from_peft(base_model, CASES["lora", "conv1d"][1], tmp_path)
    model = lora.apply(copy.deepcopy(base_model), targets=["c_attn"], init_lora_weights=False)
    with torch.no_grad():
        before = out(model, x)
    ftlab.import_peft(model, tmp_path, adapter_name="peft")
    with torch.no_grad():
        assert max_diff(out(model, x), before) == 0
        ftlab.set_adapter(model, "peft")
        assert max_diff(out(model, x), out(ref, x)) < TOL


def test_export_replaces_an_earlier_export_in_the_same_folder(tiny_gpt2, tmp_path):
    base_model, x, out = base_for("conv1d", tiny_gpt2=tiny_gpt2)
    first = ftlab.apply(copy.deepcopy(base_model), "dora", targets=["c_attn"], r=2)
    ftlab.export_peft(first, tmp_path)
    second = ftlab.apply(copy.deepcopy(base_model), "lora", targets=["c_fc"], r=4)
    perturb_trainable(second)
    ftlab.export_peft(second, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [peft_io.CONFIG_NAME, peft_io.WEIGHTS_NAME]
    with torch.no_grad():
        assert max_diff(out(load_in_peft(base_model, tmp_path), x), out(second, x)) < TOL


# ---------------------------------------------------------------- errors

def test_loha_and_lokr_on_conv1d_are_refused_since_peft_cannot_load_them(tiny_gpt2, tmp_path):
    for method in ("loha", "lokr"):
        model = ftlab.apply(copy.deepcopy(tiny_gpt2), method, targets=["c_attn"], r=2)
        with pytest.raises(ValueError, match=r"peft's LO[HK][AR] does not accept Conv1D layers such as "
                                             r"'transformer.h.0.attn.c_attn'"):
            ftlab.export_peft(model, tmp_path / method)
        assert not (tmp_path / method).exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("make, message", [
    (lambda m: ftlab.apply(m, "bitfit"), "outside ftlab's adapter layers .* BitFit"),
    (lambda m: ftlab.apply(m, "adapter"), "peft cannot load adapter 'default', made by ftlab's method 'adapter'"),
    (lambda m: ftlab.apply(m, "prefix", num_virtual_tokens=4), "outside ftlab's adapter layers .* prefix"),
    (lambda m: m.requires_grad_(False), r"no adapter called 'default' \(its adapters: \[\]\)"),
], ids=["bitfit", "bottleneck-adapter", "prefix", "no-adapter"])
def test_export_of_what_peft_cannot_load_raises_and_writes_nothing(tiny_gpt2, tmp_path, make, message):
    model = make(copy.deepcopy(tiny_gpt2))
    with pytest.raises(ValueError, match=message):
        ftlab.export_peft(model, tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []


def test_export_names_a_missing_adapter_and_refuses_a_file_as_folder(tiny_gpt2, tmp_path):
    model = ftlab.apply(copy.deepcopy(tiny_gpt2), "lora", targets=["c_attn"])
    with pytest.raises(ValueError, match=r"no adapter called 'other' \(its adapters: \['default'\]\)"):
        ftlab.export_peft(model, tmp_path / "adapter", adapter_name="other")
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ValueError, match="is a file"):
        ftlab.export_peft(model, tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def write_peft_lora(tiny_gpt2, folder, **config):
    """A peft LoRA adapter for the tiny GPT-2 saved in ``folder``; returns its config dict."""
    save_from_peft(tiny_gpt2, LoraConfig(target_modules=["c_attn"], fan_in_fan_out=True, **config), folder)
    return json.loads((folder / peft_io.CONFIG_NAME).read_text())


def edit_config(folder, **changes):
    config = json.loads((folder / peft_io.CONFIG_NAME).read_text())
    (folder / peft_io.CONFIG_NAME).write_text(json.dumps({**config, **changes}))


def test_import_errors_for_missing_damaged_and_pickled_files(tiny_gpt2, untouched, tmp_path):
    model = copy.deepcopy(tiny_gpt2)
    check = untouched(model)
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        ftlab.import_peft(model, tmp_path)
    write_peft_lora(tiny_gpt2, tmp_path)
    weights = tmp_path / peft_io.WEIGHTS_NAME
    good = weights.read_bytes()

    weights.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        ftlab.import_peft(model, tmp_path)
    weights.write_bytes(b"\x00" * 64)  # garbage
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        ftlab.import_peft(model, tmp_path)
    weights.unlink()
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="adapter_model.bin, a pickle, which ftlab never loads"):
        ftlab.import_peft(model, tmp_path)
    (tmp_path / "adapter_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="no adapter_model.safetensors"):
        ftlab.import_peft(model, tmp_path)
    weights.write_bytes(good)
    (tmp_path / peft_io.CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ftlab.import_peft(model, tmp_path)
    check()


@pytest.mark.parametrize("changes, message", [
    ({"peft_type": "PREFIX_TUNING"}, "cannot read peft's 'PREFIX_TUNING' adapters; supported peft types: LORA"),
    ({"exclude_modules": ["c_proj"]}, r"exclude_modules=\['c_proj'\] is not supported by ftlab's lora.*list the "
                                      r"targets to keep explicitly"),
    ({"target_parameters": ["c_attn.weight"]}, "target_parameters.*not supported.*name the module in targets"),
    ({"layers_to_transform": [0]}, r"2 unexpected \(e.g. \['base_model.model.transformer.h.1.attn.c_attn.lora_A"),
    ({"use_qalora": True}, "use_qalora=True is not supported"),
    ({"init_lora_weights": "pissa"}, "pissa.*change the base weights when peft loads the adapter"),
    ({"target_modules": ["query"]}, "match no module of GPT2LMHeadModel; the adapter was made for another model"),
    ({"target_modules": ["c_attn", "c_fc"]}, r"does not fit this model and config: 4 tensors missing"),
    ({"r": 4}, r"wrong shape .*lora_A.weight: \(8, 64\) instead of \(4, 64\)"),
    ({"lora_dropout": 1.5}, "lora_dropout must be a probability"),
], ids=["peft-type", "exclude", "parameters", "layers", "qalora", "pissa", "other-model", "missing-tensors", "shape",
        "dropout"])
def test_import_of_a_mismatching_or_unsupported_adapter_raises_and_leaves_the_model_untouched(
        tiny_gpt2, untouched, tmp_path, changes, message):
    write_peft_lora(tiny_gpt2, tmp_path)
    edit_config(tmp_path, **changes)
    model = copy.deepcopy(tiny_gpt2)
    check = untouched(model)
    with pytest.raises(ValueError, match=message):
        ftlab.import_peft(model, tmp_path)
    check()


def test_import_into_a_model_that_already_has_the_adapter_name_leaves_it_untouched(tiny_gpt2, untouched, tmp_path):
    write_peft_lora(tiny_gpt2, tmp_path)
    model = lora.apply(copy.deepcopy(tiny_gpt2), targets=["c_attn"])
    check = untouched(model)
    with pytest.raises(ValueError, match="adapter 'default' already exists"):
        ftlab.import_peft(model, tmp_path)
    check()


# ---------------------------------------------------------------- apply takes what import_peft takes

def test_apply_takes_every_option_that_import_peft_reads():
    import inspect

    from ftlab.methods import registry

    renamed = {"target_modules": "targets"}
    for spec in registry().values():
        if spec.peft is None or spec.implied:
            continue
        fmt = spec.peft
        read = {*fmt.options, *fmt.patterns, *fmt.flags, fmt.init, *peft_io.SELECTION} - {None}
        parameters = inspect.signature(spec.apply).parameters
        assert {renamed.get(key, key) for key in read} <= set(parameters), spec.name


@pytest.mark.parametrize("options, peft_options", [
    ({"rank_pattern": {"c_fc": 2}, "alpha_pattern": {"h.1.attn.c_attn": 3}},
     {"rank_pattern": {"c_fc": 2}, "alpha_pattern": {"h.1.attn.c_attn": 3}}),
    ({"layers_to_transform": [1]}, {"layers_to_transform": [1]}),
    ({"layers_to_transform": 0, "layers_pattern": "h"}, {"layers_to_transform": 0, "layers_pattern": "h"}),
    ({"bias": "lora_only"}, {"bias": "lora_only"}),
    ({"bias": "all"}, {"bias": "all"}),
    ({"init_lora_weights": "gaussian"}, {"init_lora_weights": "gaussian"}),
    ({"lora_bias": True, "lora_alpha": 16}, {"lora_bias": True, "lora_alpha": 16}),
], ids=["patterns", "layers", "layers-pattern", "bias-lora-only", "bias-all", "gaussian", "lora-bias"])
def test_peft_options_given_to_apply_make_peft_s_model_and_go_back_and_forth(tiny_gpt2, tmp_path, options,
                                                                              peft_options):
    base_model = tiny_gpt2.double()
    targets = ["c_attn", "c_fc"]
    ours = ftlab.apply(copy.deepcopy(base_model), "lora", targets=targets, **options)
    ref = get_peft_model(copy.deepcopy(base_model), LoraConfig(target_modules=targets, fan_in_fan_out=True,
                                                               **peft_options))
    assert ftlab.count_parameters(ours)["trainable"] == ref.get_nb_trainable_parameters()[0]  # the same selection
    perturb_trainable(ours)
    ftlab.export_peft(ours, tmp_path)
    loaded = load_in_peft(base_model, tmp_path)
    back = ftlab.import_peft(copy.deepcopy(base_model), tmp_path)
    x = torch.randint(0, 500, (2, 9))
    with torch.no_grad():
        expected = loaded(x).logits
        assert max_diff(expected, base_model(x).logits) > 1e-4
        assert max_diff(ours(x).logits, expected) < TOL
        assert max_diff(back(x).logits, expected) < TOL
    if options.get("init_lora_weights") == "gaussian":
        fresh = ftlab.apply(copy.deepcopy(base_model), "lora", targets=["c_fc"], r=64, **options)
        A = fresh.transformer.h[0].mlp.c_fc.lora_A["default"].weight
        assert abs(A.std().item() - 1 / 64) < 2e-3  # N(0, 1/r^2), as peft's "gaussian"
