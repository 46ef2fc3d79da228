"""estimate_memory: counted on the meta device, checked against memory_report, transformers and published figures."""
import copy
import re

import pytest
import torch
import transformers

import ftlab
from ftlab.estimate import CONFIGS, estimate_memory, load_config, nf4_bytes
from ftlab.measure import SavedActivations, count_parameters, memory_report
from ftlab.methods import nf4
from ftlab.zoo import ModelNotAvailableError, load_gpt2, load_resnet

B, T, IMAGE = 4, 16, 32
EXACT_PARTS = ["weights_trainable", "weights_frozen", "buffers", "gradients", "optimizer_state"]
GB = 1e9


def model_states(row: dict) -> int:
    """Weights, buffers, gradients and optimizer state: ZeRO's "model states"."""
    return sum(row[part] for part in EXACT_PARTS)


def text_batch(classifier: bool, vocab: int = 3000) -> dict:
    ids = torch.randint(5, vocab, (B, T), generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(B, dtype=torch.long) if classifier else ids
    return {"input_ids": ids, "attention_mask": torch.ones(B, T, dtype=torch.long), "labels": labels}


@pytest.fixture
def offline_models(minilm):
    """name -> (model, batch, length option, head trained in full) for the lab's three offline models."""
    image_batch = (torch.randn(B, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0)), torch.arange(B))
    return {
        "minilm": (minilm[0], text_batch(True), {"seq_len": T}, ["classifier"]),
        "gpt2": (load_gpt2()[0], text_batch(False), {"seq_len": T}, None),
        "resnet18": (load_resnet(), image_batch, {"image_size": IMAGE}, ["fc"]),
    }


CASES = [(model, method, options) for model in ("minilm", "gpt2", "resnet18")
         for method, options in [("full", {}), ("lora", {"r": 4}), ("qlora", {}), ("qlora", {"double_quant": False}),
                                 ("adapter", {}), ("prefix", {"num_virtual_tokens": 5})]
         if not (model == "resnet18" and method in ("qlora", "prefix"))]


@pytest.mark.parametrize("name,method,options", CASES)
def test_estimate_equals_memory_report_on_the_offline_models(offline_models, name, method, options):
    model, batch, length, head = offline_models[name]
    options = {**options, **({"modules_to_save": head} if head and method != "full" else {})}
    measured = memory_report(ftlab.apply(copy.deepcopy(model), method, **options), batch)
    estimated = estimate_memory(model, method, batch_size=B, **length, device="cpu", **options)
    assert {part: estimated[part] for part in EXACT_PARTS} == {part: measured[part] for part in EXACT_PARTS}
    assert estimated["activations"] == pytest.approx(measured["activations"], rel=0.10)
    assert estimated["total"] == pytest.approx(measured["total"], rel=0.10)


@pytest.mark.parametrize("method", ["qlora", "prefix"])
def test_estimate_refuses_a_method_that_does_not_apply_with_the_methods_own_error(method):
    with pytest.raises((ValueError, TypeError)) as applied:
        ftlab.apply(load_resnet(), method)
    with pytest.raises(type(applied.value), match=re.escape(str(applied.value))):
        estimate_memory(load_resnet(), method, batch_size=B, image_size=IMAGE)


def test_sgd_keeps_no_state_in_fp32_and_only_the_master_copy_in_mixed_precision(offline_models):
    model, batch, length, _ = offline_models["gpt2"]
    measured = memory_report(ftlab.apply(copy.deepcopy(model), "lora"), batch, optimizer="sgd")
    estimated = estimate_memory(model, "lora", batch_size=B, **length, optimizer="sgd", device="cpu")
    assert estimated["optimizer_state"] == measured["optimizer_state"] == 0
    mixed = estimate_memory(model, "lora", batch_size=B, **length, optimizer="sgd", precision="bf16-mixed")
    assert mixed["optimizer_state"] == 4 * mixed["trainable_parameters"]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_estimate_equals_memory_report_in_pure_bf16(offline_models, method):
    model, batch, length, _ = offline_models["gpt2"]
    measured = memory_report(ftlab.apply(copy.deepcopy(model).to(torch.bfloat16), method), batch)
    estimated = estimate_memory(model, method, batch_size=B, **length, precision="bf16", device="cpu")
    assert {part: estimated[part] for part in EXACT_PARTS} == {part: measured[part] for part in EXACT_PARTS}
    assert estimated["optimizer_state"] == 2 * estimated["weights_trainable"]  # two bf16 moments
    assert estimated["activations"] == pytest.approx(measured["activations"], rel=0.10)


