"""The shared option checks refuse what a student might mistype, with a message that says what is right."""
import math

import pytest
import torch

from ftlab.validate import check_choice, check_int, check_number, check_positive_int, check_probability, eval_mode


@pytest.mark.parametrize("value", [True, 2.5, "3", None])
def test_check_positive_int_refuses_non_integers(value):
    with pytest.raises(TypeError, match="r must be a whole number"):
        check_positive_int("r", value)


def test_check_positive_int_refuses_zero_and_returns_good_values():
    with pytest.raises(ValueError, match="num_steps must be at least 1, got 0"):
        check_positive_int("num_steps", 0)
    assert check_positive_int("r", 4) == 4
    assert check_int("seed", -3) == -3


@pytest.mark.parametrize("value", ["1e-3", True, None, [1.0]])
def test_check_number_refuses_non_numbers(value):
    with pytest.raises(TypeError, match="lr must be a number"):
        check_number("lr", value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_check_number_refuses_nan_and_infinity(value):
    with pytest.raises(ValueError, match="lora_alpha must be a finite number"):
        check_number("lora_alpha", value)


def test_check_number_bounds():
    with pytest.raises(ValueError, match="lr must be greater than 0, got 0"):
        check_number("lr", 0.0, minimum=0.0, strict_minimum=True)
    with pytest.raises(ValueError, match="max_grad_norm must be at least 0, got -1"):
        check_number("max_grad_norm", -1.0, minimum=0.0)
    with pytest.raises(ValueError, match="at most 1"):
        check_number("beta", 2.0, maximum=1.0)
    assert check_number("lr", 3) == 3.0 and isinstance(check_number("lr", 3), float)


@pytest.mark.parametrize("value", [1.0, -0.1, "0.1"])
def test_check_probability(value):
    with pytest.raises((TypeError, ValueError), match="dropout"):
        check_probability("dropout", value)
    assert check_probability("dropout", 0.0) == 0.0


def test_check_choice_lists_the_choices():
    with pytest.raises(ValueError, match="'fp32', 'bf16'; got 'fp8'"):
        check_choice("precision", "fp8", ("fp32", "bf16"))


def test_eval_mode_restores_each_models_mode_even_on_error():
    a, b = torch.nn.Dropout(0.5).train(), torch.nn.Dropout(0.5).eval()
    with pytest.raises(RuntimeError), eval_mode(a, b):
        assert not a.training and not b.training
        raise RuntimeError("boom")
    assert a.training and not b.training
