"""Full fine-tuning: every parameter of the pretrained model trains.

The baseline every comparison table starts from: the most trainable parameters, the most
gradient and optimizer memory, and usually the best accuracy for a given number of steps.
"""
from __future__ import annotations

from torch import nn

from ftlab.methods.base import MethodSpec, check_one_method


def apply(model: nn.Module) -> nn.Module:
    """Make every parameter of ``model`` trainable (``requires_grad = True``) and return it."""
    check_one_method(model, "full")
    for p in model.parameters():
        p.requires_grad_(True)
    return model


SPEC = MethodSpec(name="full", apply=apply, lr=5e-5)
