"""Bad or unusual inputs to the zoo, the measurements, generation and the model cache (issue 15).

Each case gets a correct result or a clear error that says what was wrong and what would be right,
and each test checks that nothing changed: the model (``untouched``), the files (``folder_state``),
the cache, the random state.
"""
import hashlib
import json
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn

from ftlab import zoo
from ftlab.align import cache
from ftlab.align.generate import generate_ids
from ftlab.measure import count_parameters, memory_report, time_step
from ftlab.train import fit
from ftlab.zoo import ModelNotAvailableError, load_bert, load_causal_lm, load_gpt2, load_resnet, load_tokenizer

from builders import resnet18

TINY = zoo.DATA_DIR / "gpt2_tiny"


def folder_state(folder: Path) -> dict:
    """Every file under ``folder`` with the SHA-256 of its bytes: equal before and after means untouched."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def gpt2_copy(tmp_path):
    shutil.copytree(TINY, tmp_path / "gpt2")
    return tmp_path / "gpt2"


@pytest.fixture
def llama_folder(tmp_path):
    """A small random Llama (1 layer, d=32) saved as safetensors with the tiny GPT-2's tokenizer files."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=3072, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    folder = tmp_path / "llama"
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY / name, folder / name)
    return folder


# ---------------------------------------------------------------- the zoo

def test_gpt2_folder_without_tokenizer_files_is_refused_instead_of_an_empty_tokenizer(gpt2_copy):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (gpt2_copy / name).unlink()
    before = folder_state(gpt2_copy)
    for load in (load_gpt2, load_tokenizer):  # before: a tokenizer of length 1 that encoded "Once upon" as []
        with pytest.raises(ModelNotAvailableError, match="has no tokenizer files .*tokenizer.save_pretrained"):
            load(str(gpt2_copy))
    assert folder_state(gpt2_copy) == before


def test_a_tokenizer_too_large_for_the_embeddings_is_refused(gpt2_copy):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (gpt2_copy / name).unlink()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(zoo.OFFLINE["bert"]["minilm"]() / name, gpt2_copy / name)  # MiniLM's 30,522 WordPieces
    before = folder_state(gpt2_copy)
    with pytest.raises(ModelNotAvailableError, match="30522 tokens but the model embeds only 3072.*do not belong"):
        load_gpt2(str(gpt2_copy))
    assert folder_state(gpt2_copy) == before


def test_load_bert_refuses_a_gpt2_folder_and_names_load_gpt2(gpt2_copy):
    before = folder_state(gpt2_copy)
    # before: a GPT2ForSequenceClassification
    with pytest.raises(ModelNotAvailableError, match=r"GPT-2 causal language model.*ftlab.zoo.load_gpt2\("):
        load_bert(str(gpt2_copy))
    assert folder_state(gpt2_copy) == before


def test_load_gpt2_refuses_a_bert_and_names_load_bert():
    with pytest.raises(ModelNotAvailableError, match=r"BERT-family encoder.*ftlab.zoo.load_bert\("):
        load_gpt2(str(zoo.OFFLINE["bert"]["minilm"]()))
    with pytest.raises(ModelNotAvailableError, match=r"load_causal_lm does not load: load it with ftlab.zoo.load_bert"):
        load_causal_lm(str(zoo.OFFLINE["bert"]["minilm"]()))


def test_load_gpt2_refuses_a_llama_and_load_causal_lm_loads_it(llama_folder):
    before = folder_state(llama_folder)
    with pytest.raises(ModelNotAvailableError, match=r"decoder-only causal language model.*load_causal_lm\("):
        load_gpt2(str(llama_folder))
    model, tokenizer = load_causal_lm(str(llama_folder))
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training and tokenizer.pad_token is not None
    assert folder_state(llama_folder) == before


@pytest.mark.parametrize("num_labels, error, message", [
    (0, ValueError, "at least 2, got 0"), (1, ValueError, "at least 2, got 1"), (-2, ValueError, "at least 2"),
    (2.5, TypeError, "whole number"), ("2", TypeError, "whole number"), (True, TypeError, "whole number")])
def test_degenerate_label_counts_are_errors(num_labels, error, message):
    start = time.perf_counter()
    with pytest.raises(error, match=f"num_labels must be .*{message}"):  # before: num_labels=0 gave a 0-output head
        load_bert(num_labels=num_labels)
    assert time.perf_counter() - start < 1  # refused before any weight is read


