"""step_memory (ftlab.measure): one training step's memory as fit runs it at each precision and with gradient
checkpointing; checkpointing_cost (ftlab.bench): the time a step takes with and without checkpointing, in turns;
plot_memory_panels draws the measured tables side by side."""
import pytest
import torch

from ftlab import bench
from ftlab.bench import checkpointing_cost
from ftlab.measure import MEMORY_PARTS, memory_report, step_memory
from ftlab.viz import plot_memory_panels


def lm_batch(model, n=4, length=32):
    ids = torch.randint(0, model.config.vocab_size, (n, length), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids}


def test_step_memory_at_fp32_without_checkpointing_is_memory_report(tiny_gpt2):
    batch = lm_batch(tiny_gpt2)
    ours, plain = step_memory(tiny_gpt2, batch), memory_report(tiny_gpt2, batch)
    assert {part: ours[part] for part in MEMORY_PARTS} == {part: plain[part] for part in MEMORY_PARTS}


def test_pure_bf16_halves_weights_gradients_and_adamw_state_and_leaves_the_model_float32(tiny_gpt2):
    batch = lm_batch(tiny_gpt2)
    before = {k: v.clone() for k, v in tiny_gpt2.state_dict().items()}
    fp32, bf16 = step_memory(tiny_gpt2, batch), step_memory(tiny_gpt2, batch, precision="bf16")
    for part in ("weights_trainable", "gradients", "optimizer_state"):
        assert bf16[part] * 2 == fp32[part]
    assert bf16["activations"] < fp32["activations"]
    assert all(p.dtype == torch.float32 for p in tiny_gpt2.parameters())
    assert all(torch.equal(before[k], v) for k, v in tiny_gpt2.state_dict().items())


def test_checkpointing_keeps_fewer_activations_and_bf16_mixed_keeps_float32_weights(tiny_gpt2):
    batch = lm_batch(tiny_gpt2, n=8, length=64)
    plain = step_memory(tiny_gpt2, batch)
    saved = step_memory(tiny_gpt2, batch, gradient_checkpointing=True)
    mixed = step_memory(tiny_gpt2, batch, precision="bf16-mixed")
    assert saved["activations"] < 0.5 * plain["activations"]
    assert saved["gradients"] == plain["gradients"] and mixed["weights_trainable"] == plain["weights_trainable"]
    assert not tiny_gpt2.is_activation_checkpointing  # the switch is off again afterwards


def test_step_memory_refuses_an_unknown_precision_before_measuring(tiny_gpt2, untouched):
    check = untouched(tiny_gpt2)
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16-mixed, fp16-mixed, bf16, got 'fp8'"):
        step_memory(tiny_gpt2, lm_batch(tiny_gpt2), precision="fp8")
    with pytest.raises(TypeError, match="gradient_checkpointing must be True or False"):
        step_memory(tiny_gpt2, lm_batch(tiny_gpt2), gradient_checkpointing="yes")
    check()


def test_checkpointing_cost_times_both_in_turns_and_gives_the_median_ratio(monkeypatch):
    calls = []

    def fake_time_step(model, batch, **options):
        calls.append(model.is_activation_checkpointing)
        return {False: 2.0, True: 3.0}[model.is_activation_checkpointing] + 0.1 * len(calls)

    class Model(torch.nn.Module):
        supports_gradient_checkpointing = True
        is_activation_checkpointing = False
        config = None

        def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None):
            self.is_activation_checkpointing = True

        def activation_checkpointing_disable(self):
            self.is_activation_checkpointing = False

    monkeypatch.setattr(bench, "time_step", fake_time_step)
    cost = checkpointing_cost(Model(), None, repeats=3, num_steps=1)
    assert calls == [False, True, True, False, False, True]  # in turns: A B, B A, A B
    assert cost["plain"] == pytest.approx([2.1, 2.4, 2.5]) and cost["checkpointed"] == pytest.approx([3.2, 3.3, 3.6])
    assert cost["ratios"] == pytest.approx([3.2 / 2.1, 3.3 / 2.4, 3.6 / 2.5])
    assert cost["ratio"] == pytest.approx(3.6 / 2.5)  # the median of 1.52, 1.38, 1.44


def test_checkpointing_cost_runs_on_a_real_model_and_leaves_it_unchanged(tiny_gpt2):
    before = {k: v.clone() for k, v in tiny_gpt2.state_dict().items()}
    cost = checkpointing_cost(tiny_gpt2, lm_batch(tiny_gpt2), repeats=2, num_steps=1)
    assert len(cost["ratios"]) == 2 and all(s > 0 for s in cost["plain"] + cost["checkpointed"])
    assert all(torch.equal(before[k], v) for k, v in tiny_gpt2.state_dict().items())


def test_plot_memory_panels_draws_one_panel_per_model_with_one_bar_per_setting():
    row = {part: 1e6 for part in MEMORY_PARTS}
    fig = plot_memory_panels({"MiniLM": [{"name": "fp32", **row}, {"name": "bf16", **row}],
                              "GPT-2": [{"name": "fp32", **row}]})
    assert [ax.get_title() for ax in fig.axes] == ["MiniLM", "GPT-2"]
    assert [len(ax.get_xticklabels()) for ax in fig.axes] == [2, 1]
    assert len(fig.legends) == 1
    gpt2_only = {part: 0.0 if part == "buffers" else 1e6 for part in MEMORY_PARTS}
    fig = plot_memory_panels({"MiniLM": [{"name": "fp32", **row}], "GPT-2": [{"name": "fp32", **gpt2_only}]})
    colours = [[bar.get_facecolor() for bar in ax.patches] for ax in fig.axes]
    assert colours[0] == colours[1], "a part has the same colour in every panel, even where it is 0"
    with pytest.raises(ValueError, match="at least one table"):
        plot_memory_panels({})


def test_plot_memory_against_labels_both_bars_with_their_totals_and_the_ratio():
    from ftlab.viz import plot_memory_against

    row = {part: 1e6 for part in MEMORY_PARTS}
    baseline = {**row, "total": 6e6, "name": "fp32"}
    (ax,) = plot_memory_against(baseline, {**row, "activations": 0.0, "total": 5e6, "name": "fp32"},
                                title="MiniLM").axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["baseline: fp32", "yours: fp32"]
    assert [t.get_text() for t in ax.texts] == ["6.0 MB", "5.0 MB"]
    assert ax.get_title() == "MiniLM: 0.83 of the baseline"
