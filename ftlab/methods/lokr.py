"""LoKr: the change of a frozen weight as a Kronecker product of a small and a (low-rank) larger matrix.

LoKr (Yeh et al. 2023, "Navigating Text-To-Image Customization"; LyCORIS) splits the output
and input dimensions into factors, out = a * b and in = c * d, and sets

    delta W = scaling * W1 (x) W2,   W1: (a, c),   W2: (b, d),   scaling = alpha / r

where (x) is the Kronecker product: delta W[i b + j, p d + q] = scaling * W1[i, p] W2[j, q],
a block matrix whose (i, p) block is W1[i, p] * W2. Its rank is rank(W1) * rank(W2).

* The factors: ``decompose_factor=-1`` takes the two divisors of each dimension closest to
  its square root, smaller first (768 = 24 * 32); a given factor f gives (f, dim / f) and must
  divide both dimensions of every target.
* W2 is itself low-rank, W2 = W2a W2b with W2a (b, r) and W2b (r, d), unless r >= max(b, d) / 2,
  where the full matrix is no larger; with ``decompose_both=True`` the same holds for W1.
* nn.Conv2d: the factors split the channels, and the kernel goes into W2: (b, d, kh, kw) in
  full, W2b (r, d * kh * kw) flattened, or with ``use_effective_conv2d=True`` (kernel larger
  than 1x1) a Tucker product t2 (r, r, kh, kw) x W2a (r, b) x W2b (r, d), as in LoHa.
* GPT-2's Conv1D (weight stored (in, out)) gets the change of the equivalent nn.Linear,
  transposed into its layout; peft refuses LoKr on Conv1D, ftlab does not.

Starting point: W1 (or W1a) is zero, so the model starts equal to the base model
(``init_weights="lycoris"`` zeroes W2 or W2b instead, ``False`` draws everything at random).
``module_dropout`` and ``rank_dropout`` work as in LoHa (loha.py), except that the rows kept
by rank dropout are rescaled only with ``rank_dropout_scale=True`` (peft's default: no).
Options and parameter names follow peft's LoKrConfig (``targets`` is peft's ``target_modules``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ftlab.methods._inject import Tuned, inject, layer_features, weight_out_in
from ftlab.methods.loha import check_options, drop_rows, tucker, uses_tucker, weight_forward


def divisors(n: int) -> list[int]:
    """Every positive divisor of ``n``, ascending."""
    return [d for d in range(1, n + 1) if n % d == 0]


def factorization(dim: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dim`` into ``(m, dim // m)``: m = ``factor`` if given, else the largest divisor <= sqrt(dim).

    factorization(768) == (24, 32), factorization(127) == (1, 127), factorization(768, 4) == (4, 192).
    A given ``factor`` must divide ``dim`` (``LoKrLayer.check`` makes sure it does).
    """
    if factor > 0:
        return factor, dim // factor
    m = max(d for d in range(1, math.isqrt(dim) + 1) if dim % d == 0)
    return m, dim // m


