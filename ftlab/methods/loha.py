"""LoHa: the change of a frozen weight as a Hadamard product of two low-rank products.

LoHa (FedPara, Hyeon-Woo et al. 2022; LyCORIS) multiplies two rank-r products element-wise:

    delta W = scaling * (W1a W1b) * (W2a W2b),   W1a, W2a: (out, r),   W1b, W2b: (r, in),   scaling = alpha / r

``*`` is the element-wise product, whose rank can reach r^2 (the rank of a Hadamard product is at
most the product of the ranks), while its 2 r (out + in) parameters are those of a LoRA of rank 2r,
which reaches only rank 2r. W2b starts at zero, so the model starts equal to the base model; the
others start kaiming-uniform.

Convolutions: by default the kernel is flattened, W1b and W2b are (r, in * kernel) and the change
is reshaped to (out, in, *kernel). With ``use_effective_conv2d=True`` (and a kernel larger than 1)
each factor is a Tucker product with a small core (FedPara's Proposition 3):

    W1[o, i, k...] = sum_ab t1[a, b, k...] W1a[a, o] W1b[b, i],   t1: (r, r, *kernel),   W1a: (r, out),   W1b: (r, in)

What LoHa shares with LoKr (the forward h = W x + b + delta W x, module and rank dropout, the
layers it adapts) is in lycoris.py. Options and parameter names follow peft's LoHaConfig
(``targets`` is peft's ``target_modules``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ftlab.methods.base import MethodSpec, PeftFormat, inject, warn_rank
from ftlab.methods.lycoris import LycorisLayer, LycorisOptions, init_factors, tucker, uses_tucker, weight_shape


@dataclass
class LoHaOptions(LycorisOptions):
    """One LoHa adapter's options, with peft's defaults (LoHaConfig): r, alpha, rank_dropout, module_dropout,
    init_weights (True: W2b = 0; False: all random, for tests), use_effective_conv2d."""


class LoHaLayer(LycorisLayer):
    """A frozen nn.Linear / Conv1D / convolution plus LoHa adapters.

    Per adapter: ``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b`` and, for Tucker
    convolutions, ``hada_t1``, ``hada_t2`` (peft's names and shapes, but for nn.Conv1d, whose
    cores peft stores as (r, r, kernel, 1)).
    """

    method = "loha"
    options_class = LoHaOptions
    factor_names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")

    @classmethod
    def check(cls, base_layer: nn.Module, name: str, options: LoHaOptions) -> None:
        n_out, n_in, kernel = weight_shape(base_layer)
        flat_in = n_in if uses_tucker(base_layer, options.use_effective_conv2d) else n_in * math.prod(kernel)
        warn_rank(name, options.r, flat_in, n_out)

    def build(self, adapter: str, options: LoHaOptions) -> None:
        n_out, n_in, kernel = weight_shape(self.base_layer)
        r = options.r
        if uses_tucker(self.base_layer, options.use_effective_conv2d):
            shapes = {"hada_w1_a": (r, n_out), "hada_w1_b": (r, n_in), "hada_t1": (r, r, *kernel),
                      "hada_w2_a": (r, n_out), "hada_w2_b": (r, n_in), "hada_t2": (r, r, *kernel)}
        else:
            flat_in = n_in * math.prod(kernel)
            shapes = {"hada_w1_a": (n_out, r), "hada_w1_b": (r, flat_in), "hada_w2_a": (n_out, r),
                      "hada_w2_b": (r, flat_in)}
        # one zero factor is enough to make delta W = 0 at the start
        zero = ("hada_w2_b",) if options.init_weights else ()
        init_factors({name: getattr(self, name) for name in shapes}, adapter, shapes, zero, self.base_layer.weight)

    def delta(self, adapter: str) -> torch.Tensor:
        """scaling * (W1a W1b) * (W2a W2b), output first: (out, in) or (out, in, *kernel)."""
        if adapter in self.hada_t1:
            w1 = tucker(self.hada_t1[adapter], self.hada_w1_a[adapter], self.hada_w1_b[adapter])  # (out, in, *kernel)
            w2 = tucker(self.hada_t2[adapter], self.hada_w2_a[adapter], self.hada_w2_b[adapter])
        else:
            w1 = self.hada_w1_a[adapter] @ self.hada_w1_b[adapter]  # (out, in * kernel)
            w2 = self.hada_w2_a[adapter] @ self.hada_w2_b[adapter]
        n_out, n_in, kernel = weight_shape(self.base_layer)
        return (self.adapter_config[adapter].scaling * (w1 * w2)).view(n_out, n_in, *kernel)

    def rescales_rank_dropout(self, options: LoHaOptions) -> bool:
        return True  # peft's and LyCORIS's LoHa divide by the fraction kept


def apply(model: nn.Module, *, r: int = 8, alpha: float = 8, rank_dropout: float = 0.0, module_dropout: float = 0.0,
          targets: list[str] | str | None = None, init_weights: bool = True, use_effective_conv2d: bool = False,
          rank_pattern: dict | None = None, alpha_pattern: dict | None = None,
          layers_to_transform: list[int] | int | None = None, layers_pattern: list[str] | str | None = None,
          modules_to_save: list[str] | None = None, adapter_name: str = "default") -> nn.Module:
    """Add a LoHa adapter to ``model``'s target layers and freeze the rest; returns ``model``, changed in place.

    ``targets`` is peft's ``target_modules`` (None: the family default, as for LoRA);
    ``rank_pattern`` / ``alpha_pattern``, ``layers_to_transform`` / ``layers_pattern`` and
    ``modules_to_save`` work as in ``lora.apply``. Trainable parameters per layer: 2 r (out + in),
    with in * kernel for a flattened convolution; Tucker convolutions: 2 r (out + in + r * kernel).
    """
    options = LoHaOptions(r=r, alpha=alpha, rank_dropout=rank_dropout, module_dropout=module_dropout,
                          init_weights=init_weights, use_effective_conv2d=use_effective_conv2d)
    return inject(model, [LoHaLayer], options, targets=targets, adapter_name=adapter_name,
                  modules_to_save=modules_to_save, patterns={"r": rank_pattern, "alpha": alpha_pattern},
                  layers_to_transform=layers_to_transform, layers_pattern=layers_pattern)


def lycoris_format(peft_type: str, options: tuple[str, ...], init_values: tuple, prefix: str) -> PeftFormat:
    """How peft stores LoHa or LoKr: the same options and rules; peft takes nn.Linear, nn.Conv1d and nn.Conv2d
    (not GPT-2's Conv1D, nor nn.Conv3d) and keeps an nn.Conv1d's Tucker cores as (r, r, kernel, 1)."""
    return PeftFormat(
        peft_type=peft_type,
        options=("r", "alpha", "rank_dropout", "module_dropout", "use_effective_conv2d", *options),
        patterns={"rank_pattern": "r", "alpha_pattern": "alpha"},
        init="init_weights", init_values=init_values,
        refused={"exclude_modules": "list the targets to keep explicitly, or use a regex that leaves the others out"},
        layer_kinds=(nn.Linear, nn.Conv1d, nn.Conv2d),
        shapes={(f"{prefix}_t{i}", nn.Conv1d): (lambda s, o: (*s, 1)) for i in (1, 2)},
    )


SPEC = MethodSpec(name="loha", apply=apply, lr=1e-2, options=LoHaOptions, layers=("ftlab.methods.loha:LoHaLayer",),
                  peft=lycoris_format("LOHA", (), (True, False), "hada"))
