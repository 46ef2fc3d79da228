"""IA3: learned vectors that rescale the activations of frozen layers ((IA)^3, Liu et al. 2022).

Each target layer gets one vector l, which multiplies either its output or its input:

    h = l * (W x + b),   l: (out,)   attention keys and values (and any other target)
    h = W (l * x) + b,   l: (in,)    feedforward layers (``feedforward_modules``)

For nn.Conv2d, l scales the output (or input) channels of the (B, C, H, W) feature maps.
l starts at ones, so the model starts equal to the base model; a layer costs only out
(or in) trainable parameters, where a LoRA of rank r costs r (in + out).

Merging is multiplicative, not additive: W' = diag(l) W and b' = l * b for an output
vector, W' = W diag(l) for an input vector (b is not scaled). ``delta_weight`` gives
W' - W for comparison with the additive methods; ``unmerge`` divides by l again.

Defaults as peft's (TRANSFORMERS_MODELS_TO_IA3_*): BERT targets key, value and output.dense
with output.dense as feedforward (the attention output projection and the second MLP layer);
GPT-2 targets c_attn and mlp.c_proj with mlp.c_proj as feedforward. peft has no default for a
ResNet; ftlab scales the output channels of every conv in layer1..layer4. A name in
``feedforward_modules`` matches like a target (``_inject.find_targets``): peft checks a plain
``endswith``, which agrees whenever the name is a whole dotted suffix such as "output.dense".
"""
from __future__ import annotations

import torch
from torch import nn

from ftlab.methods._inject import (RESNET_STAGE_CONVS, Tuned, _matches, find_targets, inject, layer_features,
                                   model_family, weight_out_in)

# family -> (targets, feedforward_modules), as peft's IA3 mappings for bert and gpt2
DEFAULTS: dict[str, tuple[list[str] | str, list[str]]] = {
    "bert": (["key", "value", "output.dense"], ["output.dense"]),
    "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
    "resnet": (RESNET_STAGE_CONVS, []),
}


class IA3Layer(Tuned):
    """A frozen nn.Linear / Conv1D / nn.Conv2d whose output (or input) is rescaled by ``ia3_l[adapter]``.

    ``ia3_l[adapter]`` is a vector: (out,), or (in,) when the adapter's option ``is_feedforward``
    is set (peft stores the same numbers as (out, 1), (1, in) or (1, C, 1, 1)).
    """

    method = "ia3"

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.ia3_l = nn.ParameterDict()
        self._erased: tuple[torch.Tensor, torch.Tensor | None] | None = None  # see _merge

    @classmethod
    def check(cls, base_layer: nn.Module, name: str, init_ia3_weights: bool = True,
              is_feedforward: bool = False) -> None:
        layer_features(base_layer)
        if init_ia3_weights not in (True, False):
            raise ValueError(f"init_ia3_weights must be True (l = 1) or False (random l), got {init_ia3_weights!r}")

    def add(self, adapter: str, init_ia3_weights: bool = True, is_feedforward: bool = False) -> None:
        base = self.base_layer
        n_in, n_out = layer_features(base)
        size = n_in if is_feedforward else n_out
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.ia3_l[adapter] = nn.Parameter(torch.ones(size, **like) if init_ia3_weights else torch.randn(size, **like))

    def _is_feedforward(self, adapter: str) -> bool:
        return self.adapter_config[adapter]["is_feedforward"]

    def _per_channel(self, l: torch.Tensor) -> torch.Tensor:
        """Shape l (C,) to broadcast against activations: (1, C, 1, 1) for Conv2d, (C,) on the last axis otherwise."""
        return l.view(1, -1, 1, 1) if isinstance(self.base_layer, nn.Conv2d) else l

    def adapter_forward(self, x: torch.Tensor, adapter: str, *args, **kwargs) -> torch.Tensor:
        """h = W (l * x) + b for a feedforward layer, else h = l * (W x + b)."""
        l = self._per_channel(self.ia3_l[adapter])
        if self._is_feedforward(adapter):
            return self.base_layer(x * l, *args, **kwargs)
        return self.base_layer(x, *args, **kwargs) * l

    def _weight_scale(self, adapter: str) -> torch.Tensor:
        """l shaped to scale the out-first weight: rows (out, 1[, 1, 1]) or columns (1, in[, 1, 1])."""
        l = self.ia3_l[adapter]
        ones = [1] * (self.base_layer.weight.dim() - 2)
        return l.view(1, -1, *ones) if self._is_feedforward(adapter) else l.view(-1, 1, *ones)

    def delta_weight(self, adapter: str) -> torch.Tensor:
        """W' - W = (l - 1) W (rows or columns scaled) in the base weight's own layout; unmerged layers only.

        Merging also scales the bias of a non-feedforward layer, which this does not show.
        """
        if self.merged_adapter is not None:
            raise ValueError("an IA3 delta depends on the unmerged base weight; unmerge() first")
        weight = weight_out_in(self.base_layer)
        return weight_out_in(self.base_layer, weight * (self._weight_scale(adapter) - 1))

    def _merge(self, adapter: str) -> None:
        base = self.base_layer
        l = self.ia3_l[adapter]
        if (l == 0).any():  # a zero entry erases a row (or column) that dividing by l cannot restore: keep a copy
            self._erased = (base.weight.clone(), None if base.bias is None else base.bias.clone())
        merged = weight_out_in(base) * self._weight_scale(adapter)
        base.weight.copy_(weight_out_in(base, merged))
        if not self._is_feedforward(adapter) and base.bias is not None:
            base.bias.mul_(l)

    def _unmerge(self, adapter: str) -> None:
        base = self.base_layer
        if self._erased is not None:
            weight, bias = self._erased
            base.weight.copy_(weight)
            if bias is not None:
                base.bias.copy_(bias)
            self._erased = None
            return
        original = weight_out_in(base) / self._weight_scale(adapter)
        base.weight.copy_(weight_out_in(base, original))
        if not self._is_feedforward(adapter) and base.bias is not None:
            base.bias.div_(self.ia3_l[adapter])


