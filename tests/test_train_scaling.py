"""Scaling up on one machine: gradient accumulation equals a larger batch, mixed and bfloat16 precision train
without NaN (float16 only with loss scaling), and gradient checkpointing gives the same loss and gradients with
fewer saved activations (transformers models and torchvision ResNets)."""
import copy

import pytest
import torch
import transformers
from torch import nn

import ftlab
from ftlab.measure import SavedActivations
from ftlab.train import FitError, checkpointed, default_loss, fit

from builders import resnet18, tiny_gpt2
from test_train import toy_problem


def gpt2_without_dropout():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500, n_positions=64,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config)


def token_batches(num_batches, batch_size, length=16, seed=0):
    """Language-model batches of equal length with every label scored (so each batch scores as many tokens)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 500, (num_batches * batch_size, length), generator=g)
    return [{"input_ids": ids[i:i + batch_size], "labels": ids[i:i + batch_size]}
            for i in range(0, len(ids), batch_size)]


def merged(batches, k):
    """Every ``k`` consecutive batches concatenated into one."""
    return [{key: torch.cat([b[key] for b in batches[i:i + k]]) for key in batches[0]}
            for i in range(0, len(batches), k)]


def max_difference(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


# ---------------------------------------------------------------- gradient accumulation

def test_four_accumulated_batches_of_8_make_the_same_steps_as_batches_of_32():
    torch.manual_seed(0)
    small = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    large = copy.deepcopy(small)
    x, y = torch.cat([b[0] for b in toy_problem(n=256)]), torch.cat([b[1] for b in toy_problem(n=256)])
    batches_of_8 = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 256, 8)]
    batches_of_32 = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]
    h_small = fit(small, batches_of_8, num_steps=6, lr=1e-2, grad_accum_steps=4, max_grad_norm=1.0,
                  progress=False, device="cpu")
    h_large = fit(large, batches_of_32, num_steps=6, lr=1e-2, max_grad_norm=1.0, progress=False, device="cpu")
    assert max_difference(small, large) < 1e-6
    assert h_small["loss"] == pytest.approx(h_large["loss"], rel=1e-5)
    assert h_small["grad_norm"] == pytest.approx(h_large["grad_norm"], rel=1e-5)


def test_accumulation_on_a_language_model_equals_the_larger_batch_when_batches_score_as_many_tokens():
    small, large = gpt2_without_dropout(), gpt2_without_dropout()
    batches = token_batches(8, batch_size=2)
    h_small = fit(small, batches, num_steps=4, lr=1e-3, grad_accum_steps=2, progress=False, device="cpu")
    h_large = fit(large, merged(batches, 2), num_steps=4, lr=1e-3, progress=False, device="cpu")
    assert max_difference(small, large) < 1e-5
    assert h_small["loss"] == pytest.approx(h_large["loss"], rel=1e-5)


def test_without_accumulation_the_steps_differ_so_the_comparison_can_fail():
    small, large = gpt2_without_dropout(), gpt2_without_dropout()
    batches = token_batches(8, batch_size=2)
    fit(small, batches, num_steps=4, lr=1e-3, progress=False, device="cpu")
    fit(large, merged(batches, 2), num_steps=4, lr=1e-3, progress=False, device="cpu")
    assert max_difference(small, large) > 1e-4


# ---------------------------------------------------------------- precision

@pytest.mark.parametrize("precision", ["bf16-mixed", "fp16-mixed"])
def test_mixed_precision_trains_float32_weights_with_a_lower_precision_forward_pass(precision):
    model, reference = gpt2_without_dropout(), gpt2_without_dropout()
    dtypes = []

    def loss_fn(model, batch):
        out = model(**batch)
        dtypes.append(out.logits.dtype)
        return out.loss

    batches = token_batches(4, batch_size=4)
    history = fit(model, batches, num_steps=8, lr=3e-3, precision=precision, loss_fn=loss_fn, progress=False,
                  device="cpu")
    expected = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}[precision]
    assert set(dtypes) == {expected}
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert history["loss"][-1] < history["loss"][0]
    first = fit(reference, batches, num_steps=1, lr=3e-3, progress=False, device="cpu")["loss"][0]
    assert history["loss"][0] == pytest.approx(first, rel=2e-2)  # same first loss within half-precision rounding


def test_pure_bf16_casts_the_model_and_its_image_inputs_and_trains():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    data = toy_problem()
    history = fit(model, data, num_steps=30, lr=1e-2, precision="bf16", eval_data=data, eval_every=10,
                  progress=False, device="cpu")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["eval"][-1]["accuracy"] > 0.9


def test_float16_is_scaled_under_fp16_mixed_a_step_whose_gradient_overflows_is_skipped_and_fit_stops_at_scale_1():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    before = copy.deepcopy(model.state_dict())

    def nan_gradient(model, batch):  # finite loss whose gradient is NaN at any loss scale
        x, y = batch
        w = model[0].weight
        return nn.functional.cross_entropy(model(x), y) + torch.sqrt(((w - w.detach()) ** 2).sum())

    with pytest.raises(FitError, match="the gradient is not finite.*precision='fp16-mixed'") as err:
        fit(model, toy_problem(), num_steps=40, precision="fp16-mixed", loss_fn=nan_gradient, progress=False,
            device="cpu")
    # GradScaler starts at 2^16 and halves at each overflow: 16 steps skipped (scales 2^16 .. 2^1), then at
    # scale 1 loss scaling cannot help
    assert err.value.step == 17 and len(err.value.history["loss"]) == 16
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # every step was skipped


# ---------------------------------------------------------------- gradient checkpointing

def loss_grads_and_saved_bytes(model, batch):
    torch.manual_seed(0)  # dropout draws the same masks in both runs
    model.zero_grad(set_to_none=True)
    with SavedActivations(model) as saved:
        loss = default_loss(model, batch)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None], saved.bytes


def assert_checkpointing_keeps_results_and_saves_memory(model, batch, max_ratio):
    model.train()
    loss, grads, plain = loss_grads_and_saved_bytes(model, batch)
    with checkpointed(model):
        loss_c, grads_c, saved = loss_grads_and_saved_bytes(model, batch)
    assert loss_c == loss
    assert len(grads_c) == len(grads)
    assert max((a - b).abs().max().item() for a, b in zip(grads, grads_c)) < 1e-6
    assert saved < max_ratio * plain, (saved, plain)
    return plain, saved


def test_checkpointing_gpt2_gives_the_same_loss_and_gradients_with_fewer_saved_activations():
    model = tiny_gpt2()  # dropout 0.1: the recomputation must draw the same masks
    batch = token_batches(1, batch_size=4, length=32)[0]
    assert_checkpointing_keeps_results_and_saves_memory(model, batch, max_ratio=0.6)
    assert not model.is_activation_checkpointing  # switched off again


def test_checkpointing_lora_minilm_gives_the_same_loss_and_gradients_with_fewer_saved_activations(minilm):
    model, tokenizer = minilm
    ftlab.apply(model, "lora", modules_to_save=["classifier"])
    batch = dict(tokenizer(["a superb film with a fine cast", "a dreadful film"] * 2, padding=True,
                           return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0, 1, 0])
    assert_checkpointing_keeps_results_and_saves_memory(model, batch, max_ratio=0.6)


def test_checkpointing_a_resnet_keeps_loss_gradients_and_batchnorm_statistics_and_restores_the_model():
    model, reference = resnet18(), resnet18()
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    structure, keys = repr(model), list(model.state_dict())
    x, y = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.arange(8)
    reference.train()
    _, _, plain = loss_grads_and_saved_bytes(reference, (x, y))
    model.train()
    with checkpointed(model):
        assert list(model.state_dict()) == keys  # the same parameter names while checkpointed
        _, _, saved = loss_grads_and_saved_bytes(model, (x, y))
    assert saved < 0.7 * plain  # the stem's activations at full resolution stay
    assert max_difference_of_grads(model, reference) < 1e-6
    # the recomputation in backward does not update BatchNorm's running statistics a second time
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert repr(model) == structure and [model.layer1, model.layer2, model.layer3, model.layer4] == stages


def max_difference_of_grads(a, b):
    return max((p.grad - q.grad).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def test_fit_with_gradient_checkpointing_trains_the_same_steps():
    plain, checkpointed_model = tiny_gpt2(), tiny_gpt2()
    batches = token_batches(4, batch_size=2)
    torch.manual_seed(1)
    h_plain = fit(plain, batches, num_steps=3, lr=1e-3, progress=False, device="cpu")
    torch.manual_seed(1)
    h_ckpt = fit(checkpointed_model, batches, num_steps=3, lr=1e-3, gradient_checkpointing=True, progress=False,
                 device="cpu")
    assert h_ckpt["loss"] == pytest.approx(h_plain["loss"], rel=1e-6)
    assert max_difference(plain, checkpointed_model) < 1e-6
    assert not checkpointed_model.is_activation_checkpointing


def test_checkpointed_refuses_a_model_it_does_not_know(untouched):
    model = nn.Sequential(nn.Linear(2, 2))
    check = untouched(model)
    message = "needs a transformers model .* or a torchvision ResNet.*torch.utils.checkpoint"
    with pytest.raises(ValueError, match=message), checkpointed(model):
        pass
    check()
