"""The shipped tiny GPT-2: it loads offline, gives its recorded perplexity, and the zoo fails clearly."""
import importlib.util
import json
import re
import shutil

import pytest
import torch
from safetensors import safe_open

from ftlab import zoo
from ftlab.lm import lm_loader, perplexity
from ftlab.measure import count_parameters
from ftlab.tasks.corpus import make_corpus

TINY = zoo.DATA_DIR / "gpt2_tiny"
METRICS = json.loads((TINY / "metrics.json").read_text())
ROOT = zoo.DATA_DIR.parent


@pytest.fixture(scope="module")
def tiny():
    return zoo.load_gpt2()


@pytest.fixture(scope="module")
def check_docs():
    """The validation documents whose perplexity metrics.json records as ``check_perplexity``."""
    settings = METRICS["settings"]
    return make_corpus(settings["seed"], settings["corpus_sizes"])["validation"][:METRICS["check_docs"]]


def test_tiny_gpt2_reproduces_its_recorded_validation_perplexity(tiny, check_docs):
    model, tokenizer = tiny
    measured = perplexity(model, lm_loader(check_docs, tokenizer, batch_size=8))
    assert measured == pytest.approx(METRICS["check_perplexity"], rel=1e-4)


def test_tiny_gpt2_has_4_to_10m_parameters_and_beats_the_unigram_baseline(tiny):
    model, _ = tiny
    assert 4e6 <= count_parameters(model)["total"] == METRICS["parameters"] <= 10e6
    assert METRICS["validation_perplexity"] < METRICS["unigram_validation_perplexity"] / 10
    card = (TINY / "README.md").read_text()
    assert f"{METRICS['validation_perplexity']:.3f}" in card
    assert f"{METRICS['unigram_validation_perplexity']:.2f}" in card


def test_tiny_gpt2_is_stored_as_float16_safetensors_under_25_mb():
    assert sum(f.stat().st_size for f in TINY.iterdir()) < 25e6
    with safe_open(TINY / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # noqa: SIM118 (safe_open has no __iter__)


def test_shipped_tokenizer_round_trips_text_and_pads_with_its_own_token(tiny, check_docs):
    model, tokenizer = tiny
    assert any("\n" in doc for doc in check_docs)  # dialogues, with newlines, are among them
    for doc in check_docs:
        assert tokenizer.decode(tokenizer(doc)["input_ids"]) == doc
    assert len(tokenizer) == model.config.vocab_size == METRICS["settings"]["vocab_size"]
    assert tokenizer.bos_token == tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>"


def test_tiny_gpt2_samples_use_the_words_of_the_synthetic_language(tiny):
    model, tokenizer = tiny
    known = set()
    for doc in make_corpus(0, {"train": 3000, "validation": 1, "test": 1})["train"]:
        known |= set(re.findall(r"[A-Za-z]+", doc))
    torch.manual_seed(0)
    bos = torch.tensor([[tokenizer.bos_token_id]])
    samples = model.generate(bos, attention_mask=torch.ones_like(bos), do_sample=True, top_k=50, max_new_tokens=60,
                             num_return_sequences=3, pad_token_id=tokenizer.pad_token_id)
    words = [w for s in samples for w in re.findall(r"[A-Za-z]+", tokenizer.decode(s, skip_special_tokens=True))]
    assert len(words) > 60
    assert sum(w in known for w in words) / len(words) > 0.95


def test_scratch_gpt2_has_the_tiny_architecture_and_seeded_random_weights(tiny, check_docs):
    model, tokenizer = tiny
    scratch, scratch_tokenizer = zoo.load_gpt2("scratch", seed=0)
    assert len(scratch_tokenizer) == len(tokenizer)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in scratch.state_dict().items()} == shapes
    assert {p.dtype for p in scratch.parameters()} == {torch.float32}  # trainable as loaded, like "tiny"
    again, _ = zoo.load_gpt2("scratch", seed=0)
    other, _ = zoo.load_gpt2("scratch", seed=1)
    w = "transformer.h.0.attn.c_attn.weight"
    assert torch.equal(scratch.state_dict()[w], again.state_dict()[w])
    assert not torch.equal(scratch.state_dict()[w], other.state_dict()[w])
    assert perplexity(scratch, lm_loader(check_docs[:8], tokenizer)) > METRICS["unigram_validation_perplexity"]


def test_load_gpt2_from_a_local_folder_gives_the_same_weights(tiny, tmp_path):
    shutil.copytree(TINY, tmp_path / "copy")
    model, _ = zoo.load_gpt2(str(tmp_path / "copy"))
    for key, value in tiny[0].state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def test_load_gpt2_offline_with_a_hub_name_lists_the_offline_choices(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(zoo.ModelNotAvailableError, match="Offline choices: 'scratch', 'tiny'"):
        zoo.load_gpt2("nobody-here/no-such-gpt2")


def test_load_gpt2_damaged_or_missing_weights_raise_a_clear_error(tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(TINY, folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(zoo.ModelNotAvailableError, match="could not load gpt2 model .* Offline choices"):
        zoo.load_gpt2(str(folder))
    (folder / "model.safetensors").unlink()
    with pytest.raises(zoo.ModelNotAvailableError, match="model.safetensors"):
        zoo.load_gpt2(str(folder))


def test_missing_shipped_checkpoint_says_how_to_regenerate_it(monkeypatch, tmp_path):
    monkeypatch.setitem(zoo.OFFLINE["gpt2"], "tiny", lambda: tmp_path)
    with pytest.raises(zoo.ModelNotAvailableError, match="tools/pretrain_gpt2.py"):
        zoo.load_gpt2("tiny")


def test_pretrain_script_regenerates_identical_files(tmp_path):
    spec = importlib.util.spec_from_file_location("pretrain_gpt2", ROOT / "tools" / "pretrain_gpt2.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    settings = dict(vocab_size=400, n_layer=1, n_embd=32, n_head=2, n_positions=256, num_steps=3, batch_size=4,
                    lr=1e-3, warmup_steps=0, seed=0, corpus_sizes={"train": 120, "validation": 40, "test": 8})
    first = script.pretrain(tmp_path / "a", sample_tokens=8, progress=False, **settings)
    second = script.pretrain(tmp_path / "b", sample_tokens=8, progress=False, **settings)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert first["check_perplexity"] == second["check_perplexity"]
    assert first["samples"] == second["samples"]