class LoKrLayer(Tuned):
    """A frozen nn.Linear / Conv1D / nn.Conv2d plus LoKr adapters.

    Per adapter: ``lokr_w1`` or ``lokr_w1_a`` and ``lokr_w1_b``; ``lokr_w2``, or ``lokr_w2_a`` and
    ``lokr_w2_b`` (plus ``lokr_t2`` for Tucker convs); peft's names and shapes.
    """

    method = "lokr"

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.lokr_w1 = nn.ParameterDict()
        self.lokr_w1_a = nn.ParameterDict()
        self.lokr_w1_b = nn.ParameterDict()
        self.lokr_w2 = nn.ParameterDict()
        self.lokr_w2_a = nn.ParameterDict()
        self.lokr_w2_b = nn.ParameterDict()
        self.lokr_t2 = nn.ParameterDict()

    @classmethod
    def check(cls, base_layer: nn.Module, name: str, r: int = 8, alpha: float = 8, rank_dropout: float = 0.0,
              module_dropout: float = 0.0, init_weights: bool | str = True, use_effective_conv2d: bool = False,
              decompose_both: bool = False, decompose_factor: int = -1, rank_dropout_scale: bool = False) -> None:
        n_in, n_out = layer_features(base_layer)
        check_options(r, alpha, rank_dropout, module_dropout)
        if init_weights not in (True, False, "lycoris"):
            raise ValueError(f"init_weights must be True (W1 = 0), 'lycoris' (W2 = 0) or False (all random), "
                             f"got {init_weights!r}")
        for option, value in (("use_effective_conv2d", use_effective_conv2d), ("decompose_both", decompose_both),
                              ("rank_dropout_scale", rank_dropout_scale)):
            if value not in (True, False):
                raise ValueError(f"{option} must be True or False, got {value!r}")
        if isinstance(decompose_factor, bool) or not isinstance(decompose_factor, int) or (
                decompose_factor <= 0 and decompose_factor != -1):
            raise ValueError(f"decompose_factor must be -1 (factors near the square root) or a positive integer, "
                             f"got {decompose_factor!r}")
        for which, dim in (("output", n_out), ("input", n_in)):
            if decompose_factor > 0 and dim % decompose_factor:
                raise ValueError(f"decompose_factor={decompose_factor} does not divide the {which} dimension {dim} "
                                 f"of {name!r}; factors that divide both of its dimensions ({n_out} outputs, "
                                 f"{n_in} inputs): {divisors(math.gcd(n_in, n_out))}, or -1 to choose per dimension")

    def add(self, adapter: str, r: int = 8, alpha: float = 8, rank_dropout: float = 0.0, module_dropout: float = 0.0,
            init_weights: bool | str = True, use_effective_conv2d: bool = False, decompose_both: bool = False,
            decompose_factor: int = -1, rank_dropout_scale: bool = False) -> None:
        base = self.base_layer
        n_in, n_out = layer_features(base)
        a, b = factorization(n_out, decompose_factor)
        c, d = factorization(n_in, decompose_factor)
        kernel = tuple(base.kernel_size) if isinstance(base, nn.Conv2d) else ()
        k = math.prod(kernel)  # 1 for Linear and Conv1D
        # a factor is stored in full when a rank-r product would not be smaller
        if decompose_both and r < max(a, c) / 2:
            shapes = {"lokr_w1_a": (a, r), "lokr_w1_b": (r, c)}
        else:
            shapes = {"lokr_w1": (a, c)}
        if r >= max(b, d) / 2:
            shapes["lokr_w2"] = (b, d, *kernel)
        elif uses_tucker(base, use_effective_conv2d):
            shapes.update(lokr_t2=(r, r, *kernel), lokr_w2_a=(r, b), lokr_w2_b=(r, d))
        else:
            shapes.update(lokr_w2_a=(b, r), lokr_w2_b=(r, d * k))
        # init_weights=True zeroes W1 (or W1a), "lycoris" W2 (or W2b); all others kaiming-uniform
        zero = {True: ("lokr_w1", "lokr_w1_a"), "lycoris": ("lokr_w2", "lokr_w2_b"), False: ()}[init_weights]
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        for attribute, shape in shapes.items():
            p = nn.Parameter(torch.empty(shape, **like))
            if attribute in zero:
                nn.init.zeros_(p)
            else:
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
            getattr(self, attribute)[adapter] = p

    def scaling(self, adapter: str) -> float:
        """alpha / r."""
        config = self.adapter_config[adapter]
        return config["alpha"] / config["r"]

    def _factor(self, adapter: str, which: str) -> torch.Tensor:
        """W1 (a, c) or W2 (b, d), (b, d, kh, kw) or (b, d * kh * kw): stored in full or rebuilt from its factors."""
        full = getattr(self, f"lokr_{which}")
        if adapter in full:
            return full[adapter]
        wa, wb = getattr(self, f"lokr_{which}_a")[adapter], getattr(self, f"lokr_{which}_b")[adapter]
        if which == "w2" and adapter in self.lokr_t2:
            return tucker(self.lokr_t2[adapter], wa, wb)  # (b, d, kh, kw)
        return wa @ wb

    def _delta(self, adapter: str) -> torch.Tensor:
        """scaling * W1 (x) W2 with the output dimension first: (out, in) or (out, in, kh, kw)."""
        w1, w2 = self._factor(adapter, "w1"), self._factor(adapter, "w2")
        if w2.dim() == 4:  # kernel kept apart: W1 (a, c, 1, 1) (x) W2 (b, d, kh, kw) = (a b, c d, kh, kw)
            w1 = w1[:, :, None, None]
        # torch.kron fails on a non-contiguous w2, which the Tucker einsum can return
        delta = self.scaling(adapter) * torch.kron(w1, w2.contiguous())
        return delta.view(weight_out_in(self.base_layer).shape)

    def adapter_forward(self, x: torch.Tensor, adapter: str, *args, **kwargs) -> torch.Tensor:
        """h = W x + b + delta W x (with module and rank dropout in training)."""
        result = self.base_layer(x, *args, **kwargs)
        config = self.adapter_config[adapter]
        if self.training and config["module_dropout"] > 0 and torch.rand(1).item() <= config["module_dropout"]:
            return result  # module dropout: the adapter sits this step out
        delta = self._delta(adapter)
        if self.training and config["rank_dropout"] > 0:
            delta = drop_rows(delta, config["rank_dropout"], rescale=config["rank_dropout_scale"])
        return result + weight_forward(self.base_layer, x, delta)

    def delta_weight(self, adapter: str) -> torch.Tensor:
        """delta W in the base weight's own layout: Linear (out, in), Conv1D (in, out), Conv2d (out, in, kh, kw)."""
        return weight_out_in(self.base_layer, self._delta(adapter))


def apply(model: nn.Module, *, r: int = 8, alpha: float = 8, rank_dropout: float = 0.0, module_dropout: float = 0.0,
          targets: list[str] | str | None = None, init_weights: bool | str = True, use_effective_conv2d: bool = False,
          decompose_both: bool = False, decompose_factor: int = -1, rank_dropout_scale: bool = False,
          modules_to_save: list[str] | None = None, adapter_name: str = "default") -> nn.Module:
    """Add a LoKr adapter to ``model``'s target layers and freeze the rest; returns ``model``, changed in place.

    ``targets`` is peft's ``target_modules`` (None: the family default, e.g. BERT
    ["query", "value"], GPT-2 ["c_attn"], ResNet every conv of layer1..layer4).
    ``decompose_factor``: -1, or a factor f dividing every target's dimensions (W1 is then
    (f, f)). ``modules_to_save`` (e.g. ["classifier"]) train in full, as copies.
    Trainable parameters per layer: a c (or r (a + c)) for W1 plus b d kh kw, r (b + d kh kw)
    or r (b + d + r kh kw) for W2.
    """
    options = dict(r=r, alpha=alpha, rank_dropout=rank_dropout, module_dropout=module_dropout,
                   init_weights=init_weights, use_effective_conv2d=use_effective_conv2d,
                   decompose_both=decompose_both, decompose_factor=decompose_factor,
                   rank_dropout_scale=rank_dropout_scale)
    return inject(model, LoKrLayer, targets, adapter_name, options, modules_to_save)
