"""LoHa: the change of a frozen weight as a Hadamard product of two low-rank products.

LoHa (FedPara, Hyeon-Woo et al. 2022; LyCORIS) multiplies two rank-r products element-wise:

    delta W = scaling * (W1a W1b) * (W2a W2b),   W1a, W2a: (out, r),   W1b, W2b: (r, in),   scaling = alpha / r

``*`` is the element-wise product, whose rank can reach r^2 (the rank of a Hadamard product
is at most the product of the ranks), while the 2 r (out + in) parameters are those of a
LoRA of rank 2r, which reaches only rank 2r. r is at most min(out, in). W2b starts at zero,
so the model starts equal to the base model; the others start kaiming-uniform.

nn.Conv2d: by default the kernel is flattened, W1b and W2b are (r, in * kh * kw) and the
change is reshaped to (out, in, kh, kw). With ``use_effective_conv2d=True`` (and a kernel
larger than 1x1) each factor is a Tucker product with a small core (FedPara's Proposition 3):

    W1[o, i, k, l] = sum_ab t1[a, b, k, l] W1a[a, o] W1b[b, i],   t1: (r, r, kh, kw),   W1a: (r, out),   W1b: (r, in)

GPT-2's Conv1D (weight stored (in, out)) gets the same change as an nn.Linear, transposed
into its layout; peft refuses LoHa on Conv1D, ftlab does not.

Regularisation in training: ``module_dropout`` skips the whole adapter for a step with that
probability; ``rank_dropout`` zeroes each output row of delta W with that probability and
divides the rest by the fraction kept. Options and parameter names follow peft's LoHaConfig
(``targets`` is peft's ``target_modules``). LoKr (lokr.py) uses this file's helpers too.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ftlab.methods._inject import Tuned, inject, layer_features, weight_out_in


def check_options(r: int, alpha: float, rank_dropout: float, module_dropout: float) -> None:
    """Raise ValueError for options LoHa and LoKr share that are out of range."""
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ValueError(f"r must be a positive integer rank, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"alpha must be a number, got {alpha!r}")
    for option, p in (("rank_dropout", rank_dropout), ("module_dropout", module_dropout)):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"{option} must be a probability in [0, 1), got {p!r}")


def uses_tucker(base_layer: nn.Module, use_effective_conv2d: bool) -> bool:
    """Whether the factors of a conv are Tucker products: asked for, and the kernel is larger than 1x1.

    A 1x1 kernel is a plain matrix, so it is always treated like nn.Linear (as peft does).
    """
    return use_effective_conv2d and isinstance(base_layer, nn.Conv2d) and base_layer.kernel_size != (1, 1)


def tucker(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """W[o, i, k, l] = sum_ab t[a, b, k, l] wa[a, o] wb[b, i].

    t: (r, r, kh, kw), wa: (r, out), wb: (r, in) -> W: (out, in, kh, kw).
    """
    return torch.einsum("abkl,ao,bi->oikl", t, wa, wb)


def drop_rows(delta: torch.Tensor, p: float, rescale: bool) -> torch.Tensor:
    """Rank dropout: zero each output row of ``delta`` (out, ...) with probability ``p``.

    With ``rescale`` the kept rows are divided by the fraction kept (the mask's mean), so the
    expected change stays the same.
    """
    keep = (torch.rand(delta.shape[0]) > p).to(device=delta.device, dtype=delta.dtype)  # (out,)
    if rescale:
        keep = keep / keep.mean()
    return delta * keep.view(-1, *[1] * (delta.dim() - 1))


def weight_forward(base_layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``base_layer``'s operation with another weight (output dimension first) and no bias: delta W x.

    Linear and Conv1D: x @ weight.T with weight (out, in); Conv2d: a convolution with weight
    (out, in, kh, kw) and the base layer's stride, padding and dilation.
    """
    if isinstance(base_layer, nn.Conv2d):
        return F.conv2d(x, weight, None, base_layer.stride, base_layer.padding, base_layer.dilation)
    return F.linear(x, weight)  # (..., out)


class LoHaLayer(Tuned):
    """A frozen nn.Linear / Conv1D / nn.Conv2d plus LoHa adapters.

    Per adapter: ``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b`` and, for Tucker
    convs, ``hada_t1``, ``hada_t2`` (peft's names and shapes).
    """

    method = "loha"

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.hada_w1_a = nn.ParameterDict()
        self.hada_w1_b = nn.ParameterDict()
        self.hada_w2_a = nn.ParameterDict()
        self.hada_w2_b = nn.ParameterDict()
        self.hada_t1 = nn.ParameterDict()
        self.hada_t2 = nn.ParameterDict()

    @classmethod
    def check(cls, base_layer: nn.Module, name: str, r: int = 8, alpha: float = 8, rank_dropout: float = 0.0,
              module_dropout: float = 0.0, init_weights: bool = True, use_effective_conv2d: bool = False) -> None:
        n_in, n_out = layer_features(base_layer)
        check_options(r, alpha, rank_dropout, module_dropout)
        if init_weights not in (True, False):
            raise ValueError(f"init_weights must be True (W2b = 0) or False (all random), got {init_weights!r}")
        if use_effective_conv2d not in (True, False):
            raise ValueError(f"use_effective_conv2d must be True or False, got {use_effective_conv2d!r}")
        if isinstance(base_layer, nn.Conv2d) and not uses_tucker(base_layer, use_effective_conv2d):
            n_in *= base_layer.kernel_size[0] * base_layer.kernel_size[1]  # the flattened kernel
        if r > min(n_in, n_out):
            raise ValueError(f"r={r} does not fit {name!r} ({n_in} inputs, {n_out} outputs): "
                             f"the largest rank allowed there is {min(n_in, n_out)}")

    def add(self, adapter: str, r: int = 8, alpha: float = 8, rank_dropout: float = 0.0, module_dropout: float = 0.0,
            init_weights: bool = True, use_effective_conv2d: bool = False) -> None:
        base = self.base_layer
        n_in, n_out = layer_features(base)
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        if uses_tucker(base, use_effective_conv2d):
            kernel = base.kernel_size
            shapes = {"hada_w1_a": (r, n_out), "hada_w1_b": (r, n_in), "hada_t1": (r, r, *kernel),
                      "hada_w2_a": (r, n_out), "hada_w2_b": (r, n_in), "hada_t2": (r, r, *kernel)}
        else:
            if isinstance(base, nn.Conv2d):
                n_in *= base.kernel_size[0] * base.kernel_size[1]
            shapes = {"hada_w1_a": (n_out, r), "hada_w1_b": (r, n_in), "hada_w2_a": (n_out, r), "hada_w2_b": (r, n_in)}
        for attribute, shape in shapes.items():
            p = nn.Parameter(torch.empty(shape, **like))
            # kaiming-uniform (a=sqrt(5), nn.Linear's default) for all, as FedPara and peft do;
            # one zero factor is enough to make delta W = 0 at the start
            if init_weights and attribute == "hada_w2_b":
                nn.init.zeros_(p)
            else:
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
            getattr(self, attribute)[adapter] = p

    def scaling(self, adapter: str) -> float:
        """alpha / r."""
        config = self.adapter_config[adapter]
        return config["alpha"] / config["r"]

    def _delta(self, adapter: str) -> torch.Tensor:
        """scaling * (W1a W1b) * (W2a W2b) with the output dimension first: (out, in) or (out, in, kh, kw)."""
        if adapter in self.hada_t1:
            w1 = tucker(self.hada_t1[adapter], self.hada_w1_a[adapter], self.hada_w1_b[adapter])  # (out, in, kh, kw)
            w2 = tucker(self.hada_t2[adapter], self.hada_w2_a[adapter], self.hada_w2_b[adapter])
        else:
            w1 = self.hada_w1_a[adapter] @ self.hada_w1_b[adapter]  # (out, in[ * kh * kw])
            w2 = self.hada_w2_a[adapter] @ self.hada_w2_b[adapter]
        delta = self.scaling(adapter) * (w1 * w2)
        return delta.view(weight_out_in(self.base_layer).shape)

    def adapter_forward(self, x: torch.Tensor, adapter: str, *args, **kwargs) -> torch.Tensor:
        """h = W x + b + delta W x (with module and rank dropout in training)."""
        result = self.base_layer(x, *args, **kwargs)
        config = self.adapter_config[adapter]
        if self.training and config["module_dropout"] > 0 and torch.rand(1).item() <= config["module_dropout"]:
            return result  # module dropout: the adapter sits this step out
        delta = self._delta(adapter)
        if self.training and config["rank_dropout"] > 0:
            delta = drop_rows(delta, config["rank_dropout"], rescale=True)
        return result + weight_forward(self.base_layer, x, delta)

    def delta_weight(self, adapter: str) -> torch.Tensor:
        """delta W in the base weight's own layout: Linear (out, in), Conv1D (in, out), Conv2d (out, in, kh, kw)."""
        return weight_out_in(self.base_layer, self._delta(adapter))


def apply(model: nn.Module, *, r: int = 8, alpha: float = 8, rank_dropout: float = 0.0, module_dropout: float = 0.0,
          targets: list[str] | str | None = None, init_weights: bool = True, use_effective_conv2d: bool = False,
          modules_to_save: list[str] | None = None, adapter_name: str = "default") -> nn.Module:
    """Add a LoHa adapter to ``model``'s target layers and freeze the rest; returns ``model``, changed in place.

    ``targets`` is peft's ``target_modules`` (None: the family default, e.g. BERT
    ["query", "value"], GPT-2 ["c_attn"], ResNet every conv of layer1..layer4).
    ``init_weights=False`` draws every factor at random (the model no longer starts equal
    to the base; for tests). ``modules_to_save`` (e.g. ["classifier"]) train in full, as copies.
    Trainable parameters per layer: 2 r (out + in), with in * kh * kw for a flattened conv;
    Tucker convs: 2 r (out + in + r kh kw).
    """
    options = dict(r=r, alpha=alpha, rank_dropout=rank_dropout, module_dropout=module_dropout,
                   init_weights=init_weights, use_effective_conv2d=use_effective_conv2d)
    return inject(model, LoHaLayer, targets, adapter_name, options, modules_to_save)