def small_config(family: str):
    """A small random config of each family the estimator builds from configs."""
    shared = {"vocab_size": 500, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 128}
    if family == "gpt2":
        return transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500, n_positions=64)
    if family == "bert":
        return transformers.BertConfig(**shared, max_position_embeddings=64, num_labels=3)
    config_class = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
                    "qwen2": transformers.Qwen2Config}[family]
    return config_class(**shared, num_key_value_heads=2)


@pytest.mark.parametrize("family", ["gpt2", "bert", "llama", "mistral", "qwen2"])
def test_a_configs_parameters_are_counted_exactly_as_transformers_builds_them(family):
    config = small_config(family)
    auto = transformers.AutoModelForSequenceClassification if family == "bert" else transformers.AutoModelForCausalLM
    built = auto.from_config(config, dtype=torch.float32)
    estimated = estimate_memory(config, "full", batch_size=1, seq_len=8)
    assert estimated["parameters"] == estimated["trainable_parameters"] == count_parameters(built)["total"]
    assert estimated["weights_trainable"] == 4 * count_parameters(built)["total"]
    assert estimated["buffers"] == sum(b.numel() * b.element_size() for b in built.buffers())


@pytest.mark.parametrize("name,parameters", [
    ("llama-7b", 6_738_415_616), ("llama-13b", 13_015_864_320), ("llama-70b", 68_976_648_192),
    ("mistral-7b", 7_241_732_096), ("qwen2-7b", 7_615_616_512), ("gpt2", 124_439_808), ("gpt2-xl", 1_557_611_200),
])
def test_catalogue_architectures_have_their_published_parameter_counts(name, parameters):
    # the counts the model cards report for the released checkpoints
    assert estimate_memory(name, "full", batch_size=1, seq_len=8)["parameters"] == parameters


def test_offline_catalogue_names_are_the_zoo_models_architectures(offline_models):
    for name in ("minilm", "gpt2", "resnet18"):
        model, _, length, _ = offline_models[name]
        catalogue = "gpt2-tiny" if name == "gpt2" else name
        estimated = estimate_memory(catalogue, "full", batch_size=2, **length)
        assert estimated["parameters"] == count_parameters(model)["total"]


def test_a_local_folder_with_config_json_is_read(tmp_path):
    small_config("llama").save_pretrained(tmp_path)
    assert estimate_memory(str(tmp_path), "full", batch_size=1, seq_len=8)["parameters"] == \
        estimate_memory(small_config("llama"), "full", batch_size=1, seq_len=8)["parameters"]


def test_a_hub_name_that_is_not_cached_is_a_clear_error_not_a_download():
    with pytest.raises(ModelNotAvailableError, match="not in the local Hugging Face cache.*llama-7b"):
        load_config("someone/no-such-model-here")


@pytest.mark.parametrize("shape", [(64, 64), (37, 101), (1, 3), (384, 1536), (300, 700)])
@pytest.mark.parametrize("double_quant,block_size", [(True, 64), (False, 64), (True, 128)])
def test_nf4_bytes_equal_what_quantize_stores(shape, double_quant, block_size):
    q = nf4.quantize(torch.randn(shape), block_size=block_size, double_quant=double_quant)
    stored = sum(t.numel() * t.element_size() for t in q.tensors().values())
    assert nf4_bytes(q.numel, block_size, double_quant) == stored


def test_nf4_with_double_quantisation_costs_4_127_bits_per_weight():
    n = 4096 * 11008
    assert 8 * nf4_bytes(n) / n == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=1e-6)
    assert 8 * nf4_bytes(n, double_quant=False) / n == pytest.approx(4.5, abs=1e-6)


def test_checkpointing_keeps_block_inputs_and_recomputes_one_block(minilm):
    model, _ = minilm
    batch = text_batch(True)
    estimated = estimate_memory(model, "full", batch_size=B, seq_len=T, gradient_checkpointing=True, device="cpu")
    without = estimate_memory(model, "full", batch_size=B, seq_len=T, device="cpu")
    checkpointed = copy.deepcopy(model)
    checkpointed.activation_checkpointing_enable()
    kept = memory_report(checkpointed, batch)["activations"]
    assert estimated["activations"] - estimated["activations_recomputed"] == pytest.approx(kept, rel=0.10)
    # one layer run on its own saves what its recomputation saves, plus its input (which checkpointing kept)
    inputs = {}
    layer = model.bert.encoder.layer[0]
    handle = layer.register_forward_pre_hook(lambda module, args: inputs.setdefault("x", args[0]))
    model.train()
    model(**batch)
    handle.remove()
    with SavedActivations(model) as saved:
        layer(inputs["x"])
    recomputed = saved.bytes - inputs["x"].numel() * inputs["x"].element_size()
    assert estimated["activations_recomputed"] == pytest.approx(recomputed, rel=0.10)
    assert estimated["activations"] < without["activations"] / 2


