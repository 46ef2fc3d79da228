"""LoKr: the change of a frozen weight as a Kronecker product of a small and a (low-rank) larger matrix.

LoKr (Yeh et al. 2023, "Navigating Text-To-Image Customization"; LyCORIS) splits the output and
input dimensions into factors, out = a * b and in = c * d, and sets

    delta W = scaling * W1 (x) W2,   W1: (a, c),   W2: (b, d),   scaling = alpha / r

where (x) is the Kronecker product: delta W[i b + j, p d + q] = scaling * W1[i, p] W2[j, q], a block
matrix whose (i, p) block is W1[i, p] * W2. Its rank is rank(W1) * rank(W2).

* The factors: ``decompose_factor=-1`` takes the two divisors of each dimension closest to its
  square root, smaller first (768 = 24 * 32); a factor f that divides the dimension gives
  (f, dim / f); one that does not falls back, as in peft, to the largest divisor up to f and the
  square root (a warning says which split was used).
* W2 is itself low-rank, W2 = W2a W2b with W2a (b, r) and W2b (r, d), unless r >= max(b, d) / 2,
  where the full matrix is no larger; with ``decompose_both=True`` the same holds for W1.
* Convolutions: the factors split the channels (in / groups for a grouped one) and the kernel goes
  into W2: (b, d, *kernel) in full, W2b (r, d * kernel) flattened, or with
  ``use_effective_conv2d=True`` (kernel larger than 1) a Tucker product t2 (r, r, *kernel) x W2a
  (r, b) x W2b (r, d), as in LoHa.

Starting point: W1 (or W1a) is zero, so the model starts equal to the base model
(``init_weights="lycoris"`` zeroes W2 or W2b instead, ``False`` draws everything at random).
What LoKr shares with LoHa (forward, module and rank dropout, the layers it adapts) is in
lycoris.py; its rank dropout rescales the kept rows only with ``rank_dropout_scale=True`` (peft's
default: no). Options and parameter names follow peft's LoKrConfig.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ftlab.methods.base import MethodSpec, inject
from ftlab.methods.loha import lycoris_format
from ftlab.methods.lycoris import LycorisLayer, LycorisOptions, init_factors, tucker, uses_tucker, weight_shape
from ftlab.validate import check_bool, check_int


def divisors(n: int) -> list[int]:
    """Every positive divisor of ``n``, ascending."""
    return [d for d in range(1, n + 1) if n % d == 0]


def factorization(dim: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dim`` into ``(m, dim // m)`` as peft does.

    ``factor`` dividing ``dim``: m = factor. Otherwise m is the largest divisor of ``dim`` that is at
    most sqrt(dim) and at most ``factor`` (when given). factorization(768) == (24, 32),
    factorization(127) == (1, 127), factorization(768, 4) == (4, 192), factorization(10, 4) == (2, 5).
    """
    if factor > 0 and dim % factor == 0:
        return factor, dim // factor
    limit = dim if factor <= 0 else factor
    m = max(d for d in divisors(dim) if d * d <= dim and d <= limit)
    return m, dim // m


@dataclass
class LoKrOptions(LycorisOptions):
    """One LoKr adapter's options, with peft's defaults (LoKrConfig): LoHa's, ``init_weights`` also "lycoris",
    and ``decompose_both``, ``decompose_factor``, ``rank_dropout_scale``."""

    decompose_both: bool = False
    decompose_factor: int = -1
    rank_dropout_scale: bool = False

    init_choices = (True, False, "lycoris")

    def __post_init__(self):
        super().__post_init__()
        check_bool("decompose_both", self.decompose_both)
        check_bool("rank_dropout_scale", self.rank_dropout_scale)
        check_int("decompose_factor", self.decompose_factor)
        if self.decompose_factor == 0 or self.decompose_factor < -1:
            raise ValueError(f"decompose_factor must be -1 (factors near the square root) or a positive integer, "
                             f"got {self.decompose_factor}")