def apply(model: nn.Module, *, targets: list[str] | str | None = None,
          feedforward_modules: list[str] | str | None = None, init_ia3_weights: bool = True,
          modules_to_save: list[str] | None = None, adapter_name: str = "default") -> nn.Module:
    """Add an IA3 adapter (one scaling vector per target layer) to ``model`` and freeze the rest; returns ``model``.

    ``targets``: peft's ``target_modules`` (None: the family default, see module docstring).
    ``feedforward_modules``: which targets scale their input, not their output (a list of name
    suffixes or a regex, as targets; every entry must select a target). None: the family's
    feedforward layers among the targets.
    ``init_ia3_weights=False`` draws l at random (for tests). ``modules_to_save`` (e.g.
    ["classifier"]) train in full, as copies.
    """
    family = model_family(model)
    if targets is None:
        if family not in DEFAULTS:
            raise ValueError(f"no default IA3 targets for {type(model).__name__} (family {family!r}); pass targets= "
                             f"(and feedforward_modules= for layers whose input should be scaled)")
        targets = DEFAULTS[family][0]
    names = find_targets(model, targets)
    if feedforward_modules is None:
        feedforward = [name for name in names if _matches(name, DEFAULTS.get(family, (None, []))[1])]
    else:
        feedforward = _feedforward_targets(names, feedforward_modules)
    layer_options = {name: {"is_feedforward": name in feedforward} for name in names}
    options = {"init_ia3_weights": init_ia3_weights, "is_feedforward": False}
    return inject(model, IA3Layer, targets, adapter_name, options, modules_to_save, layer_options)


def _feedforward_targets(names: list[str], feedforward_modules: list[str] | str) -> list[str]:
    """The target names that ``feedforward_modules`` selects (same rules as targets); each entry must select one."""
    if isinstance(feedforward_modules, str):
        selectors = {feedforward_modules: feedforward_modules}  # a regex over whole names
    elif isinstance(feedforward_modules, (list, tuple, set)) and all(isinstance(k, str) for k in feedforward_modules):
        selectors = {key: [key] for key in feedforward_modules}  # name suffixes
    else:
        raise TypeError(f"feedforward_modules must be a list of module names or a regex string, "
                        f"got {feedforward_modules!r}")
    missing = [key for key, selector in selectors.items() if not any(_matches(name, selector) for name in names)]
    if missing:
        leaves = sorted({name.rsplit(".", 1)[-1] for name in names})
        raise ValueError(f"feedforward_modules {missing} match none of the targets (their names end in {leaves}); "
                         f"a feedforward layer must be a target too, so add it to targets")
    return [name for name in names if any(_matches(name, selector) for selector in selectors.values())]