def test_fused_attention_is_counted_as_pytorch_runs_it():
    # Llama has no attention dropout: the CPU runs the fused kernel, which keeps no (T, T) weights
    config = small_config("llama")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    measured = memory_report(model, {"input_ids": text_batch(False, 500)["input_ids"],
                                     "labels": text_batch(False, 500)["input_ids"]})
    on = {device: estimate_memory(model, "full", batch_size=B, seq_len=T, device=device) for device in ("cpu", "cuda")}
    assert on["cpu"]["activations"] == pytest.approx(measured["activations"], rel=0.10)
    assert on["cpu"]["activations"] == on["cuda"]["activations"]
    # MiniLM has attention dropout: the CPU keeps the weights, CUDA's kernels do not
    minilm = {device: estimate_memory("minilm", "full", batch_size=B, seq_len=T, device=device)
              for device in ("cpu", "cuda")}
    assert minilm["cuda"]["activations"] < minilm["cpu"]["activations"]


# ---------------------------------------------------------------- published figures

def test_mixed_precision_adamw_keeps_16_bytes_per_parameter_and_24_gb_for_the_1_5b_gpt2():
    # ZeRO (Rajbhandari et al. 2020, section 3.1): 2 + 2 + (4 + 4 + 4) = 16 bytes; "at least 24 GB" for GPT-2 1.5B
    for precision in ("bf16-mixed", "fp16-mixed", "fp32"):
        row = estimate_memory("gpt2-xl", "full", batch_size=1, seq_len=8, precision=precision)
        assert model_states(row) == 16 * row["parameters"]
    row = estimate_memory("gpt2-xl", "full", batch_size=1, seq_len=8, precision="bf16-mixed")
    assert row["parameters"] == 1_557_611_200  # 1.56B: 24.9 GB, where the paper rounds to 1.5B and 24 GB
    assert model_states(row) / GB == pytest.approx(24.9, abs=0.05)
    assert model_states(estimate_memory("gpt2-xl", "full", batch_size=1, seq_len=8, precision="bf16")) == \
        8 * row["parameters"]


def test_lora_on_gpt3_175b_cuts_training_memory_from_over_1_2_tb_to_about_350_gb():
    # LoRA (Hu et al. 2021, section 4.2): "from 1.2TB to 350GB" with r=4 on the query and value projections
    settings = {"batch_size": 1, "seq_len": 2048, "precision": "bf16", "gradient_checkpointing": True,
                "device": "cuda"}
    full = estimate_memory("gpt3-175b", "full", **settings)
    lora = estimate_memory("gpt3-175b", "lora", r=4, **settings)
    assert full["total"] > 1.2e12
    assert model_states(lora) / GB == pytest.approx(350, rel=0.01)
    assert lora["total"] / GB == pytest.approx(350, rel=0.05)


def test_qlora_fine_tunes_llama_65b_under_48_gb_where_16_bit_needs_over_780_gb():
    # QLoRA (Dettmers et al. 2023, section 1): "more than 780 GB" in 16 bits; "a single 48GB GPU" with QLoRA
    settings = {"batch_size": 1, "seq_len": 512, "gradient_checkpointing": True, "device": "cuda"}
    full = estimate_memory("llama-65b", "full", precision="bf16-mixed", **settings)
    qlora = estimate_memory("llama-65b", "qlora", r=64, lora_alpha=16, precision="bf16", **settings)
    assert full["total"] > 780 * GB
    assert qlora["total"] < 48 * GB
    assert qlora["buffers"] / qlora["parameters"] < 0.6  # NF4: about 0.52 bytes per base weight


# ---------------------------------------------------------------- bad input

