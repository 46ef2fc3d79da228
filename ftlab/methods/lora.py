"""LoRA: a trainable low-rank change added to frozen weights (Hu et al. 2021, "LoRA: Low-Rank Adaptation").

The frozen weight W (out, in) gets a change of rank r:

    h = W x + b + scaling * B A dropout(x),   A: (r, in),   B: (out, r),   scaling = lora_alpha / r

(``use_rslora=True``: scaling = lora_alpha / sqrt(r), Kalajdzievski 2023). A starts kaiming-uniform
(nn.Linear's own init, as loralib and peft) and B at zero, so the model starts exactly equal to the
base model. A layer trains r (in + out) parameters instead of in * out.

This file adapts nn.Linear, GPT-2's Conv1D (weight stored (in, out): its change is transposed into
that layout) and nn.Conv1d/2d/3d: A is a convolution with the base layer's kernel, stride, padding
and dilation (in -> r channels), B a 1x1 convolution (r -> out), so B A is the change with the kernel
flattened. Embeddings: lora_embedding.py; nn.MultiheadAttention: lora_mha.py; the variants DoRA,
VeLoRA and BD-LoRA: dora.py, velora.py, bdlora.py (one option each, ``LoraOptions``).

Options (``LoraOptions``) and parameter names follow peft's LoraConfig, except that peft's
``target_modules`` is called ``targets`` (same rules, see ``base.find_targets``).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ftlab.methods.base import (
    CONVS,
    MethodSpec,
    PeftFormat,
    TunedLayer,
    adapter_names,
    carry_out,
    check_unmerged,
    layer_features,
    plan_injection,
    tuned_layers,
    warn_rank,
    weight_out_in,
)
from ftlab.validate import check_bool, check_choice, check_number, check_positive_int, check_probability

INIT_HINT = ("ftlab initialises LoRA with True (B = 0), 'gaussian' or False; peft's initialisations that read or "
             "change the base weights when peft loads the adapter (PiSSA, OLoRA, LoftQ, EVA, CorDA, MiCA, ...) are "
             "not supported")


@dataclass
class LoraOptions:
    """One LoRA adapter's options, with peft's defaults (LoraConfig).

    ``init_lora_weights``: True (B = 0), "gaussian" (A ~ N(0, 1/r^2), B = 0) or False (B random
    too: the model no longer starts equal to the base; for tests). ``lora_bias``: B has a bias
    (starting at 0), merged into the base bias. ``bias``: which base biases train as well ("none",
    "lora_only": the adapted layers', "all": every bias; they change the base model itself).
    Variants, each in its own file, chosen by one option: ``use_dora`` (dora.py), ``velora_config``
    (velora.py: {"num_groups", "scale", "init_type"}) and ``use_bdlora`` (bdlora.py:
    {"target_modules_bd_a", "target_modules_bd_b", "nblocks", "match_strict"}); a dict, or peft's
    config object. ``block_diagonal`` ("A", "B" or None) is not peft's: ``for_layer`` sets it per
    layer from ``use_bdlora``.
    """

    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    use_rslora: bool = False
    init_lora_weights: bool | str = True
    lora_bias: bool = False
    bias: str = "none"
    use_dora: bool = False
    velora_config: dict | None = None
    use_bdlora: dict | None = None
    block_diagonal: str | None = None

    def __post_init__(self):
        check_positive_int("r", self.r)
        check_number("lora_alpha", self.lora_alpha)
        check_probability("lora_dropout", self.lora_dropout)
        for name in ("use_rslora", "lora_bias", "use_dora"):
            check_bool(name, getattr(self, name))
        check_choice("init_lora_weights", self.init_lora_weights, (True, False, "gaussian"), hint=INIT_HINT)
        check_choice("bias", self.bias, ("none", "lora_only", "all"))
        check_choice("block_diagonal", self.block_diagonal, (None, "A", "B"))
        if self.lora_bias and self.init_lora_weights == "gaussian":
            raise ValueError("lora_bias=True goes with init_lora_weights=True or False, as in peft, not 'gaussian'")
        for name in ("velora_config", "use_bdlora"):
            value = getattr(self, name)
            if dataclasses.is_dataclass(value):  # peft's VeloraConfig / BdLoraConfig
                setattr(self, name, dataclasses.asdict(value))
            elif value is not None and not isinstance(value, dict):
                raise TypeError(f"{name} must be a dict of its options (or peft's config object), got {value!r}")
        if sum((self.use_dora, self.velora_config is not None, self.use_bdlora is not None)) > 1:
            raise ValueError("use_dora, velora_config and use_bdlora are LoRA variants: choose one of them")

    @property
    def scaling(self) -> float:
        """lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    @property
    def variant(self) -> str | None:
        """The LoRA variant these options ask for: "dora", "velora", "bdlora" or None (plain LoRA)."""
        if self.use_dora:
            return "dora"
        if self.velora_config is not None:
            return "velora"
        return "bdlora" if self.block_diagonal else None

    def for_layer(self, name: str) -> LoraOptions:
        """The options of the layer called ``name``: with ``use_bdlora``, which factor is block-diagonal, by peft's
        rule (the name contains a fragment listed in target_modules_bd_a, or in target_modules_bd_b)."""
        if self.use_bdlora is None:
            return self
        in_a, in_b = (any(f in name for f in self.use_bdlora.get(key) or [])
                      for key in ("target_modules_bd_a", "target_modules_bd_b"))
        if in_a and in_b:
            raise ValueError(f"{name!r} matches both target_modules_bd_a and target_modules_bd_b of use_bdlora; "
                             f"one factor per layer is block-diagonal")
        if not (in_a or in_b) and self.use_bdlora.get("match_strict", True):
            raise ValueError(f"{name!r} matches neither target_modules_bd_a nor target_modules_bd_b of use_bdlora; "
                             f"list it, or set match_strict=False to give it plain LoRA")
        return dataclasses.replace(self, block_diagonal="A" if in_a else "B" if in_b else None)


class LoraLayer(TunedLayer):
    """A frozen nn.Linear / Conv1D / nn.Conv1d/2d/3d plus LoRA adapters.

    Per adapter: ``lora_A[name]``, ``lora_B[name]`` (nn.Linear, or convolutions) and
    ``lora_dropout[name]``, peft's names. On a grouped convolution B is grouped as well (peft's
    choice); A still mixes all input channels, so the change fits no grouped weight and cannot be merged.
    """

    method = "lora"
    options_class = LoraOptions
    kinds = (nn.Linear, Conv1D, *CONVS)
    variant = None  # LoraOptions.variant of the adapters this class takes (DoRA, VeLoRA and BD-LoRA subclass it)

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()

    @classmethod
    def accepts(cls, module: nn.Module, options: LoraOptions) -> bool:
        return isinstance(module, cls.kinds) and options.variant == cls.variant

    @classmethod
    def check(cls, base_layer: nn.Module, name: str, options: LoraOptions) -> None:
        n_in, n_out = layer_features(base_layer)
        groups = getattr(base_layer, "groups", 1)
        if options.r % groups:
            raise ValueError(f"r={options.r} on a convolution with groups={groups}: B is grouped too, so r must be a "
                             f"multiple of {groups}")
        if options.lora_bias and getattr(base_layer, "bias", None) is None:
            raise ValueError("lora_bias=True merges B's bias into the base layer's bias, but this layer has none; "
                             "use lora_bias=False here")
        if isinstance(base_layer, CONVS):
            n_in *= math.prod(base_layer.kernel_size)  # A sees in * kernel inputs
        warn_rank(name, options.r, n_in, n_out)

    def build(self, adapter: str, options: LoraOptions) -> None:
        base, r = self.base_layer, options.r
        n_in, n_out = layer_features(base)
        if isinstance(base, CONVS):
            conv = type(base)
            lora_A = conv(n_in, r, base.kernel_size, base.stride, base.padding, base.dilation, bias=False)
            lora_B = conv(r, n_out, 1, groups=base.groups, bias=options.lora_bias)
        else:
            lora_A = nn.Linear(n_in, r, bias=False)
            lora_B = nn.Linear(r, n_out, bias=options.lora_bias)
        init_low_rank(lora_A.weight, lora_B, options)
        self.lora_A[adapter] = lora_A.to(base.weight)  # the base weight's device and dtype
        self.lora_B[adapter] = lora_B.to(base.weight)
        self.lora_dropout[adapter] = nn.Dropout(options.lora_dropout) if options.lora_dropout else nn.Identity()

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """h = W x + b + scaling * B A dropout(x)."""
        result = self.base_layer(x, *args, **kwargs)  # W x + b
        adapter = self.adapter_in_use()
        if adapter is None:
            return result
        return result + self.low_rank(adapter, self.lora_dropout[adapter](x))

    def low_rank(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """scaling * B A x (plus B's bias with lora_bias): (..., out) or (B, out, *spatial)."""
        return self.lora_B[adapter](self.lora_A[adapter](x)) * self.adapter_config[adapter].scaling

    def low_rank_delta(self, adapter: str) -> torch.Tensor:
        """scaling * B A with the output dimension first: (out, in) or (out, in, *kernel)."""
        A = self.lora_A[adapter].weight  # (r, in) or (r, in, *kernel)
        B = self.lora_B[adapter].weight  # (out, r) or (out, r, 1, ...)
        delta = B.flatten(1) @ A.flatten(1)  # (out, in * kernel)
        return self.adapter_config[adapter].scaling * delta.view(delta.shape[0], *A.shape[1:])

    def check_mergeable(self) -> None:
        groups = getattr(self.base_layer, "groups", 1)
        if groups > 1:
            raise TypeError(f"LoRA on a grouped convolution (groups={groups}) changes how every input channel feeds "
                            f"every output, which its grouped weight cannot hold, so it cannot be merged (peft "
                            f"refuses too); keep it unmerged, or use LoHa / LoKr, whose change is grouped")

    def delta_weight(self, adapter: str) -> torch.Tensor:
        """scaling * B A in the base weight's own layout: Linear (out, in), Conv1D (in, out), conv (out, in, *k)."""
        self.check_mergeable()
        return weight_out_in(self.base_layer, self.low_rank_delta(adapter))

    def trainable_parameters(self, adapter: str):
        """The adapter, and with ``bias="lora_only"`` or ``"all"`` this layer's base bias (peft's ``bias``)."""
        yield from self.adapter_parameters(adapter)
        if self.adapter_config[adapter].bias != "none" and getattr(self.base_layer, "bias", None) is not None:
            yield self.base_layer.bias

    def effective_bias(self, adapter: str) -> torch.Tensor | None:
        """b + scaling * B's bias with lora_bias, else b."""
        options = self.adapter_config[adapter]
        if not options.lora_bias:
            return self.base_layer.bias
        return self.base_layer.bias + options.scaling * self.lora_B[adapter].bias

    def merge_adapter(self, adapter: str) -> None:
        self.base_layer.weight += self.delta_weight(adapter)
        if self.adapter_config[adapter].lora_bias:
            self.base_layer.bias += self.adapter_config[adapter].scaling * self.lora_B[adapter].bias

    def unmerge_adapter(self, adapter: str) -> None:
        self.base_layer.weight -= self.delta_weight(adapter)
        if self.adapter_config[adapter].lora_bias:
            self.base_layer.bias -= self.adapter_config[adapter].scaling * self.lora_B[adapter].bias


def init_low_rank(A: torch.Tensor, lora_B: nn.Module | None, options: LoraOptions) -> None:
    """Initialise A (r, ...) and B: A kaiming-uniform (N(0, 1/r^2) with "gaussian"), B zero unless init is False."""
    with torch.no_grad():
        if options.init_lora_weights == "gaussian":
            nn.init.normal_(A, std=1 / options.r)
        else:  # kaiming-uniform with a=sqrt(5): nn.Linear's own init, which loralib and peft use for A
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        if lora_B is not None and options.init_lora_weights is not False:
            nn.init.zeros_(lora_B.weight)
            if lora_B.bias is not None:
                nn.init.zeros_(lora_B.bias)


def apply(model: nn.Module, *, r: int = 8, lora_alpha: float = 8, lora_dropout: float = 0.0,
          targets: list[str] | str | None = None, use_rslora: bool = False, use_dora: bool = False,
          init_lora_weights: bool | str = True, lora_bias: bool = False, bias: str = "none",
          velora_config: dict | None = None, use_bdlora: dict | None = None,
          rank_pattern: dict | None = None, alpha_pattern: dict | None = None,
          layers_to_transform: list[int] | int | None = None, layers_pattern: list[str] | str | None = None,
          fan_in_fan_out: bool | None = None, modules_to_save: list[str] | None = None,
          adapter_name: str = "default") -> nn.Module:
    """Add a LoRA adapter (a DoRA, VeLoRA or BD-LoRA one with ``use_dora``, ``velora_config`` or ``use_bdlora``,
    see ``LoraOptions``) to ``model``'s target layers and freeze the rest.

    ``targets`` is peft's ``target_modules`` (None: the family default, e.g. BERT ["query",
    "value"], GPT-2 ["c_attn"], Llama ["q_proj", "v_proj"], ResNet every conv of layer1..layer4).
    ``rank_pattern`` / ``alpha_pattern`` ({regex: value}) set r / lora_alpha for the layers whose
    names end in a match; ``layers_to_transform`` (+ ``layers_pattern``) keeps the targets of those
    blocks (see ``base.find_targets``). ``modules_to_save`` (e.g. ["classifier"]) train in full, as
    copies. ``fan_in_fan_out`` is read from each layer (Conv1D stores (in, out)), as peft corrects
    it; a value that contradicts a target only warns, as in peft. Returns ``model``, changed in place.
    """
    options = LoraOptions(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, use_rslora=use_rslora,
                          init_lora_weights=init_lora_weights, lora_bias=lora_bias, bias=bias, use_dora=use_dora,
                          velora_config=velora_config, use_bdlora=use_bdlora)
    if fan_in_fan_out is not None:
        check_bool("fan_in_fan_out", fan_in_fan_out)
    plan = plan_injection(model, SPEC.layer_classes(), options, targets=targets, adapter_name=adapter_name,
                          modules_to_save=modules_to_save, patterns={"r": rank_pattern, "lora_alpha": alpha_pattern},
                          layers_to_transform=layers_to_transform, layers_pattern=layers_pattern,
                          method="dora" if use_dora else "lora")
    for name, module, _, _ in plan.layers:
        stores_in_out = isinstance(module, Conv1D)
        if fan_in_fan_out is not None and fan_in_fan_out != stores_in_out:
            warnings.warn(f"fan_in_fan_out={fan_in_fan_out} but {name!r} stores its weight "
                          f"{'(in, out)' if stores_in_out else '(out, in)'}; ftlab follows the layer, as peft does",
                          stacklevel=2)
            break
    return carry_out(model, plan)


def add_weighted_adapter(model: nn.Module, adapters: list[str], weights: list[float],
                         adapter_name: str) -> nn.Module:
    """Add adapter ``adapter_name`` whose change is exactly sum_i weights[i] * delta_i.

    Stacks the factors: A = [A_1; A_2; ...] (sum r_i, in), B = [w_1 s_1 B_1, w_2 s_2 B_2, ...]
    (out, sum r_i), with scaling 1 (lora_alpha = r = sum r_i), so B A = sum_i w_i s_i B_i A_i.
    This is peft's ``combination_type="cat"``; peft's default ``"linear"`` instead mixes the A's
    and the B's separately, and (sum a_i A_i)(sum b_j B_j) has cross terms, so it is not this sum.
    Only plain LoRA adapters on nn.Linear, Conv1D and ungrouped convolutions (no DoRA, no
    lora_bias) can be summed; the new adapter is added inactive.
    """
    existing = adapter_names(model)
    if isinstance(adapters, str) or not adapters:
        raise ValueError(f"adapters must be a non-empty list of adapter names, got {adapters!r}")
    if len(weights) != len(adapters):
        raise ValueError(f"give one weight per adapter: {len(adapters)} adapters but {len(weights)} weights")
    unknown = [a for a in adapters if a not in existing]
    if unknown:
        raise ValueError(f"no adapters called {unknown}; the model has {existing}")
    if adapter_name in existing:
        raise ValueError(f"adapter {adapter_name!r} already exists; choose another adapter_name")
    check_unmerged(model, "combine adapters")
    layers = [layer for _, layer in tuned_layers(model) if any(a in layer.adapter_config for a in adapters)]
    for layer in layers:
        if type(layer) is not LoraLayer or getattr(layer.base_layer, "groups", 1) > 1:
            raise ValueError(f"only plain LoRA adapters on linear layers and ungrouped convolutions are a sum of "
                             f"low-rank changes that can be combined, not {type(layer).__name__} ones (DoRA, "
                             f"embeddings, attention, grouped convolutions)")
        if any(layer.adapter_config[a].lora_bias for a in adapters if a in layer.adapter_config):
            raise ValueError("adapters with lora_bias=True cannot be combined; use lora_bias=False ones")

    for layer in layers:
        present = [(a, w) for a, w in zip(adapters, weights) if a in layer.adapter_config]
        A = torch.cat([layer.lora_A[a].weight for a, _ in present], dim=0)  # (sum r, in[, *kernel])
        B = torch.cat([w * layer.adapter_config[a].scaling * layer.lora_B[a].weight
                       for a, w in present], dim=1)  # (out, sum r[, 1, ...])
        rank = A.shape[0]
        layer.add(adapter_name, LoraOptions(r=rank, lora_alpha=rank))
        with torch.no_grad():
            layer.lora_A[adapter_name].weight.copy_(A)
            layer.lora_B[adapter_name].weight.copy_(B)
        layer.lora_A[adapter_name].requires_grad_(False)
        layer.lora_B[adapter_name].requires_grad_(False)
    return model


LORA_FORMAT = PeftFormat(
    peft_type="LORA",
    options=("r", "lora_alpha", "lora_dropout", "use_rslora", "lora_bias", "bias", "use_dora", "velora_config",
             "use_bdlora"),
    patterns={"rank_pattern": "r", "alpha_pattern": "lora_alpha"},
    init="init_lora_weights", init_values=(True, False, "gaussian"),
    refused={
        "target_parameters": "ftlab adapts modules, not single parameters: name the module in targets",
        "trainable_token_indices": "train the embedding as a whole with modules_to_save, or target it with LoRA",
        "exclude_modules": "list the targets to keep explicitly, or use a regex that leaves the others out",
        "layer_replication": "ftlab does not copy layers; adapt the model as it is",
        "use_qalora": "use ftlab's 'qlora' method (4-bit NF4 weights with a float LoRA)",
        "kasa_config": "ftlab has no KaSA; use plain LoRA, or DoRA for a learned magnitude",
        "monteclora_config": "ftlab has no MonteCLoRA; use plain LoRA",
        "arrow_config": "ftlab has no Arrow routing; combine adapters with lora.add_weighted_adapter",
        "alora_invocation_tokens": "ftlab has no activated LoRA; use plain LoRA",
        "runtime_config": "ftlab has no runtime options",
        "megatron_config": "ftlab does not run under Megatron",
        "init_lora_weights": INIT_HINT,
    },
    ignored=("fan_in_fan_out", "qalora_group_size", "megatron_core", "loftq_config", "eva_config", "corda_config",
             "lora_ga_config", "ensure_weight_tying"),
    layer_kinds=(nn.Linear, Conv1D, *CONVS, nn.Embedding, nn.MultiheadAttention),
    broken={nn.MultiheadAttention: "peft 0.21.2 adds the change of nn.MultiheadAttention's out_proj twice, in forward "
                                   "and in merge (huggingface/peft#3774), so a peft file would not hold the model "
                                   "ftlab computes; keep this adapter in ftlab (torch.save its state_dict)"},
    shapes={("lora_magnitude_vector", nn.Conv1d): lambda s, o: (1, s[0], 1),
            ("lora_magnitude_vector", nn.Conv2d): lambda s, o: (1, s[0], 1, 1),
            ("lora_magnitude_vector", nn.Conv3d): lambda s, o: (1, s[0], 1, 1, 1)},
)

SPEC = MethodSpec(
    name="lora", apply=apply, lr=1e-3, options=LoraOptions, peft=LORA_FORMAT,
    layers=("ftlab.methods.lora:LoraLayer", "ftlab.methods.lora_embedding:LoraEmbedding",
            "ftlab.methods.lora_mha:LoraMultiheadAttention", "ftlab.methods.dora:DoraLayer",
            "ftlab.methods.dora:DoraEmbedding", "ftlab.methods.velora:VeloraLayer",
            "ftlab.methods.bdlora:BdLoraLayer"),
)
