"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021): small residual MLPs inside a frozen model.

An adapter maps a sublayer's output h (width d) through a bottleneck of width
b = d // reduction_factor and adds the result back:

    adapter(h) = h + W_up f(W_down h + b_down) + b_up      W_down: (b, d), W_up: (d, b)

W_up and b_up start at zero, so adapter(h) = h and the model starts exactly equal to the
base model. Trainable parameters per adapter: 2 d b + b + d.

Where the adapters go (``variant``):

* ``"houlsby"``: after the attention block and after the feed-forward block of every layer;
* ``"pfeiffer"``: after the feed-forward block only (half the adapters, about as accurate).

In BERT an adapter follows the output projection ``dense`` of BertSelfOutput and BertOutput,
so it sits inside the residual branch, before the sublayer's "add & LayerNorm", as in the
paper. In GPT-2 it follows a block's ``attn`` and ``mlp`` outputs, before their residual
additions. For a ResNet, one adapter made of 1x1 convolutions follows every residual block
(``layer1.0`` ... ``layer4.1``), whatever the variant.

The adapted sublayers are wrapped with ``base.inject`` (the machinery LoRA uses), so several
adapters, ``set_adapter``, ``disable_adapters`` and ``delete_adapter`` work here too;
adapters cannot be merged into a weight (there is a non-linearity in them).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ftlab.methods.base import MethodSpec, TunedLayer, check_one_method, inject, layer_features, model_family
from ftlab.validate import check_choice, check_int

VARIANTS = ("houlsby", "pfeiffer")

# Where adapters go per (family, variant): regexes over full module names (peft's rule for a string).
ADAPTER_PLACES = {
    ("bert", "houlsby"): r"(.*\.)?encoder\.layer\.\d+\.(attention\.output|output)\.dense",
    ("bert", "pfeiffer"): r"(.*\.)?encoder\.layer\.\d+\.output\.dense",
    ("gpt2", "houlsby"): r"(.*\.)?h\.\d+\.(attn|mlp)",
    ("gpt2", "pfeiffer"): r"(.*\.)?h\.\d+\.mlp",
    ("resnet", "houlsby"): r"layer[1-4]\.\d+",
    ("resnet", "pfeiffer"): r"layer[1-4]\.\d+",
    **{(family, "houlsby"): r"(.*\.)?layers\.\d+\.(self_attn|mlp)" for family in ("llama", "mistral", "qwen2", "phi")},
    **{(family, "pfeiffer"): r"(.*\.)?layers\.\d+\.mlp" for family in ("llama", "mistral", "qwen2", "phi")},
}

# AdapterHub's defaults: Houlsby used swish, Pfeiffer relu; a ResNet uses relu.
DEFAULT_NON_LINEARITY = {"houlsby": "swish", "pfeiffer": "relu"}
# Names of the linear layer that makes a block's output: GPT-2, Llama/Mistral/Qwen2, Phi (attention, MLP)
OUTPUT_PROJECTIONS = ("c_proj", "o_proj", "down_proj", "dense", "fc2")
NON_LINEARITIES = {"relu": nn.ReLU, "swish": nn.SiLU, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def output_width(module: nn.Module) -> tuple[int, bool]:
    """``(d, is_conv)``: the width of ``module``'s output and whether it is a (B, C, H, W) feature map.

    Adapters go after nn.Linear / Conv1D / nn.Conv2d layers, after blocks that end in an output
    projection (``OUTPUT_PROJECTIONS``: GPT-2's attn and mlp end in ``c_proj``, Llama's self_attn in
    ``o_proj`` and mlp in ``down_proj``) and after torchvision's ResNet blocks (``bn2`` / ``bn3``).
    """
    if isinstance(module, (nn.Linear, Conv1D, nn.Conv2d)):
        return layer_features(module)[1], isinstance(module, nn.Conv2d)
    last_norm = "bn3" if hasattr(module, "conv3") else "bn2"  # torchvision Bottleneck / BasicBlock
    if isinstance(getattr(module, last_norm, None), nn.BatchNorm2d) and hasattr(module, "conv2"):
        return getattr(module, last_norm).num_features, True
    for name in OUTPUT_PROJECTIONS:
        if isinstance(getattr(module, name, None), (nn.Linear, Conv1D)):
            return layer_features(getattr(module, name))[1], False
    raise TypeError(
        f"cannot place an adapter after a {type(module).__name__}: its output width is unknown. Adapters go "
        f"after nn.Linear, Conv1D or nn.Conv2d layers, blocks that end in an output projection named one of "
        f"{OUTPUT_PROJECTIONS} (GPT-2's attn/mlp, Llama's self_attn/mlp) and ResNet blocks (conv2 and bn2/bn3); "
        f"choose such targets"
    )


@dataclass
class AdapterOptions:
    """One bottleneck adapter's options: ``reduction_factor`` (d / b) and ``non_linearity`` (f)."""

    reduction_factor: int = 16
    non_linearity: str = "relu"

    def __post_init__(self):
        check_int("reduction_factor", self.reduction_factor, minimum=1)
        check_choice("non_linearity", self.non_linearity, tuple(NON_LINEARITIES))


class BottleneckMLP(nn.Module):
    """h + W_up f(W_down h): linear layers over the last dimension, or 1x1 convolutions over channels."""

    def __init__(self, width: int, reduction_factor: int, non_linearity: str, conv: bool):
        super().__init__()
        bottleneck = width // reduction_factor
        layer = (lambda n_in, n_out: nn.Conv2d(n_in, n_out, 1)) if conv else nn.Linear
        self.down = layer(width, bottleneck)
        self.act = NON_LINEARITIES[non_linearity]()
        self.up = layer(bottleneck, width)
        nn.init.zeros_(self.up.weight)  # the adapter starts as the identity
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))  # (..., d) or (B, d, H, W)