class LoKrLayer(LycorisLayer):
    """A frozen nn.Linear / Conv1D / convolution plus LoKr adapters.

    Per adapter: ``lokr_w1`` or ``lokr_w1_a`` and ``lokr_w1_b``; ``lokr_w2``, or ``lokr_w2_a`` and
    ``lokr_w2_b`` (plus ``lokr_t2`` for Tucker convolutions); peft's names and shapes.
    """

    method = "lokr"
    options_class = LoKrOptions
    factor_names = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")

    @classmethod
    def check(cls, base_layer: nn.Module, name: str, options: LoKrOptions) -> None:
        n_out, n_in, kernel = weight_shape(base_layer)
        f = options.decompose_factor
        for which, dim in (("outputs", n_out), ("inputs", n_in)):
            if f > 0 and dim % f:
                split = factorization(dim, f)
                warnings.warn(f"decompose_factor={f} does not divide the {dim} {which} of {name!r}; as peft does, "
                              f"LoKr splits them {split[0]} x {split[1]} (the largest divisor up to {f} and the "
                              f"square root)", stacklevel=4)
        (a, _), (c, _) = factorization(n_out, f), factorization(n_in, f)
        w2 = cls.factor_shapes(base_layer, options).get("lokr_w2")
        if isinstance(base_layer, nn.Conv1d) and w2 is not None and a * c > 1:
            raise ValueError(f"LoKr on an nn.Conv1d with W2 {w2} stored in full: peft builds this change with "
                             f"torch.kron of a 2-D W1 and a 3-D W2, which is not W1 (x) W2, so ftlab's Kronecker "
                             f"product would differ from peft's; choose r < {max(w2[:2]) / 2:g} (W2 as a product) "
                             f"or use_effective_conv2d=True")

    @staticmethod
    def factor_shapes(base_layer: nn.Module, options: LoKrOptions) -> dict[str, tuple]:
        """The factors' shapes (module docstring): W1 (a, c) or W1a (a, r), W1b (r, c); W2 in full or as factors."""
        n_out, n_in, kernel = weight_shape(base_layer)
        r = options.r
        a, b = factorization(n_out, options.decompose_factor)
        c, d = factorization(n_in, options.decompose_factor)
        # a factor is stored in full when a rank-r product would not be smaller
        if options.decompose_both and r < max(a, c) / 2:
            shapes = {"lokr_w1_a": (a, r), "lokr_w1_b": (r, c)}
        else:
            shapes = {"lokr_w1": (a, c)}
        if r >= max(b, d) / 2:
            shapes["lokr_w2"] = (b, d, *kernel)
        elif uses_tucker(base_layer, options.use_effective_conv2d):
            shapes.update(lokr_t2=(r, r, *kernel), lokr_w2_a=(r, b), lokr_w2_b=(r, d))
        else:
            shapes.update(lokr_w2_a=(b, r), lokr_w2_b=(r, d * math.prod(kernel)))
        return shapes

    def build(self, adapter: str, options: LoKrOptions) -> None:
        shapes = self.factor_shapes(self.base_layer, options)
        # init_weights=True zeroes W1 (or W1a), "lycoris" W2 (or W2b); all others kaiming-uniform
        zero = {True: ("lokr_w1", "lokr_w1_a"), "lycoris": ("lokr_w2", "lokr_w2_b"), False: ()}[options.init_weights]
        init_factors({name: getattr(self, name) for name in shapes}, adapter, shapes, zero, self.base_layer.weight)

    def factor(self, adapter: str, which: str) -> torch.Tensor:
        """W1 (a, c) or W2 (b, d[, *kernel]) / (b, d * kernel): stored in full or rebuilt from its factors."""
        full = getattr(self, f"lokr_{which}")
        if adapter in full:
            return full[adapter]
        wa, wb = getattr(self, f"lokr_{which}_a")[adapter], getattr(self, f"lokr_{which}_b")[adapter]
        if which == "w2" and adapter in self.lokr_t2:
            return tucker(self.lokr_t2[adapter], wa, wb)  # (b, d, *kernel)
        return wa @ wb

    def delta(self, adapter: str) -> torch.Tensor:
        """scaling * W1 (x) W2, output first: (out, in) or (out, in, *kernel)."""
        w1, w2 = self.factor(adapter, "w1"), self.factor(adapter, "w2")
        w1 = w1.view(*w1.shape, *[1] * (w2.dim() - 2))  # kernel kept apart in W2: (a, c, 1, ...) (x) (b, d, *kernel)
        # torch.kron fails on a non-contiguous w2, which the Tucker einsum can return
        delta = self.adapter_config[adapter].scaling * torch.kron(w1, w2.contiguous())
        n_out, n_in, kernel = weight_shape(self.base_layer)
        return delta.view(n_out, n_in, *kernel)

    def rescales_rank_dropout(self, options: LoKrOptions) -> bool:
        return options.rank_dropout_scale


def apply(model: nn.Module, *, r: int = 8, alpha: float = 8, rank_dropout: float = 0.0, module_dropout: float = 0.0,
          targets: list[str] | str | None = None, init_weights: bool | str = True, use_effective_conv2d: bool = False,
          decompose_both: bool = False, decompose_factor: int = -1, rank_dropout_scale: bool = False,
          rank_pattern: dict | None = None, alpha_pattern: dict | None = None,
          layers_to_transform: list[int] | int | None = None, layers_pattern: list[str] | str | None = None,
          modules_to_save: list[str] | None = None, adapter_name: str = "default") -> nn.Module:
    """Add a LoKr adapter to ``model``'s target layers and freeze the rest; returns ``model``, changed in place.

    ``targets``, the patterns, ``layers_to_transform`` and ``modules_to_save`` work as in
    ``lora.apply``. Trainable parameters per layer: a c (or r (a + c)) for W1 plus b d * kernel,
    r (b + d * kernel) or r (b + d + r * kernel) for W2.
    """
    options = LoKrOptions(r=r, alpha=alpha, rank_dropout=rank_dropout, module_dropout=module_dropout,
                          init_weights=init_weights, use_effective_conv2d=use_effective_conv2d,
                          decompose_both=decompose_both, decompose_factor=decompose_factor,
                          rank_dropout_scale=rank_dropout_scale)
    return inject(model, [LoKrLayer], options, targets=targets, adapter_name=adapter_name,
                  modules_to_save=modules_to_save, patterns={"r": rank_pattern, "alpha": alpha_pattern},
                  layers_to_transform=layers_to_transform, layers_pattern=layers_pattern)


SPEC = MethodSpec(name="lokr", apply=apply, lr=3e-3, options=LoKrOptions, layers=("ftlab.methods.lokr:LoKrLayer",),
                  peft=lycoris_format("LOKR", ("decompose_both", "decompose_factor", "rank_dropout_scale"),
                                      (True, False, "lycoris"), "lokr"))
