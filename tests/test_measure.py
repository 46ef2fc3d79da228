import pytest
import torch
from torch import nn

from ftlab.measure import SavedActivations, count_parameters, format_parameters, memory_report, time_step


def small_mlp(width=32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 3))


def batch_of(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_count_parameters_equals_sum_of_numel_with_and_without_requires_grad():
    model = small_mlp()
    model[0].requires_grad_(False)
    counts = count_parameters(model)
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["trainable"] < counts["total"]
    assert counts["percent"] == pytest.approx(100 * counts["trainable"] / counts["total"])


def test_count_parameters_matches_peft_on_minilm_with_lora(minilm, capsys):
    from peft import LoraConfig, get_peft_model

    model, _ = minilm
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    peft_trainable, peft_total = peft_model.get_nb_trainable_parameters()
    peft_model.print_trainable_parameters()
    peft_line = capsys.readouterr().out.strip()
    counts = count_parameters(peft_model, verbose=True)
    our_line = capsys.readouterr().out.strip()
    assert (counts["trainable"], counts["total"]) == (peft_trainable, peft_total)
    assert our_line == peft_line
    assert format_parameters(peft_trainable, peft_total) == peft_line


def test_memory_report_weight_bytes_are_numel_times_element_size():
    model = small_mlp()
    model[0].requires_grad_(False)
    model[2].half()
    row = memory_report(model, batch_of(4), loss_fn=lambda m, b: nn.functional.cross_entropy(
        m[4](m[3](m[2](m[1](m[0](b[0])).half()).float())), b[1]))
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    assert row["weights_trainable"] == trainable
    assert row["weights_frozen"] == frozen
    assert row["weights_by_dtype"]["torch.float16"] == (32 * 32 + 32) * 2


def test_memory_report_adamw_state_is_twice_trainable_bytes_and_gradients_once():
    model = small_mlp()
    model[0].requires_grad_(False)
    row = memory_report(model, batch_of(8))
    assert row["optimizer_state"] == 2 * row["weights_trainable"]
    assert row["gradients"] == row["weights_trainable"]
    sgd = memory_report(model, batch_of(8), optimizer="sgd")
    assert sgd["optimizer_state"] == 0


def test_memory_report_leaves_the_model_unchanged():
    model = small_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    memory_report(model, batch_of(8), lr=1.0)
    time_step(model, batch_of(8), lr=1.0, num_steps=2, warmup=1)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_activation_bytes_grow_linearly_with_batch_size(minilm):
    model, tokenizer = minilm
    texts = ["the film was truly wonderful and i loved it"] * 32
    rows = {}
    for n in (8, 16, 32):
        batch = dict(tokenizer(texts[:n], return_tensors="pt"))
        batch["labels"] = torch.zeros(n, dtype=torch.long)
        rows[n] = memory_report(model, batch)["activations"]
    assert rows[8] > 0
    assert rows[16] / rows[8] == pytest.approx(2.0, rel=0.05)
    assert rows[32] / rows[8] == pytest.approx(4.0, rel=0.05)


def test_activation_bytes_are_zero_under_no_grad_and_exclude_parameters():
    model = small_mlp()
    x, _ = batch_of(10)
    with torch.no_grad(), SavedActivations(model) as saved:
        model(x)
    assert saved.bytes == 0
    # one Linear saves its input (10 x 16 floats) and, with requires_grad weights, nothing of its own weight
    linear = nn.Linear(16, 4)
    with SavedActivations(linear) as saved:
        linear(x.requires_grad_())
    assert saved.bytes == 10 * 16 * 4


def test_bad_input_errors_are_clear():
    model = small_mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        memory_report(model, batch_of(2))
    with pytest.raises(ValueError, match="optimizer must be one of"):
        memory_report(small_mlp(), batch_of(2), optimizer="lion")


def test_time_step_returns_positive_median_seconds():
    assert time_step(small_mlp(), batch_of(8), num_steps=3, warmup=1) > 0
