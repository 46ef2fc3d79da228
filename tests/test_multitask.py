"""Multi-task models, batch samplers and one adapter per task."""
import math
from collections import Counter

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import resnet18

from ftlab.measure import count_parameters
from ftlab.methods.base import active_adapter
from ftlab.multitask import (
    Mixture,
    MultiHeadModel,
    Tagged,
    add_task_adapters,
    compare_sampling,
    multi_head,
    select_task,
    storage_cost,
    storage_curve,
    tag,
    task_probabilities,
    train_task_adapters,
)
from ftlab.train import evaluate, fit


class TinyNet(nn.Module):
    """A small CNN with BatchNorm and a torchvision-style head ``fc``, for quick training tests."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _loader(n, num_classes, seed=0, batch_size=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    return DataLoader(TensorDataset(x, torch.arange(n) % num_classes), batch_size=batch_size)


# ---------------------------------------------------------------- samplers

def test_sampler_probabilities_follow_their_formulas():
    sizes = {"big": 900, "small": 100}
    assert task_probabilities(sizes, "proportional") == pytest.approx({"big": 0.9, "small": 0.1})
    # p ~ n^(1/2): sqrt(900) = 30, sqrt(100) = 10
    assert task_probabilities(sizes, "temperature", T=2) == pytest.approx({"big": 0.75, "small": 0.25})
    assert task_probabilities(sizes, "temperature", T=1) == pytest.approx(task_probabilities(sizes, "proportional"))
    assert task_probabilities(sizes, "temperature", T=1e9) == pytest.approx({"big": 0.5, "small": 0.5})
    assert task_probabilities(sizes, "round_robin") == {"big": 0.5, "small": 0.5}


@pytest.mark.parametrize("sampling, T", [("proportional", 1.0), ("temperature", 2.0), ("temperature", 5.0)])
def test_empirical_task_frequencies_match_the_sampler_probabilities(sampling, T):
    loaders = {"a": [(torch.zeros(1), torch.zeros(1))], "b": [(torch.ones(1), torch.ones(1))],
               "c": [(torch.ones(1), torch.ones(1))]}
    sizes = {"a": 1000, "b": 100, "c": 10}
    n = 20000
    mixture = Mixture(loaders, sampling=sampling, T=T, num_batches=n, sizes=sizes, seed=0)
    counts = Counter(batch["task"] for batch in mixture)
    for task, p in mixture.probabilities.items():
        assert abs(counts[task] / n - p) < 4 * math.sqrt(p * (1 - p) / n)  # within 4 standard deviations
    assert mixture.probabilities["c"] < mixture.probabilities["b"] < mixture.probabilities["a"]


def test_round_robin_takes_turns_whatever_the_sizes():
    loaders = {"a": _loader(40, 2), "b": _loader(4, 2)}
    mixture = Mixture(loaders, sampling="round_robin", num_batches=7)
    assert [batch["task"] for batch in mixture] == ["a", "b", "a", "b", "a", "b", "a"]


def test_mixture_cycles_each_loader_tags_its_batches_and_repeats_with_its_seed():
    loaders = {"a": _loader(8, 2, seed=1), "b": _loader(4, 3, seed=2)}
    batches = list(Mixture(loaders, sampling="round_robin", num_batches=6))
    b_batches = [batch for batch in batches if batch["task"] == "b"]
    first_b = next(iter(loaders["b"]))
    assert all(torch.equal(batch["x"], first_b[0]) for batch in b_batches)  # "b" has one batch: it cycles
    assert torch.equal(b_batches[0]["labels"], first_b[1])
    one = Mixture(loaders, sampling="temperature", num_batches=20, seed=3)
    two = Mixture(loaders, sampling="temperature", num_batches=20, seed=3)
    assert [b["task"] for b in one] == [b["task"] for b in two]
    assert len(one) == 20 and Mixture(loaders).num_batches == len(loaders["a"]) + len(loaders["b"])


def test_sampler_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"\['empty'\] have no training examples"):
        task_probabilities({"full": 10, "empty": 0})
    with pytest.raises(ValueError, match="no tasks"):
        task_probabilities({})
    with pytest.raises(ValueError, match="sampling must be one of"):
        task_probabilities({"a": 1}, "uniformly")
    with pytest.raises(ValueError, match="temperature T must be positive"):
        task_probabilities({"a": 1}, "temperature", T=0)
    with pytest.raises(ValueError, match="no training examples"):
        Mixture({"a": _loader(4, 2), "b": []})
    with pytest.raises(ValueError, match="sizes names"):
        Mixture({"a": _loader(4, 2)}, sizes={"b": 3})


# ---------------------------------------------------------------- the multi-head model

def test_each_batch_runs_its_own_head_on_the_shared_features():
    torch.manual_seed(0)
    backbone = resnet18(num_classes=7).eval()
    fc = backbone.fc
    model = multi_head(backbone, {"digits": 10, "cells": 2}).eval()
    assert isinstance(model.backbone.fc, nn.Identity) and model.tasks == ["digits", "cells"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.backbone(x)  # (2, 512)
        assert features.shape == (2, fc.in_features)
        torch.testing.assert_close(model(task="cells", x=x), model.heads["cells"](features))
        assert model(**tag((x, torch.zeros(2, dtype=torch.long)), "digits")).shape == (2, 10)


def test_a_text_backbone_gives_the_features_its_classifier_saw(minilm):
    model, tokenizer = minilm
    batch = tokenizer(["a fine day", "the match was long"], padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = model.bert(**batch).pooler_output  # (2, 384): what BertForSequenceClassification's head sees
        mt = multi_head(model, {"sentiment": 2, "topic": 4}).eval()
        logits = mt(task="topic", **batch, labels=torch.tensor([0, 1]))
    torch.testing.assert_close(logits, mt.heads["topic"](pooled))


def test_multi_task_training_on_a_mixture_lowers_both_losses():
    torch.manual_seed(0)
    model = multi_head(TinyNet(), {"a": 2, "b": 3})
    loaders = {"a": _loader(8, 2, seed=1), "b": _loader(8, 3, seed=2)}
    before = {t: evaluate(model, Tagged(d, t))["loss"] for t, d in loaders.items()}
    fit(model, Mixture(loaders, sampling="round_robin"), num_steps=12, lr=1e-3, device="cpu", progress=False)
    after = {t: evaluate(model, Tagged(d, t))["loss"] for t, d in loaders.items()}
    assert all(after[t] < before[t] for t in loaders)


def test_batchnorm_statistics_stay_pretrained_unless_asked_to_train():
    torch.manual_seed(0)
    loaders = {"a": _loader(8, 2, seed=1), "b": _loader(8, 3, seed=2)}
    for freeze in (True, False):
        model = multi_head(TinyNet(), {"a": 2, "b": 3}, freeze_statistics=freeze)
        mean = model.backbone.bn.running_mean.clone()
        fit(model, Mixture(loaders), num_steps=2, lr=1e-3, device="cpu", progress=False)
        assert torch.equal(model.backbone.bn.running_mean, mean) == freeze
        assert model.training and model.backbone.bn.training != freeze


def test_tagged_maps_global_labels_to_the_head_positions():
    data = [(torch.zeros(3, 1), torch.tensor([7, 5, 9]))]
    batch = next(iter(Tagged(data, "digits 5-9", classes=[5, 6, 7, 8, 9])))
    assert batch["labels"].tolist() == [2, 0, 4] and batch["task"] == "digits 5-9"


def test_an_unknown_task_id_raises_and_leaves_the_model_untouched(untouched):
    model = multi_head(resnet18(num_classes=10), {"a": 2, "b": 3})
    check = untouched(model)
    with pytest.raises(ValueError, match=r"unknown task 'c': this model has heads for \['a', 'b'\]"):
        model(task="c", x=torch.zeros(1, 3, 32, 32))
    add_task_adapters(model, r=2)
    check = untouched(model)
    with pytest.raises(ValueError, match="unknown task 'c'"):
        select_task(model, "c")
    with pytest.raises(ValueError, match="unknown task 'c'"):
        train_task_adapters(model, {"a": _loader(4, 2), "c": _loader(4, 2)}, num_steps=1)
    check()


def test_multi_head_rejects_bad_heads_and_leaves_the_model_untouched(untouched):
    model = resnet18(num_classes=10)
    check = untouched(model)
    for bad, message in [({}, "non-empty dict"), ({"a.b": 2}, "without '.'"), ({"a": 0}, "positive whole number")]:
        with pytest.raises(ValueError, match=message):
            multi_head(model, bad)
    check()
    with pytest.raises(TypeError, match="no linear classification head"):
        multi_head(nn.Sequential(nn.Linear(2, 2)), {"a": 2})
    with pytest.raises(ValueError, match="already has a head"):
        multi_head(model, {"a": 2}).add_task("a", 3)
    with pytest.raises(ValueError, match="at least one task head"):
        MultiHeadModel(nn.Identity(), {})


# ---------------------------------------------------------------- one adapter per task

def test_adapters_switch_by_task_name_and_only_the_selected_task_trains():
    torch.manual_seed(0)
    model = add_task_adapters(multi_head(resnet18(num_classes=10), {"a": 2, "b": 2}), r=2,
                              init_lora_weights=False).eval()  # random B: each adapter changes the output
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(task="a", x=x)
        assert active_adapter(model.backbone) == "a"
        features_a = model.features(x)
        model(task="b", x=x)
        assert active_adapter(model.backbone) == "b"
        features_b = model.features(x)
    assert not torch.allclose(features_a, features_b)
    select_task(model, "a")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".a." in name for name in trainable)  # lora_A.a, lora_B.a, heads.a
    model.train()
    assert all(not m.training for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d))  # shared statistics
    with pytest.raises(ValueError, match="already has adapters"):
        add_task_adapters(model)
    with pytest.raises(ValueError, match="needs one adapter per task"):
        select_task(multi_head(resnet18(num_classes=10), {"a": 2}), "a")


def test_train_task_adapters_changes_only_each_tasks_own_parameters():
    torch.manual_seed(0)
    model = add_task_adapters(multi_head(TinyNet(), {"a": 2, "b": 3}), r=2, targets=["conv"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_task_adapters(model, {"b": _loader(8, 3)}, num_steps=2, lr=1e-2, device="cpu", progress=False)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".b." in k or k.startswith("heads.b.") for k in changed)


def test_storage_cost_counts_the_bytes_of_every_tensor():
    torch.manual_seed(0)
    model = add_task_adapters(multi_head(resnet18(num_classes=10), {"a": 2, "b": 3, "c": 4}), r=4)
    plain = resnet18(num_classes=10)
    plain.fc = nn.Identity()
    base = sum(t.numel() * t.element_size() for t in plain.state_dict().values())  # parameters and buffers
    cost = storage_cost(model)
    assert cost["base"] == base
    for task, classes in (("a", 2), ("b", 3), ("c", 4)):
        select_task(model, task)
        trainable = count_parameters(model)["trainable"]  # this task's adapter and head, float32
        assert cost["heads"][task] == 4 * (512 * classes + classes)
        assert cost["adapters"][task] + cost["heads"][task] == 4 * trainable
    assert cost["full_copies"] == 3 * base + sum(cost["heads"].values())
    assert cost["base_plus_adapters"] == base + sum(cost["adapters"].values()) + sum(cost["heads"].values())
    assert cost["base_plus_adapters"] < 0.5 * cost["full_copies"]
    curve = storage_curve(cost, [1, 3, 10])
    assert curve["full_copies"].iloc[1] == cost["full_copies"]
    assert curve["base_plus_adapters"].iloc[1] == cost["base_plus_adapters"]


def test_compare_sampling_runs_every_training_on_small_tasks():
    def small(num_classes, seed):
        loader = _loader(8, num_classes, seed=seed)
        return {"train": loader.dataset, "test": loader.dataset, "num_classes": num_classes}

    table = compare_sampling({"big": small(3, 0), "tiny": small(2, 1)}, num_steps=1, batch_size=4)
    assert list(table.training.unique()) == ["single-task", "multi-task, proportional", "multi-task, temperature T=3"]
    multi = table[table.training == "multi-task, proportional"]
    assert multi.share.sum() == pytest.approx(1.0) and multi.batches.sum() == 2
    assert set(table.seed) == {0}


def test_compare_sampling_gives_one_row_per_training_task_and_seed_ordered_by_training_then_task():
    from ftlab.compare import summarize

    def small(num_classes, seed):
        loader = _loader(8, num_classes, seed=seed)
        return {"train": loader.dataset, "test": loader.dataset, "num_classes": num_classes}

    table = compare_sampling({"big": small(3, 0), "tiny": small(2, 1)}, num_steps=1, batch_size=4,
                             samplings=("proportional",), seeds=[0, 1])
    assert list(zip(table.training, table.task, table.seed)) == [
        ("single-task", "big", 0), ("single-task", "big", 1), ("single-task", "tiny", 0), ("single-task", "tiny", 1),
        ("multi-task, proportional", "big", 0), ("multi-task, proportional", "big", 1),
        ("multi-task, proportional", "tiny", 0), ("multi-task, proportional", "tiny", 1)]
    assert list(summarize(table, "accuracy", by=["training", "task"])["n"]) == [2, 2, 2, 2]
