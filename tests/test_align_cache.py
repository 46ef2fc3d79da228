"""The model cache and the shipped SFT and reward models: shipped, cached or trained, atomic writes, provenance."""
import importlib.util
import json
import multiprocessing

import pytest
import torch
from safetensors import safe_open
from torch import nn

import ftlab.align.reward as reward
import ftlab.align.sft as sft
from ftlab.align import cache
from ftlab.align.generate import generate
from ftlab.align.reward import REWARD_CLASSROOM, reward_cache_settings, score
from ftlab.align.sft import SFT_CLASSROOM, sft_cache_settings
from ftlab.zoo import DATA_DIR, load_gpt2

ROOT = DATA_DIR.parent
TINY = {"num_steps": 2, "warmup_steps": 0, "batch_size": 4}  # small enough to train in seconds


def shipped_info(kind: str) -> dict:
    """The info.json of the shipped ``kind`` model (data/<kind>_tiny)."""
    path = DATA_DIR / f"{kind}_tiny" / "info.json"
    if not path.is_file():
        pytest.fail(f"{cache.display_path(path)} is missing: run `python tools/train_alignment_models.py`")
    return json.loads(path.read_text())


def linear(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(4, 3)


def trainer(seed: int, calls: list):
    """A ``train`` for ``load_or_train`` that returns ``linear(seed)`` and records that it ran."""
    def train():
        calls.append(seed)
        return linear(seed), {"seed": seed}
    return train


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


# ---------------------------------------------------------------- load_or_train and entries

def test_load_or_train_trains_once_then_loads_the_saved_weights(tmp_path):
    calls = []
    first = cache.load_or_train("toy", {"a": 1}, linear(9), trainer(1, calls), cache_dir=tmp_path)
    second = cache.load_or_train("toy", {"a": 1}, linear(9), trainer(2, calls), cache_dir=tmp_path)
    assert (first["source"], second["source"], calls) == ("trained", "cache", [1])
    assert same_weights(second["model"], linear(1)) and second["results"] == {"seed": 1}
    assert first["saved"] and first["folder"] == second["folder"]
    # source="train" trains again and replaces the entry; nothing is left behind but the entry
    third = cache.load_or_train("toy", {"a": 1}, linear(9), trainer(3, calls), source="train", cache_dir=tmp_path)
    assert third["source"] == "trained" and calls == [1, 3]
    fourth = cache.load_or_train("toy", {"a": 1}, linear(9), trainer(4, calls), cache_dir=tmp_path)
    assert same_weights(fourth["model"], linear(3))
    assert [p.name for p in tmp_path.iterdir()] == [cache.cache_folder("toy", {"a": 1}, tmp_path).name]


def test_cache_key_changes_with_every_setting_and_ignores_their_order(tmp_path):
    settings = sft_cache_settings(SFT_CLASSROOM)
    folder = cache.cache_folder("sft", settings, tmp_path)
    assert folder == cache.cache_folder("sft", dict(reversed(list(settings.items()))), tmp_path)
    for key, other in (("lr", 1e-3), ("base", "0" * 64), ("version", cache.CACHE_VERSION + 1), ("seed", 1)):
        assert cache.cache_folder("sft", {**settings, key: other}, tmp_path) != folder, key
    assert settings["version"] == cache.CACHE_VERSION and len(settings["base"]) == 64


def test_entries_record_the_sha256_and_shapes_of_their_weights(tmp_path):
    model = linear(0)
    assert cache.save_entry(model, tmp_path / "e", "toy", {"a": 1}, {"note": 1})
    info = json.loads((tmp_path / "e" / "info.json").read_text())
    assert info["sha256"] == cache.file_sha256(tmp_path / "e" / "model.safetensors")
    assert info["shapes"] == {"bias": [3], "weight": [3, 4]} and info["version"] == cache.CACHE_VERSION
    loaded, problem = cache.read_entry(linear(5), tmp_path / "e", "toy", {"a": 1})
    assert problem is None and loaded["results"] == {"note": 1}


def test_float16_entries_take_half_the_bytes_and_load_the_rounded_weights(tmp_path):
    model = linear(0)
    cache.save_entry(model, tmp_path / "half", "toy", {}, {}, dtype=torch.float16)
    cache.save_entry(model, tmp_path / "full", "toy", {}, {})
    with safe_open(tmp_path / "half" / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # noqa: SIM118 (safe_open has no __iter__)
    into = linear(7)
    cache.read_entry(into, tmp_path / "half", "toy", {})
    assert into.weight.dtype == torch.float32 and model.weight.dtype == torch.float32  # the original is not converted
    assert torch.equal(into.weight, model.weight.half().float())


def test_tied_weights_are_stored_once_and_stay_tied(tiny_gpt2_chat, tmp_path):
    model, _ = tiny_gpt2_chat
    cache.save_entry(model, tmp_path / "g", "toy", {}, {})
    with safe_open(tmp_path / "g" / "model.safetensors", "pt") as f:
        assert len([k for k in f.keys() if k.endswith("wte.weight") or k == "lm_head.weight"]) == 1  # noqa: SIM118
    fresh = type(model)(model.config).eval()
    info, problem = cache.read_entry(fresh, tmp_path / "g", "toy", {})
    assert problem is None and same_weights(fresh, model)
    assert fresh.lm_head.weight.data_ptr() == fresh.transformer.wte.weight.data_ptr()


def _write(folder, seed):
    cache.save_entry(linear(seed), folder, "toy", {"a": 1}, {"seed": seed})


def test_two_processes_writing_one_key_leave_one_whole_entry(tmp_path):
    folder = tmp_path / "toy-key"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write, args=(folder, seed)) for seed in (1, 2, 3, 4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    assert [p.name for p in tmp_path.iterdir()] == ["toy-key"]  # no .partial or .stale folder left
    model = linear(0)
    info, problem = cache.read_entry(model, folder, "toy", {"a": 1})
    assert problem is None  # weights and info.json come from one writer: the SHA-256 matches
    assert same_weights(model, linear(info["results"]["seed"]))


def test_cache_paths_are_shown_relative_to_the_cache_or_the_repository(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLAB_CACHE", str(tmp_path))
    shown = cache.load_or_train("toy", {"a": 1}, linear(0), trainer(1, []))["folder"]
    assert shown.startswith("$FTLAB_CACHE/toy-") and str(tmp_path) not in shown
    assert cache.display_path(DATA_DIR / "sft_tiny") == "data/sft_tiny"
    monkeypatch.delenv("FTLAB_CACHE")
    assert cache.display_path(cache.default_cache_dir() / "sft-x") == "~/.cache/ftlab/sft-x"


# ---------------------------------------------------------------- sft_model and reward_model

def test_sft_and_reward_models_train_once_then_load_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(sft, "SFT_SETTINGS", {**sft.SFT_SETTINGS, **TINY})
    monkeypatch.setattr(reward, "REWARD_SETTINGS", {**reward.REWARD_SETTINGS, **TINY})
    first = reward.reward_model(cache_dir=tmp_path, progress=False)
    second = reward.reward_model(cache_dir=tmp_path, progress=False)
    assert (first["source"], first["sft"]["source"]) == ("trained", "trained")
    assert (second["source"], second["sft"]["source"]) == ("cache", "cache") and second["cached"]
    assert second["by_kind"] == first["by_kind"] and second["sft"]["after"] == first["sft"]["after"]
    assert same_weights(first["model"], second["model"]) and len(second["loss"]) == TINY["num_steps"]
    assert second["settings"]["sft"] == cache.settings_key(second["sft"]["settings"])
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["reward", "sft"]
    # notebook 11's lesson: the reward model trains live, on the SFT model it finds (here the cached one)
    live = reward.reward_model(source="train", cache_dir=tmp_path, progress=False)
    assert (live["source"], live["sft"]["source"]) == ("trained", "cache")


def test_shipped_models_are_not_used_when_their_settings_differ(tmp_path):
    # FAST mode (the tests) trains 20 steps, not the shipped classroom settings
    assert sft.SFT_SETTINGS != SFT_CLASSROOM
    with pytest.raises(ValueError, match="shipped sft model .*other settings.*tools/train_alignment_models.py"):
        sft.sft_model(source="shipped", cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the shipped models

@pytest.mark.parametrize("kind", ["sft", "reward"])
def test_shipped_model_was_made_with_the_codes_current_settings(kind):
    expected = {"sft": sft_cache_settings(SFT_CLASSROOM),
                "reward": reward_cache_settings(sft_cache_settings(SFT_CLASSROOM), REWARD_CLASSROOM)}[kind]
    info = shipped_info(kind)
    assert (info["version"], info["settings"]) == (cache.CACHE_VERSION, expected), (
        f"data/{kind}_tiny no longer matches the code's settings: run `{info['results']['provenance']['command']}` "
        f"and commit data/sft_tiny and data/reward_tiny")


@pytest.mark.parametrize("kind", ["sft", "reward"])
def test_shipped_model_is_float16_safetensors_of_a_few_mb_with_its_card(kind):
    folder = DATA_DIR / f"{kind}_tiny"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "info.json", "model.safetensors"]
    assert 4e6 < (folder / "model.safetensors").stat().st_size < 10e6
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # noqa: SIM118 (safe_open has no __iter__)
    card, info = (folder / "README.md").read_text(), shipped_info(kind)
    after = info["results"]["after"]
    assert f"{(after['all'] if kind == 'sft' else after):.3f}" in card
    base = info["settings"]["base"] if kind == "sft" else shipped_info("sft")["settings"]["base"]
    assert base in card and base == cache.file_sha256(DATA_DIR / "gpt2_tiny" / "model.safetensors")
    for word in ("tools/train_alignment_models.py", info["results"]["provenance"]["date"], "torch thread"):
        assert word in card


@pytest.fixture
def classroom_settings(monkeypatch):
    monkeypatch.setattr(sft, "SFT_SETTINGS", SFT_CLASSROOM)
    monkeypatch.setattr(reward, "REWARD_SETTINGS", REWARD_CLASSROOM)


def test_shipped_sft_model_loads_and_reproduces_its_recorded_answers(classroom_settings, tmp_path):
    loaded = sft.sft_model(cache_dir=tmp_path, progress=False)  # "auto" prefers the shipped files to the cache
    assert (loaded["source"], loaded["folder"], loaded["cached"]) == ("shipped", "data/sft_tiny", True)
    check = shipped_info("sft")["results"]["check"]
    assert generate(loaded["model"], loaded["tokenizer"], check["prompts"]) == check["answers"]
    assert list(tmp_path.iterdir()) == []  # nothing trained, nothing cached


def test_shipped_reward_model_loads_and_reproduces_its_recorded_rewards(classroom_settings, tmp_path):
    loaded = reward.reward_model(source="shipped", cache_dir=tmp_path, progress=False)
    assert (loaded["source"], loaded["sft"]["source"]) == ("shipped", "shipped")
    check = shipped_info("reward")["results"]["check"]
    rewards = score(loaded["model"], loaded["sft"]["tokenizer"], check["prompts"], check["responses"])
    assert rewards.tolist() == pytest.approx(check["rewards"], abs=1e-4)


def test_the_shipping_script_writes_entries_that_load_and_reproduce_their_checks(tmp_path, monkeypatch):
    path = ROOT / "tools" / "train_alignment_models.py"
    spec = importlib.util.spec_from_file_location("train_alignment_models", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(script, "SFT_SETTINGS", {**script.SFT_SETTINGS, **TINY})
    monkeypatch.setattr(script, "REWARD_SETTINGS", {**script.REWARD_SETTINGS, **TINY})
    shipped_sft = script.ship_sft(tmp_path, progress=False)
    shipped_reward = script.ship_reward(tmp_path, shipped_sft, progress=False)
    assert shipped_sft["settings"] == sft_cache_settings(script.SFT_SETTINGS)
    model, tokenizer = load_gpt2("tiny")
    info, problem = cache.read_entry(model, tmp_path / "sft_tiny", "sft", shipped_sft["settings"])
    assert problem is None and info["results"]["after"] == shipped_sft["results"]["after"]
    assert generate(model, tokenizer, info["results"]["check"]["prompts"]) == info["results"]["check"]["answers"]
    reward_net = reward.RewardModel.from_causal_lm(model)
    info, problem = cache.read_entry(reward_net, tmp_path / "reward_tiny", "reward", shipped_reward["settings"])
    check = info["results"]["check"]
    assert score(reward_net, tokenizer, check["prompts"], check["responses"]).tolist() == pytest.approx(
        check["rewards"], abs=1e-4)
    card = (tmp_path / "reward_tiny" / "README.md").read_text()
    assert f"{info['results']['after']:.3f}" in card and shipped_reward["settings"]["sft"] in card
