"""What LoHa and LoKr share: both come from LyCORIS and build a weight change from a few small factors.

Both change a frozen weight by delta W (output first, ``scaling = alpha / r`` included), built from
their factors at every step and applied with the base layer's own operation:

    h = W x + b + delta W x

* nn.Linear, GPT-2's Conv1D (the change of the equivalent nn.Linear, transposed into Conv1D's
  (in, out) layout; peft refuses these) and nn.Conv1d/2d/3d, grouped too: delta W has the weight's
  shape (out, in / groups, *kernel), so it is applied and merged with the layer's groups;
* convolutions: the factors see the kernel flattened, (out, in / groups * kernel), or with
  ``use_effective_conv2d=True`` (and a kernel larger than 1) a Tucker product with a small core,
  FedPara's Proposition 3 (``tucker``);
* regularisation in training: ``module_dropout`` skips the whole adapter for a step with that
  probability; ``rank_dropout`` zeroes each output row of delta W with that probability (LoHa
  divides the rest by the fraction kept, LoKr only with ``rank_dropout_scale=True``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ftlab.methods.base import CONVS, TunedLayer, apply_weight, layer_features, weight_out_in
from ftlab.validate import check_bool, check_choice, check_number, check_positive_int, check_probability


@dataclass
class LycorisOptions:
    """The options LoHa and LoKr share, with peft's defaults (LoHaConfig, LoKrConfig)."""

    r: int = 8
    alpha: float = 8
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    init_weights: bool | str = True
    use_effective_conv2d: bool = False

    init_choices = (True, False)  # a class attribute, not an option

    def __post_init__(self):
        check_positive_int("r", self.r)
        check_number("alpha", self.alpha)
        check_probability("rank_dropout", self.rank_dropout)
        check_probability("module_dropout", self.module_dropout)
        check_choice("init_weights", self.init_weights, self.init_choices)
        check_bool("use_effective_conv2d", self.use_effective_conv2d)

    @property
    def scaling(self) -> float:
        """alpha / r."""
        return self.alpha / self.r


def uses_tucker(base_layer: nn.Module, use_effective_conv2d: bool) -> bool:
    """Whether a convolution's factors are Tucker products: asked for, and the kernel is larger than 1.

    A kernel of size 1 is a plain matrix, so it is treated like nn.Linear (as peft does).
    """
    return use_effective_conv2d and isinstance(base_layer, CONVS) and math.prod(base_layer.kernel_size) > 1


def weight_shape(base_layer: nn.Module) -> tuple[int, int, tuple[int, ...]]:
    """``(out, in, kernel)`` of the base weight, output first: in is in / groups for a grouped convolution."""
    layer_features(base_layer)  # TypeError for a kind of layer these methods do not adapt
    n_out, n_in, *kernel = weight_out_in(base_layer).shape
    return n_out, n_in, tuple(kernel)


def tucker(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """W[o, i, k...] = sum_ab t[a, b, k...] wa[a, o] wb[b, i].

    t: (r, r, *kernel), wa: (r, out), wb: (r, in) -> W: (out, in, *kernel).
    """
    return torch.einsum("ab...,ao,bi->oi...", t, wa, wb)


def drop_rows(delta: torch.Tensor, p: float, rescale: bool) -> torch.Tensor:
    """Rank dropout: zero each output row of ``delta`` (out, ...) with probability ``p``.

    With ``rescale`` the kept rows are divided by the fraction kept (the mask's mean), so the
    expected change stays the same.
    """
    keep = (torch.rand(delta.shape[0]) > p).to(device=delta.device, dtype=delta.dtype)  # (out,)
    if rescale:
        keep = keep / keep.mean()
    return delta * keep.view(-1, *[1] * (delta.dim() - 1))


def init_factors(factors: dict[str, nn.ParameterDict], adapter: str, shapes: dict[str, tuple], zero: tuple[str, ...],
                 like: torch.Tensor) -> None:
    """Create ``factors[name][adapter]`` of ``shapes[name]`` (``like``'s device and dtype): zero for the names in
    ``zero``, kaiming-uniform (a=sqrt(5), nn.Linear's default, as FedPara, LyCORIS and peft) for the others."""
    for name, shape in shapes.items():
        p = nn.Parameter(torch.empty(shape, device=like.device, dtype=like.dtype))
        if name in zero:
            nn.init.zeros_(p)
        else:
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        factors[name][adapter] = p


class LycorisLayer(TunedLayer):
    """A frozen nn.Linear / Conv1D / convolution plus adapters whose change ``delta(adapter)`` a subclass builds."""

    kinds = (nn.Linear, Conv1D, *CONVS)
    factor_names: tuple[str, ...] = ()  # a subclass's factors, each an nn.ParameterDict keyed by adapter name

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        for name in self.factor_names:  # peft's attribute names, e.g. self.hada_w1_a[adapter]
            setattr(self, name, nn.ParameterDict())

    def delta(self, adapter: str) -> torch.Tensor:
        """delta W with the output dimension first, scaling included: (out, in) or (out, in / groups, *kernel)."""
        raise NotImplementedError

    def rescales_rank_dropout(self, options: LycorisOptions) -> bool:
        """Whether rank dropout divides the kept rows by the fraction kept."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """h = W x + b + delta W x (with module and rank dropout in training)."""
        result = self.base_layer(x, *args, **kwargs)
        adapter = self.adapter_in_use()
        if adapter is None:
            return result
        options = self.adapter_config[adapter]
        if self.training and options.module_dropout > 0 and torch.rand(1).item() <= options.module_dropout:
            return result  # module dropout: the adapter sits this step out
        delta = self.delta(adapter)
        if self.training and options.rank_dropout > 0:
            delta = drop_rows(delta, options.rank_dropout, self.rescales_rank_dropout(options))
        return result + apply_weight(self.base_layer, x, delta)

    def delta_weight(self, adapter: str) -> torch.Tensor:
        """delta W in the base weight's own layout: Linear (out, in), Conv1D (in, out), conv (out, in / groups, *k)."""
        return weight_out_in(self.base_layer, self.delta(adapter))