class AdapterLayer(TunedLayer):
    """A frozen sublayer followed by bottleneck adapters, one per adapter name in ``bottleneck``."""

    method = "adapter"
    options_class = AdapterOptions
    mergeable = False

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.bottleneck = nn.ModuleDict()

    @classmethod
    def accepts(cls, module: nn.Module, options: AdapterOptions) -> bool:
        return True  # check() says why a module's output width is unknown

    @classmethod
    def check(cls, base_layer: nn.Module, name: str, options: AdapterOptions) -> None:
        width, _ = output_width(base_layer)
        if options.reduction_factor > width:
            raise ValueError(f"reduction_factor must be an int from 1 to {width} for {name!r} (width {width}, "
                             f"bottleneck width // reduction_factor must be at least 1), "
                             f"got {options.reduction_factor}")

    def build(self, adapter: str, options: AdapterOptions) -> None:
        width, conv = output_width(self.base_layer)
        like = next(self.base_layer.parameters())
        self.bottleneck[adapter] = BottleneckMLP(width, options.reduction_factor, options.non_linearity, conv).to(like)

    def forward(self, *args, **kwargs):
        """h = sublayer(x); adapter(h) = h + W_up f(W_down h + b_down) + b_up."""
        out = self.base_layer(*args, **kwargs)  # Llama's attention is called with keywords only
        adapter = self.adapter_in_use()
        if adapter is None:
            return out
        if isinstance(out, tuple):  # attention blocks return (output, attention weights)
            return (self.bottleneck[adapter](out[0]), *out[1:])
        return self.bottleneck[adapter](out)


def apply(model: nn.Module, *, variant: str = "houlsby", reduction_factor: int = 16, non_linearity: str | None = None,
          targets: list[str] | str | None = None, modules_to_save: list[str] | None = None,
          adapter_name: str = "default") -> nn.Module:
    """Add bottleneck adapters to ``model`` and freeze everything else; returns ``model``, changed in place.

    ``variant``: ``"houlsby"`` or ``"pfeiffer"`` (where the adapters go, see module docstring);
    ``reduction_factor``: d / b; ``non_linearity``: ``"relu"``, ``"swish"``, ``"gelu"`` or
    ``"tanh"`` (None: swish for Houlsby, relu for Pfeiffer and ResNets); ``targets``: the
    sublayers to follow, instead of ``ADAPTER_PLACES``; ``modules_to_save`` (e.g.
    ``["classifier"]``): modules trained in full, as copies.
    """
    check_choice("variant", variant, VARIANTS)
    check_one_method(model, "adapter")
    family = model_family(model)
    if targets is None:
        if (family, variant) not in ADAPTER_PLACES:
            known = sorted({family for family, _ in ADAPTER_PLACES})
            raise ValueError(f"no default adapter places for {type(model).__name__} (family {family!r}); known: "
                             f"{', '.join(known)}. Pass targets= naming the sublayers to follow, e.g. a regex "
                             f"such as r'layers\\.\\d+\\.mlp'")
        targets = ADAPTER_PLACES[family, variant]
    if non_linearity is None:
        non_linearity = "relu" if family == "resnet" else DEFAULT_NON_LINEARITY[variant]
    options = AdapterOptions(reduction_factor=reduction_factor, non_linearity=non_linearity)
    return inject(model, [AdapterLayer], options, targets=targets, adapter_name=adapter_name,
                  modules_to_save=modules_to_save)


SPEC = MethodSpec(name="adapter", apply=apply, lr=1e-3, options=AdapterOptions,
                  layers=("ftlab.methods.adapter:AdapterLayer",))
