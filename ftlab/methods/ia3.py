"""IA3: learned vectors that rescale the activations of frozen layers ((IA)^3, Liu et al. 2022).

Each target layer gets one vector l, which multiplies either its output or its input:

    h = l * (W x + b),   l: (out,)   attention keys and values (and any other target)
    h = W (l * x) + b,   l: (in,)    feedforward layers (``feedforward_modules``)

For convolutions l scales the output (or input) channels of the feature maps. l starts at ones,
so the model starts equal to the base model; a layer costs only out (or in) trainable parameters,
where a LoRA of rank r costs r (in + out).

Merging is multiplicative, not additive: W' = diag(l) W and b' = l * b for an output vector,
W' = W diag(l) for an input vector (b is not scaled). ``delta_weight`` gives W' - W for comparison
with the additive methods; ``unmerge`` divides by l again (peft adds 1e-8 to l first; ftlab keeps a
copy of the weight when l has a zero, and divides exactly otherwise).

Defaults as peft's (TRANSFORMERS_MODELS_TO_IA3_*): e.g. BERT targets key, value and output.dense
with output.dense as feedforward (the attention output projection and the second MLP layer);
GPT-2 c_attn and mlp.c_proj with mlp.c_proj as feedforward; Llama k_proj, v_proj and down_proj.
peft has no default for a ResNet; ftlab scales the output channels of every conv in
layer1..layer4. A name in ``feedforward_modules`` matches like a target (``base.find_targets``):
peft checks a plain ``endswith``, which agrees whenever the name is a whole dotted suffix.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ftlab.methods.base import (
    CONVS,
    RESNET_STAGE_CONVS,
    MethodSpec,
    PeftFormat,
    TunedLayer,
    check_one_method,
    default_targets,
    find_targets,
    inject,
    layer_features,
    matches,
    model_family,
    per_output,
    per_row,
    weight_out_in,
)
from ftlab.validate import check_bool

# family -> (targets, feedforward_modules), as peft's IA3 mappings
IA3_TARGETS: dict[str, tuple[list[str] | str, list[str]]] = {
    "bert": (["key", "value", "output.dense"], ["output.dense"]),
    "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "mistral": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "qwen2": (["q_proj", "v_proj", "down_proj"], ["down_proj"]),
    "phi": (["q_proj", "v_proj", "fc2"], ["fc2"]),
    "resnet": (RESNET_STAGE_CONVS, []),
}


@dataclass
class IA3Options:
    """One IA3 adapter's options on one layer: ``init_ia3_weights`` (True: l = 1; False: random, for tests) and
    ``is_feedforward`` (scale the input, not the output; set per layer from ``feedforward_modules``)."""

    init_ia3_weights: bool = True
    is_feedforward: bool = False

    def __post_init__(self):
        check_bool("init_ia3_weights", self.init_ia3_weights)
        check_bool("is_feedforward", self.is_feedforward)


class IA3Layer(TunedLayer):
    """A frozen nn.Linear / Conv1D / convolution whose output (or input) is rescaled by ``ia3_l[adapter]``.

    ``ia3_l[adapter]`` is a vector: (out,), or (in,) for a feedforward layer (peft stores the same
    numbers as (out, 1), (1, in) or (1, C, 1, ...)).
    """

    method = "ia3"
    options_class = IA3Options
    kinds = (nn.Linear, Conv1D, *CONVS)

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.ia3_l = nn.ParameterDict()
        self.erased: tuple[torch.Tensor, torch.Tensor | None] | None = None  # see merge_adapter

    def build(self, adapter: str, options: IA3Options) -> None:
        n_in, n_out = layer_features(self.base_layer)
        like = self.base_layer.weight
        size = n_in if options.is_feedforward else n_out
        l = torch.ones(size, device=like.device, dtype=like.dtype)
        self.ia3_l[adapter] = nn.Parameter(l if options.init_ia3_weights else torch.randn_like(l))

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """h = W (l * x) + b for a feedforward layer, else h = l * (W x + b)."""
        adapter = self.adapter_in_use()
        if adapter is None:
            return self.base_layer(x, *args, **kwargs)
        l = per_output(self.base_layer, self.ia3_l[adapter])  # (C,), or (C, 1, ...) for feature maps
        if self.adapter_config[adapter].is_feedforward:
            return self.base_layer(x * l, *args, **kwargs)
        return self.base_layer(x, *args, **kwargs) * l

    def weight_scale(self, adapter: str) -> torch.Tensor:
        """l shaped to scale the out-first weight: rows (out, 1, ...), or for an input vector the columns each
        output reads, (1, in, ...) (a grouped convolution: (out, in / groups, 1, ...), each group its channels)."""
        l, base = self.ia3_l[adapter], self.base_layer
        weight = weight_out_in(base)
        if not self.adapter_config[adapter].is_feedforward:
            return per_row(weight, l)
        groups = getattr(base, "groups", 1)
        columns = l.view(groups, 1, -1).expand(groups, weight.shape[0] // groups, -1)  # (groups, out / groups, in / g)
        return columns.reshape(weight.shape[0], weight.shape[1], *[1] * (weight.dim() - 2))

    def delta_weight(self, adapter: str) -> torch.Tensor:
        """W' - W = (l - 1) W (rows or columns scaled) in the base weight's own layout; unmerged layers only.

        Merging also scales the bias of a non-feedforward layer, which this does not show.
        """
        if self.merged is not None:
            raise ValueError("an IA3 delta depends on the unmerged base weight; unmerge() first")
        weight = weight_out_in(self.base_layer)
        return weight_out_in(self.base_layer, weight * (self.weight_scale(adapter) - 1))

    def effective_bias(self, adapter: str) -> torch.Tensor | None:
        """l * b when l scales the output, else b."""
        bias = self.base_layer.bias
        if bias is None or self.adapter_config[adapter].is_feedforward:
            return bias
        return bias * self.ia3_l[adapter]

    def merge_adapter(self, adapter: str) -> None:
        base = self.base_layer
        l = self.ia3_l[adapter]
        if (l == 0).any():  # a zero entry erases a row (or column) that dividing by l cannot restore: keep a copy
            self.erased = (base.weight.clone(), None if base.bias is None else base.bias.clone())
        base.weight.copy_(weight_out_in(base, weight_out_in(base) * self.weight_scale(adapter)))
        if not self.adapter_config[adapter].is_feedforward and base.bias is not None:
            base.bias.mul_(l)

    def unmerge_adapter(self, adapter: str) -> None:
        base = self.base_layer
        if self.erased is not None:
            weight, bias = self.erased
            base.weight.copy_(weight)
            if bias is not None:
                base.bias.copy_(bias)
            self.erased = None
            return
        base.weight.copy_(weight_out_in(base, weight_out_in(base) / self.weight_scale(adapter)))
        if not self.adapter_config[adapter].is_feedforward and base.bias is not None:
            base.bias.div_(self.ia3_l[adapter])


def apply(model: nn.Module, *, targets: list[str] | str | None = None,
          feedforward_modules: list[str] | str | None = None, init_ia3_weights: bool = True,
          layers_to_transform: list[int] | int | None = None, layers_pattern: list[str] | str | None = None,
          modules_to_save: list[str] | None = None, adapter_name: str = "default") -> nn.Module:
    """Add an IA3 adapter (one scaling vector per target layer) to ``model`` and freeze the rest; returns ``model``.

    ``targets``: peft's ``target_modules`` (None: the family default, ``IA3_TARGETS``).
    ``feedforward_modules``: which targets scale their input, not their output (a list of name
    suffixes or a regex, as targets; every entry must select a target). None: the family's
    feedforward layers among the targets. ``layers_to_transform`` and ``modules_to_save`` work as
    in ``lora.apply``.
    """
    options = IA3Options(init_ia3_weights=init_ia3_weights)
    check_one_method(model, "ia3")
    if targets is None:
        targets = default_targets(model, IA3_TARGETS, "ia3")[0]
    names = find_targets(model, targets, layers_to_transform=layers_to_transform, layers_pattern=layers_pattern)
    if feedforward_modules is None:
        family_feedforward = IA3_TARGETS.get(model_family(model), ([], []))[1]
        feedforward = [name for name in names if matches(name, family_feedforward)]
    else:
        feedforward = feedforward_targets(names, feedforward_modules)
    overrides = {name: {"is_feedforward": name in feedforward} for name in names}
    return inject(model, [IA3Layer], options, targets=targets, adapter_name=adapter_name,
                  modules_to_save=modules_to_save, overrides=overrides, layers_to_transform=layers_to_transform,
                  layers_pattern=layers_pattern)


def feedforward_targets(names: list[str], feedforward_modules: list[str] | str) -> list[str]:
    """The target names that ``feedforward_modules`` selects (same rules as targets); each entry must select one."""
    if isinstance(feedforward_modules, str):
        selectors = {feedforward_modules: feedforward_modules}  # a regex over whole names
    elif isinstance(feedforward_modules, (list, tuple, set)) and all(isinstance(k, str) for k in feedforward_modules):
        selectors = {key: [key] for key in feedforward_modules}  # name suffixes
    else:
        raise TypeError(f"feedforward_modules must be a list of module names or a regex string, "
                        f"got {feedforward_modules!r}")
    missing = [key for key, selector in selectors.items() if not any(matches(name, selector) for name in names)]
    if missing:
        leaves = sorted({name.rsplit(".", 1)[-1] for name in names})
        raise ValueError(f"feedforward_modules {missing} match none of the targets (their names end in {leaves}); "
                         f"a feedforward layer must be a target too, so add it to targets")
    return [name for name in names if any(matches(name, selector) for selector in selectors.values())]


IA3_FORMAT = PeftFormat(
    peft_type="IA3",
    flags={"feedforward_modules": "is_feedforward"},
    init="init_ia3_weights",
    refused={"exclude_modules": "list the targets to keep explicitly, or use a regex that leaves the others out"},
    ignored=("fan_in_fan_out",),
    layer_kinds=(nn.Linear, Conv1D, nn.Conv2d, nn.Conv3d),
    shapes={("ia3_l", nn.Linear): lambda s, o: (1, s[0]) if o.is_feedforward else (s[0], 1),
            ("ia3_l", Conv1D): lambda s, o: (1, s[0]) if o.is_feedforward else (s[0], 1),
            ("ia3_l", nn.Conv2d): lambda s, o: (1, s[0], 1, 1),
            ("ia3_l", nn.Conv3d): lambda s, o: (1, s[0], 1, 1, 1)},
)

SPEC = MethodSpec(name="ia3", apply=apply, lr=1e-2, options=IA3Options, layers=("ftlab.methods.ia3:IA3Layer",),
                  peft=IA3_FORMAT)
