"""fit fails loudly and loses nothing: every option checked before the first step; a non-finite loss or
gradient, or a generator that runs out, stops at once with the model as after the last good step."""
import math

import pytest
import torch
from torch import nn

from ftlab.train import FitError, fit

from test_train import toy_problem


def mlp(seed=0, depth=1):
    """A small classifier with BatchNorm (so running statistics are part of the state to keep)."""
    torch.manual_seed(seed)
    hidden = [layer for _ in range(depth) for layer in (nn.Linear(16, 16), nn.ReLU())]
    return nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.ReLU(), *hidden, nn.Linear(16, 2))


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model, reference):
    now = model.state_dict()
    assert list(now) == list(reference)
    for key, value in reference.items():
        assert torch.equal(now[key], value), key


def after_steps(num_steps, data, depth=1, **options):
    """The state of a fresh ``mlp`` after ``num_steps`` good steps on ``data``."""
    model = mlp(depth=depth)
    fit(model, data, num_steps=num_steps, progress=False, device="cpu", **options)
    return state(model)


# ---------------------------------------------------------------- non-finite losses and gradients

def test_float16_weights_are_refused_before_training_not_trained_into_nan(untouched):
    model = mlp().half()
    check = untouched(model)
    with pytest.raises(ValueError, match=r"float16.*AdamW's eps=1e-8 is 0 in float16.*precision='bf16-mixed'"):
        fit(model, toy_problem(), num_steps=3, progress=False, device="cpu")
    check()


def test_nan_in_a_batch_stops_at_that_step_names_the_batch_and_keeps_the_previous_steps():
    data = toy_problem()
    x, y = data[2]
    x = x.clone()
    x[5, 1] = float("nan")
    bad = data[:2] + [(x, y)] + data[3:]
    model = mlp()
    with pytest.raises(FitError, match=r"step 3: the loss is not finite.*NaN or infinite values in the batch "
                                       r"\(batch\[0\]\).*as after step 2") as err:
        fit(model, bad, num_steps=5, progress=False, device="cpu")
    assert err.value.step == 3
    assert len(err.value.history["loss"]) == 2 and all(map(math.isfinite, err.value.history["loss"]))
    assert_same_state(model, after_steps(2, data))  # weights and BatchNorm statistics of step 2


def test_a_learning_rate_far_too_high_stops_at_the_first_non_finite_gradient_and_says_lr():
    data = toy_problem()
    model = mlp(depth=2)
    with pytest.raises(FitError, match=r"not finite.*a learning rate too high \(lr=1e\+06; the loss was .* at step "
                                       r"\d+\).*lr_find") as err:
        fit(model, data, num_steps=20, lr=1e6, progress=False, device="cpu")
    good = err.value.step - 1
    assert good >= 1 and len(err.value.history["loss"]) == good
    assert_same_state(model, after_steps(good, data, depth=2, lr=1e6))
    assert all(p.grad is None for p in model.parameters())


def test_a_non_finite_gradient_under_a_finite_loss_is_caught_before_the_update():
    data = toy_problem()

    def loss_fn(model, batch):  # d sqrt(u)/du is infinite at u = 0: finite loss, NaN gradient at step 2
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        if len(seen) == 1:
            w = model[0].weight
            loss = loss + torch.sqrt(((w - w.detach()) ** 2).sum())
        seen.append(1)
        return loss

    seen = []
    model = mlp()
    with pytest.raises(FitError, match=r"step 2: the gradient is not finite \(loss 0\.\d+\)"):
        fit(model, data, num_steps=4, loss_fn=loss_fn, progress=False, device="cpu")
    # step 2's forward pass updated BatchNorm's statistics before the gradient was seen: put back
    assert_same_state(model, after_steps(1, data))


def test_a_finite_run_is_not_stopped():
    history = fit(mlp(), toy_problem(), num_steps=10, lr=1e-2, progress=False, device="cpu")
    assert len(history["loss"]) == 10 and all(map(math.isfinite, history["grad_norm"]))


# ---------------------------------------------------------------- data that runs out

def test_a_generator_shorter_than_num_steps_stops_with_the_history_and_the_model_after_its_last_batch():
    data = toy_problem()
    model = mlp()
    with pytest.raises(FitError, match=r"ran out at step 3 of 5: it is a one-shot iterator \(a generator\?\) that "
                                       r"gave 2 batches.*Pass a list or a DataLoader") as err:
        fit(model, (batch for batch in data[:2]), num_steps=5, progress=False, device="cpu")
    assert err.value.step == 3 and err.value.history["step"] == [1, 2]
    assert_same_state(model, after_steps(2, data))


def test_a_generator_that_runs_out_inside_an_accumulated_step_leaves_no_partial_gradient():
    data = toy_problem()
    model = mlp()
    with pytest.raises(FitError, match="ran out at step 2 of 3"):
        fit(model, (batch for batch in data[:3]), num_steps=3, grad_accum_steps=2, progress=False, device="cpu")
    assert all(p.grad is None for p in model.parameters())
    assert_same_state(model, after_steps(1, data, grad_accum_steps=2))


def test_a_generator_long_enough_trains_every_step():
    history = fit(mlp(), iter(toy_problem()), num_steps=8, progress=False, device="cpu")
    assert history["step"] == list(range(1, 9))


def test_an_empty_generator_says_it_yielded_nothing(untouched):
    model = mlp()
    check = untouched(model)
    with pytest.raises(ValueError, match="yielded no batches"):
        fit(model, iter([]), num_steps=2, progress=False, device="cpu")
    check()