def test_bad_input_errors_say_what_would_be_right(minilm, untouched):
    model, _ = minilm
    check = untouched(model)
    with pytest.raises(ValueError, match="method must be one of"):
        estimate_memory(model, "lorax", batch_size=1, seq_len=8)
    with pytest.raises(ValueError, match="precision must be one of.*bf16-mixed"):
        estimate_memory(model, "lora", batch_size=1, seq_len=8, precision="int8")
    with pytest.raises(ValueError, match="device must be one of 'cuda', 'cpu'"):
        estimate_memory(model, "lora", batch_size=1, seq_len=8, device="tpu")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        estimate_memory(model, "lora", batch_size=0, seq_len=8)
    with pytest.raises(ValueError, match="longer than the model's context of 512"):
        estimate_memory(model, "lora", batch_size=1, seq_len=513)
    with pytest.raises(ValueError, match="takes seq_len="):
        estimate_memory(model, "lora", batch_size=1, image_size=224)
    with pytest.warns(UserWarning, match="only add parameters"):  # counted as asked, with the method's warning
        estimate_memory(model, "lora", batch_size=1, seq_len=8, r=1000)
    check()
    with pytest.raises(ValueError, match="takes image_size="):
        estimate_memory("resnet18", "lora", batch_size=1, seq_len=8)
    with pytest.raises(TypeError, match="supports transformers models .* and torchvision ResNets"):
        estimate_memory(torch.nn.Linear(4, 4), "full", batch_size=1, seq_len=8)
    with pytest.raises(ModelNotAvailableError, match="Catalogue names: gpt2, "):
        estimate_memory("llama-8b", "lora", batch_size=1, seq_len=8)


def test_estimating_leaves_a_real_model_as_it_was(minilm, untouched):
    model, _ = minilm
    model.eval()
    check = untouched(model)
    estimate_memory(model, "qlora", batch_size=2, seq_len=8, gradient_checkpointing=True)
    check()
    assert not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_every_catalogue_entry_names_its_source():
    assert all(entry["source"] for entry in CONFIGS.values())


# ---------------------------------------------------------------- table, plot, command line

def test_memory_by_model_size_has_one_row_per_model_method_and_precision_and_plots_a_line_each():
    import matplotlib.pyplot as plt

    from ftlab.estimate import memory_by_model_size
    from ftlab.viz import plot_memory_by_model_size

    df = memory_by_model_size(("gpt2-tiny", "gpt2"), precisions=("fp32", "bf16"), seq_len=64)
    assert len(df) == 2 * 3 * 2
    lora = df[(df["method"] == "lora") & (df["model"] == "gpt2") & (df["precision"] == "fp32")].iloc[0]
    assert lora["total"] == estimate_memory("gpt2", "lora", targets="all-linear", batch_size=1, seq_len=64,
                                            gradient_checkpointing=True, device="cuda")["total"]
    before = plt.get_fignums()
    fig = plot_memory_by_model_size(df, gpus=(16, 24))
    assert plt.get_fignums() == before  # closed: the notebook shows it once
    ax = fig.axes[0]
    assert len(ax.lines) == 3 * 2 + 2  # a line per method and precision, one per GPU
    assert [t.get_text() for t in ax.texts] == ["16 GB GPU", "24 GB GPU"]


def test_command_line_prints_the_parts_as_a_table(capsys):
    from ftlab.__main__ import main

    assert main(["estimate", "--model", "gpt2-tiny", "--method", "qlora", "--batch", "4", "--seq", "64",
                 "--option", "r=4"]) == 0
    out = capsys.readouterr().out
    row = estimate_memory("gpt2-tiny", "qlora", r=4, batch_size=4, seq_len=64, precision="bf16-mixed",
                          device="cuda")
    assert "qlora, batch 4 x 64 tokens, bf16-mixed, adamw, gradient checkpointing off" in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()[4:]}
    for part in ("weights_trainable", "weights_frozen", "buffers", "gradients", "optimizer_state", "activations",
                 "total"):
        assert int(lines[part][0]) == row[part]  # bytes, then MiB and share
    assert f"trainable params: {row['trainable_parameters']:,d}" in out


def test_command_line_bad_input_exits_with_the_estimators_message(capsys):
    from ftlab.__main__ import main

    with pytest.raises(SystemExit) as exit_code:
        main(["estimate", "--model", "gpt2-tiny", "--seq", "64", "--method", "lora", "--option", "r=0"])
    assert exit_code.value.code == 2
    assert "r must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["estimate", "--model", "llama-7b", "--option", "r"])
    assert "--option takes KEY=VALUE" in capsys.readouterr().err
