import torch
from torch import nn

from ftlab.train import evaluate, fit


def toy_problem(n=256, seed=0):
    """Two Gaussian blobs in 2-D, linearly separable: a model that learns gets near 100%."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) * 0.5 + (y[:, None] * 2 - 1) * 1.5
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]


def test_fit_reduces_training_loss_on_a_toy_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    data = toy_problem()
    before = evaluate(model, data)
    history = fit(model, data, num_steps=60, lr=1e-2, eval_data=data, eval_every=20, progress=False, device="cpu")
    assert len(history["loss"]) == 60
    assert sum(history["loss"][-5:]) / 5 < 0.5 * sum(history["loss"][:5]) / 5
    assert history["eval_step"] == [20, 40, 60]
    after = history["eval"][-1]
    assert after["loss"] < before["loss"]
    assert after["accuracy"] > 0.95


def test_evaluate_returns_accuracy_in_unit_interval_and_counts_examples():
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    result = evaluate(model, toy_problem(n=64))
    assert 0.0 <= result["accuracy"] <= 1.0
    assert result["n"] == 64


def test_evaluate_on_dict_batches_uses_the_model_loss(minilm):
    model, tokenizer = minilm
    batch = dict(tokenizer(["a superb film", "a dreadful film"], padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0])
    result = evaluate(model, [batch])
    assert result["n"] == 2 and 0.0 <= result["accuracy"] <= 1.0