# ---------------------------------------------------------------- every option checked before the first step

def generator():
    yield from toy_problem()


BAD_OPTIONS = [
    (dict(num_steps=0), ValueError, "num_steps must be at least 1, got 0"),
    (dict(num_steps=2.5), TypeError, r"num_steps must be a whole number, got 2\.5"),
    (dict(lr="1e-3"), TypeError, r"lr must be a number, got '1e-3' \(str\)"),
    (dict(lr=-1e-3), ValueError, "lr must be at least 0, got -0.001"),
    (dict(lr=float("nan")), ValueError, "lr must be a finite number"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay must be at least 0"),
    (dict(max_grad_norm=-1.0), ValueError, "max_grad_norm must be greater than 0, got -1"),
    (dict(max_grad_norm=0), ValueError, "max_grad_norm must be greater than 0"),
    (dict(warmup_steps=5, num_steps=3), ValueError, "warmup_steps=5 is more than num_steps=3"),
    (dict(warmup_steps=-1), ValueError, "warmup_steps must be at least 0"),
    (dict(warmup_steps=1.5), TypeError, "warmup_steps must be a whole number"),
    (dict(grad_accum_steps=0), ValueError, "grad_accum_steps must be at least 1"),
    (dict(precision="fp16"), ValueError, r"precision must be one of 'fp32', 'bf16-mixed', 'fp16-mixed', 'bf16'"),
    (dict(optimizer="adamw"), TypeError, "optimizer must be a torch.optim.Optimizer"),
    (dict(loss_fn="mse"), TypeError, "loss_fn must be a function or None"),
    (dict(on_step=3), TypeError, "on_step must be a function or None"),
    (dict(progress="yes"), TypeError, "progress must be True or False"),
    (dict(gradient_checkpointing=1), TypeError, "gradient_checkpointing must be True or False"),
    (dict(gradient_checkpointing=True), ValueError, "needs a transformers model or a torchvision ResNet"),
    (dict(device="gpu"), ValueError, "device 'gpu' is not a device name: use 'cpu', 'cuda' or 'cuda:0'"),
    (dict(device=0.5), TypeError, "device must be a str"),
    (dict(eval_data=[]), ValueError, "eval_data is empty"),
    (dict(eval_data=generator()), TypeError, "eval_data must be a list or loader of batches that can be read "
                                             "several times"),
    (dict(eval_every=5), ValueError, "eval_every needs eval_data"),
    (dict(eval_data=toy_problem(), eval_every=0), ValueError, "eval_every must be at least 1"),
    (dict(eval_data=toy_problem(), eval_every=2.5), TypeError, "eval_every must be a whole number"),
    (dict(patience=2), ValueError, "patience .* pass eval_data and eval_every"),
    (dict(eval_data=toy_problem(), patience=2), ValueError, "pass eval_data and eval_every"),
    (dict(eval_data=toy_problem(), eval_every=2, patience=0), ValueError, "patience must be at least 1"),
    (dict(monitor="f1"), ValueError, "monitor must be one of 'loss', 'accuracy'; got 'f1'"),
    (dict(mode="up"), ValueError, "mode must be one of 'min', 'max'; got 'up'"),
    (dict(train_data=None), TypeError, "train_data must be a list or loader of batches, got NoneType"),
    (dict(train_data=[]), ValueError, "train_data yielded no batches: it is empty"),
]


@pytest.mark.parametrize("options, error, message", BAD_OPTIONS, ids=[
    "-".join(f"{k}={v!r}"[:30] for k, v in options.items()) for options, _, _ in BAD_OPTIONS])
def test_fit_refuses_a_bad_option_before_the_first_step(options, error, message, untouched):
    model = mlp()
    check = untouched(model)
    options = {"num_steps": 3, "progress": False, "device": "cpu", **options}
    data = options.pop("train_data", toy_problem())
    with pytest.raises(error, match=message):
        fit(model, data, **options)
    check()
    assert all(p.grad is None for p in model.parameters())


def test_fit_refuses_a_model_without_trainable_parameters(untouched):
    model = mlp().requires_grad_(False)
    check = untouched(model)
    with pytest.raises(ValueError, match="no trainable parameters: apply a method or unfreeze"):
        fit(model, toy_problem(), num_steps=1, progress=False, device="cpu")
    check()


def test_fit_refuses_bfloat16_weights_unless_precision_says_bf16(untouched):
    model = mlp().to(torch.bfloat16)
    check = untouched(model)
    message = "bfloat16 but precision='fp32' expects float32 weights: pass precision='bf16'"
    with pytest.raises(ValueError, match=message):
        fit(model, toy_problem(), num_steps=1, progress=False, device="cpu")
    check()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_fit_refuses_cuda_without_a_gpu(untouched):
    model = mlp()
    check = untouched(model)
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        fit(model, toy_problem(), num_steps=1, progress=False, device="cuda")
    check()


def test_fit_refuses_a_batch_that_is_neither_a_dict_nor_a_pair():
    with pytest.raises(TypeError, match="a batch must be a dict"):
        fit(nn.Linear(2, 2), [torch.zeros(2, 2)], num_steps=1, progress=False, device="cpu")


def test_an_optimizer_over_float16_weights_is_refused_too(untouched):
    model = mlp().half()
    check = untouched(model)
    with pytest.raises(ValueError, match="trainable parameters are float16"):
        fit(model, toy_problem(), num_steps=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            progress=False, device="cpu")
    check()