def test_load_bert_refuses_pickled_weights_without_unpickling_them(tmp_path):
    folder = tmp_path / "bert_bin"
    folder.mkdir()
    source = zoo.OFFLINE["bert"]["minilm"]()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(source / name, folder / name)
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):  # unpickling this creates the marker file
            return (open, (str(marker), "w"))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    before = folder_state(folder)
    with pytest.raises(ModelNotAvailableError, match=r"\['pytorch_model.bin'\] only.*safetensors only, never unpickl"):
        load_bert(str(folder))  # before: loaded by unpickling, guarded only by torch's weights_only default
    assert not marker.exists() and folder_state(folder) == before


def test_load_resnet_refuses_pickled_checkpoints(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(2, 512)}, path)
    with pytest.raises(ModelNotAvailableError, match="safetensors only.*save_file"):
        load_resnet(str(path))


@pytest.mark.parametrize("name", ["/no/such/folder", "./no_such_folder", "no/such/folder", "~/no_such_ftlab_model"])
def test_a_missing_local_path_says_it_does_not_exist_and_lists_the_offline_models(name):
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match=r"does not exist.*Offline choices: 'minilm'"):
        load_bert(name)  # before: huggingface_hub's "Repo id must be in the form ..."
    with pytest.raises(ModelNotAvailableError, match=r"does not exist.*Offline choices: 'scratch', 'tiny'"):
        load_gpt2(name)
    assert time.perf_counter() - start < 2


def test_a_file_instead_of_a_folder_is_refused(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="is a file, not a folder"):
        load_gpt2(str(TINY / "config.json"))


@pytest.mark.parametrize("name", [None, 3, ["tiny"], ""])
def test_a_model_name_that_is_not_a_string_is_a_type_error(name):
    with pytest.raises(TypeError, match="a model name must be a non-empty string"):
        load_gpt2(name)


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "On"])
def test_every_value_huggingface_hub_reads_as_offline_is_honoured(value, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)

    def no_network(*args, **kwargs):
        raise AssertionError("offline mode must not open a connection")

    monkeypatch.setattr(zoo.socket, "create_connection", no_network)
    assert zoo.hub_offline()
    with pytest.raises(ModelNotAvailableError, match="offline mode is on .*Offline choices: 'scratch', 'tiny'"):
        load_gpt2("somebody/some-gpt2")  # before: "true" was ignored and the hub was tried


