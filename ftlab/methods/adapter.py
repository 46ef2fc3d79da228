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

The adapted sublayers are wrapped with ``_inject`` (the machinery LoRA uses), so several
adapters, ``set_adapter``, ``disable_adapters`` and ``delete_adapter`` work here too;
adapters cannot be merged into a weight (there is a non-linearity in them).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ftlab.methods._inject import Tuned, inject, layer_features, model_family

VARIANTS = ("houlsby", "pfeiffer")

# Default targets per (family, variant): regexes over full module names (peft's rule for a string).
DEFAULT_TARGETS = {
    ("bert", "houlsby"): r"(.*\.)?encoder\.layer\.\d+\.(attention\.output|output)\.dense",
    ("bert", "pfeiffer"): r"(.*\.)?encoder\.layer\.\d+\.output\.dense",
    ("gpt2", "houlsby"): r"(.*\.)?h\.\d+\.(attn|mlp)",
    ("gpt2", "pfeiffer"): r"(.*\.)?h\.\d+\.mlp",
    ("resnet", "houlsby"): r"layer[1-4]\.\d+",
    ("resnet", "pfeiffer"): r"layer[1-4]\.\d+",
}

# AdapterHub's defaults: Houlsby used swish, Pfeiffer relu; a ResNet uses relu.
DEFAULT_NON_LINEARITY = {"houlsby": "swish", "pfeiffer": "relu"}
NON_LINEARITIES = {"relu": nn.ReLU, "swish": nn.SiLU, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def output_width(module: nn.Module) -> tuple[int, bool]:
    """``(d, is_conv)``: the width of ``module``'s output and whether it is a (B, C, H, W) feature map.

    Adapters go after: nn.Linear / Conv1D / nn.Conv2d layers, GPT-2 attention and MLP blocks
    (which end in ``c_proj``), and torchvision's ResNet blocks (which end in ``bn2`` / ``bn3``).
    """
    if isinstance(module, (nn.Linear, Conv1D, nn.Conv2d)):
        return layer_features(module)[1], isinstance(module, nn.Conv2d)
    if isinstance(getattr(module, "c_proj", None), (nn.Linear, Conv1D)):
        return layer_features(module.c_proj)[1], False
    last_norm = "bn3" if hasattr(module, "conv3") else "bn2"  # torchvision Bottleneck / BasicBlock
    if isinstance(getattr(module, last_norm, None), nn.BatchNorm2d) and hasattr(module, "conv2"):
        return getattr(module, last_norm).num_features, True
    raise TypeError(
        f"cannot place an adapter after a {type(module).__name__}: its output width is unknown. Adapters go "
        f"after nn.Linear, Conv1D or nn.Conv2d layers, GPT-2 blocks' attn/mlp (ending in c_proj) and ResNet "
        f"blocks (conv2 and bn2/bn3); choose such targets"
    )


class Bottleneck(nn.Module):
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


class AdapterLayer(Tuned):
    """A frozen sublayer followed by bottleneck adapters, one per adapter name in ``bottleneck``."""

    method = "adapter"
    mergeable = False

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.bottleneck = nn.ModuleDict()

    @classmethod
    def check(cls, base_layer: nn.Module, name: str, reduction_factor: int = 16, non_linearity: str = "relu") -> None:
        width, _ = output_width(base_layer)
        if isinstance(reduction_factor, bool) or not isinstance(reduction_factor, int) \
                or not 1 <= reduction_factor <= width:
            raise ValueError(f"reduction_factor must be an int from 1 to {width} for {name!r} (width {width}, "
                             f"bottleneck width // reduction_factor must be at least 1), got {reduction_factor!r}")
        if non_linearity not in NON_LINEARITIES:
            raise ValueError(f"non_linearity must be one of {sorted(NON_LINEARITIES)}, got {non_linearity!r}")

    def add(self, adapter: str, reduction_factor: int = 16, non_linearity: str = "relu") -> None:
        width, conv = output_width(self.base_layer)
        like = next(self.base_layer.parameters())
        self.bottleneck[adapter] = Bottleneck(width, reduction_factor, non_linearity, conv).to(like.device, like.dtype)

    def adapter_forward(self, x: torch.Tensor, adapter: str, *args, **kwargs):
        out = self.base_layer(x, *args, **kwargs)
        if isinstance(out, tuple):  # GPT-2 attention returns (output, attention weights)
            return (self.bottleneck[adapter](out[0]), *out[1:])
        return self.bottleneck[adapter](out)


def apply(model: nn.Module, *, variant: str = "houlsby", reduction_factor: int = 16, non_linearity: str | None = None,
          targets: list[str] | str | None = None, modules_to_save: list[str] | None = None,
          adapter_name: str = "default") -> nn.Module:
    """Add bottleneck adapters to ``model`` and freeze everything else; returns ``model``, changed in place.

    ``variant``: ``"houlsby"`` or ``"pfeiffer"`` (where the adapters go, see module docstring);
    ``reduction_factor``: d / b; ``non_linearity``: ``"relu"``, ``"swish"``, ``"gelu"`` or
    ``"tanh"`` (None: swish for Houlsby, relu for Pfeiffer and ResNets); ``targets``: the
    sublayers to follow, instead of the family default; ``modules_to_save`` (e.g.
    ``["classifier"]``): modules trained in full, as copies.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    family = model_family(model)
    if targets is None:
        if (family, variant) not in DEFAULT_TARGETS:
            raise ValueError(f"no default adapter places for {type(model).__name__} (family {family!r}); known: "
                             f"bert, gpt2, resnet. Pass targets= naming the sublayers to follow, e.g. a regex "
                             f"such as r'layers\\.\\d+\\.mlp'")
        targets = DEFAULT_TARGETS[family, variant]
    if non_linearity is None:
        non_linearity = "relu" if family == "resnet" else DEFAULT_NON_LINEARITY[variant]
    options = {"reduction_factor": reduction_factor, "non_linearity": non_linearity}
    return inject(model, AdapterLayer, targets, adapter_name, options, modules_to_save)
