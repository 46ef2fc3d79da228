"""BitFit: train only the bias terms of a frozen model (Ben Zaken, Ravfogel and Goldberg, 2022).

Every layer computes W x + b; BitFit freezes every W and trains every b:

    h = W x + b,   W frozen,   b trainable

"Bias terms" are the parameters whose name ends in ``bias``: those of linear layers, GPT-2's
Conv1D and convolutions, the shifts (beta) of LayerNorm and BatchNorm, and e.g.
nn.MultiheadAttention's ``in_proj_bias``. Nothing is injected: the model keeps its modules,
the trained biases simply are part of it, so there is nothing to merge or unload. In BERT the
biases are about 0.1% of the parameters (ResNets have bias-free convs: only BatchNorm shifts
and the head's bias). peft has no BitFit; the trainable count is the biases' total size.
"""
from __future__ import annotations

from torch import nn

from ftlab.methods.base import MethodSpec, check_one_method, find_targets, freeze


def bias_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every bias term of ``model`` (the last name component ends in "bias")."""
    return [(name, p) for name, p in model.named_parameters() if name.rsplit(".", 1)[-1].endswith("bias")]


def apply(model: nn.Module, *, modules_to_save: list[str] | None = None) -> nn.Module:
    """Freeze ``model`` except its bias terms (and the modules in ``modules_to_save``); returns ``model``.

    ``modules_to_save`` (e.g. ["classifier"], a new head) train in full, in place: BitFit has
    no adapters, so unlike LoRA's there are no copies. A model without any bias raises
    ValueError and stays as it was.
    """
    check_one_method(model, "bitfit")
    biases = bias_parameters(model)
    if not biases:
        raise ValueError(f"{type(model).__name__} has no bias parameters, so BitFit would train nothing; "
                         f"use a method that adds parameters instead, e.g. 'lora' or 'ia3'")
    saved = find_targets(model, modules_to_save, what="modules_to_save") if modules_to_save else []
    freeze(model)
    for _, p in biases:
        p.requires_grad_(True)
    for name in saved:
        model.get_submodule(name).requires_grad_(True)
    return model


SPEC = MethodSpec(name="bitfit", apply=apply, lr=3e-3)