@pytest.mark.parametrize("value", ["0", "false", "no", ""])
def test_other_values_of_hf_hub_offline_try_the_network(value, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    tried = []

    def unreachable(*args, **kwargs):
        tried.append(args[0])
        raise OSError("no network here")

    monkeypatch.setattr(zoo.socket, "create_connection", unreachable)
    assert not zoo.hub_offline()
    with pytest.raises(ModelNotAvailableError, match=r"the hub \(huggingface.co\) cannot be reached"):
        load_gpt2("somebody/some-gpt2")
    assert tried == [("huggingface.co", 443)]


def test_load_tokenizer_fails_fast_offline_and_loads_offline_names():
    start = time.perf_counter()  # prompt tuning's text init with a hub name spent 48 s in retries
    with pytest.raises(ModelNotAvailableError, match="cannot load tokenizer 'somebody/tok'.*'minilm', 'tiny'"):
        load_tokenizer("somebody/tok")
    assert time.perf_counter() - start < 2
    assert load_tokenizer("tiny")("Once upon a time")["input_ids"]
    assert load_tokenizer(str(TINY)).vocab == load_tokenizer("tiny").vocab


def test_quiet_silences_the_bitsandbytes_kernels_message_of_import_peft():
    code = "from ftlab.zoo import quiet\nwith quiet():\n    import peft\nprint('imported')"
    quiet_run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    loud_run = subprocess.run([sys.executable, "-c", "import peft"], capture_output=True, text=True, timeout=300)
    assert quiet_run.returncode == 0 and "imported" in quiet_run.stdout
    assert "kernels" not in quiet_run.stderr
    if "kernels" not in loud_run.stderr:
        pytest.skip("this machine's bitsandbytes logs nothing at import, so there is nothing to silence")


def test_quiet_hides_library_futurewarnings_but_not_the_users_own():
    import logging
    import warnings

    bnb_level = logging.getLogger("bitsandbytes").level
    library = {"category": FutureWarning, "filename": "modeling_utils.py", "lineno": 1,
               "module": "transformers.modeling_utils"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with zoo.quiet():
            warnings.warn_explicit("deprecated", **library)
            warnings.warn("mine", FutureWarning, stacklevel=1)
        warnings.warn_explicit("deprecated", **library)
    assert [str(w.message) for w in caught] == ["mine", "deprecated"]
    assert logging.getLogger("bitsandbytes").level == bnb_level


# ---------------------------------------------------------------- measurement leaves no trace

def test_memory_report_and_time_step_keep_batchnorm_statistics(untouched):
    model = resnet18()  # eval mode; the trial steps run in train mode and update the running statistics
    check = untouched(model)
    batch = (torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    memory_report(model, batch)
    time_step(model, batch, num_steps=1, warmup=0)
    check()  # every buffer (running_mean, running_var, num_batches_tracked) as before
    assert not model.training


def dropout_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))


def test_fit_after_memory_report_gives_the_same_losses_as_without():
    x, y = torch.randn(16, 8, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 3
    data = [(x, y)]
    model = dropout_net()
    torch.manual_seed(5)
    without = fit(model, data, num_steps=6, lr=0.05, progress=False, device="cpu")["loss"]
    model = dropout_net()
    torch.manual_seed(5)
    rng = torch.get_rng_state()
    memory_report(model, data[0])  # before: consumed the global RNG, so the dropout masks of fit changed
    time_step(model, data[0], num_steps=2, warmup=1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert fit(model, data, num_steps=6, lr=0.05, progress=False, device="cpu")["loss"] == without


def test_measuring_keeps_the_gradients_a_model_already_has():
    model = dropout_net()
    model(torch.randn(2, 8)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    memory_report(model, (torch.randn(4, 8), torch.tensor([0, 1, 2, 0])))
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


def test_count_parameters_of_a_model_without_parameters_is_zero_percent(capsys):
    counts = count_parameters(nn.ReLU(), verbose=True)  # before: ZeroDivisionError
    assert counts == {"trainable": 0, "total": 0, "percent": 0.0}
    assert capsys.readouterr().out.strip() == "trainable params: 0 || all params: 0 || trainable%: 0.0000"
    with pytest.raises(TypeError, match="expected a torch.nn.Module, got str"):
        count_parameters("model")


@pytest.mark.parametrize("call, error, message", [
    (lambda m, b: time_step(m, b, num_steps=0), ValueError, "num_steps must be at least 1"),
    (lambda m, b: time_step(m, b, warmup=-1), ValueError, "warmup must be at least 0"),
    (lambda m, b: time_step(m, b, lr=-1.0), ValueError, "lr must be greater than 0"),
    (lambda m, b: memory_report(m, b, lr="1e-3"), TypeError, "lr must be a number"),
    (lambda m, b: memory_report(m, b, optimizer="lion"), ValueError, "optimizer must be one of"),
])
def test_bad_measurement_options_fail_before_any_step(call, error, message, untouched):
    model = dropout_net()
    batch = (torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))
    check = untouched(model)
    rng = torch.get_rng_state()
    with pytest.raises(error, match=message):
        call(model, batch)
    check()
    assert torch.equal(torch.get_rng_state(), rng)


# ---------------------------------------------------------------- generation options

@pytest.mark.parametrize("options, error, message", [
    ({"max_new_tokens": 0}, ValueError, "max_new_tokens must be at least 1"),
    ({"max_new_tokens": 2.5}, TypeError, "max_new_tokens must be a whole number"),
    ({"temperature": "1"}, TypeError, "temperature must be a number"),
    ({"temperature": 0.0, "do_sample": True}, ValueError, "use do_sample=False for greedy"),
    ({"top_k": 0, "do_sample": True}, ValueError, "top_k must be at least 1"),
])
def test_bad_generation_options_are_refused_before_generating(tiny_gpt2_chat, options, error, message, untouched):
    model, tokenizer = tiny_gpt2_chat
    check = untouched(model)
    with pytest.raises(error, match=message):
        generate_ids(model, tokenizer, ["Question: hi\nAnswer:"], **options)
    check()


# ---------------------------------------------------------------- the model cache

def linear(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(4, 3)


def trainer(seed: int, calls: list):
    def train():
        calls.append(seed)
        return linear(seed), {"seed": seed}
    return train


def test_an_unwritable_cache_warns_and_still_returns_the_trained_model(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FTLAB_CACHE", str(blocker / "cache"))  # a cache under a file can never be created
    calls = []
    with pytest.warns(cache.CacheWarning, match=r"could not save the toy model to \$FTLAB_CACHE/toy-.*will be trained"):
        result = cache.load_or_train("toy", {"a": 1}, linear(0), trainer(1, calls))
    # before: trained for minutes, then raised and returned nothing
    assert result["source"] == "trained" and not result["saved"] and calls == [1]
    assert torch.equal(result["model"].weight, linear(1).weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.fixture
def entry(tmp_path):
    """A valid cache entry of kind "toy", settings {"a": 1}, holding linear(1)."""
    folder = cache.cache_folder("toy", {"a": 1}, tmp_path)
    assert cache.save_entry(linear(1), folder, "toy", {"a": 1}, {"seed": 1})
    return folder


def _foreign_weights(folder):
    from safetensors.torch import save_model

    save_model(linear(2), str(folder / "model.safetensors"))  # same names and shapes, another model


def _json_list(folder):
    (folder / "info.json").write_text("[1, 2, 3]")


def _older_version(folder):
    info = json.loads((folder / "info.json").read_text())
    (folder / "info.json").write_text(json.dumps({**info, "version": cache.CACHE_VERSION - 1}))


def _other_settings(folder):
    info = json.loads((folder / "info.json").read_text())
    (folder / "info.json").write_text(json.dumps({**info, "settings": {"a": 2}}))


def _truncated(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def _not_json(folder):
    (folder / "info.json").write_text("{ not json")


def _missing_weights(folder):
    (folder / "model.safetensors").unlink()


@pytest.mark.parametrize("damage, reason", [
    (_foreign_weights, "do not have the SHA-256 its info.json records"),
    (_json_list, "holds a JSON list, not an object"),
    (_older_version, f"written by cache version {cache.CACHE_VERSION - 1}, this is version {cache.CACHE_VERSION}"),
    (_other_settings, r"other settings \(a: 2 there, 1 here\)"),
    (_truncated, "do not have the SHA-256"),
    (_not_json, "cannot be read"),
    (_missing_weights, "cannot be read"),
])
def test_a_damaged_or_foreign_entry_is_detected_and_retrained(entry, damage, reason, untouched):
    damage(entry)
    model = linear(9)
    check = untouched(model)
    info, problem = cache.read_entry(model, entry, "toy", {"a": 1})
    assert info is None and problem is not None and re.search(reason, problem), problem
    check()  # nothing loaded into the model
    calls = []
    with pytest.warns(cache.CacheWarning, match=f"ignoring the cached toy model .*{reason}.*training it again"):
        result = cache.load_or_train("toy", {"a": 1}, model, trainer(3, calls), cache_dir=entry.parent)
    assert result["source"] == "trained" and calls == [3]
    fresh = linear(9)
    info, problem = cache.read_entry(fresh, entry, "toy", {"a": 1})  # the retrained entry replaced the damaged one
    assert problem is None and torch.equal(fresh.weight, linear(3).weight)


def test_weights_of_another_architecture_with_a_valid_hash_do_not_fit(entry, untouched):
    model = nn.Linear(4, 5)  # the entry holds a Linear(4, 3)
    check = untouched(model)
    info, problem = cache.read_entry(model, entry, "toy", {"a": 1})
    assert info is None and "do not fit this Linear: unknown [], other shapes ['bias', 'weight']" in problem
    check()


@pytest.mark.parametrize("source", ["bogus", "cache", None])
def test_an_unknown_source_is_refused_before_anything_is_trained_or_written(source, tmp_path):
    calls = []
    with pytest.raises(ValueError, match="source must be one of 'auto', 'shipped', 'train'"):
        cache.load_or_train("toy", {"a": 1}, linear(0), trainer(1, calls), source=source, cache_dir=tmp_path)
    assert calls == [] and list(tmp_path.iterdir()) == []


def test_source_shipped_without_shipped_files_says_how_to_make_them(tmp_path):
    calls = []
    with pytest.raises(ValueError, match=r"shipped toy model \(data/toy_tiny\) cannot be used: it is missing.*"
                                         r"tools/train_alignment_models.py"):
        cache.load_or_train("toy", {"a": 1}, linear(0), trainer(1, calls), source="shipped", cache_dir=tmp_path)
    assert calls == [] and list(tmp_path.iterdir()) == []
