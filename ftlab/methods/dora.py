"""DoRA: LoRA that learns the magnitude and the direction of each output's weights apart (Liu et al. 2024).

DoRA splits the adapted weight (output first, V = W + scaling * B A as in lora.py) into a magnitude
per output and a unit direction:

    W' = m * V / ||V||,   V = W + scaling * B A,   m: (out,),   ||V||: the norm of each output's weights

m starts at ||W||, so W' = W and the model starts equal to the base model. As the paper (section
4.3) and peft do, ||V|| is detached: treated as a constant in the backward pass. In forward,
with s = m / ||V|| per output:

    h = W' x + b = s * (W x + scaling * B A x) + b = (W x + b) + (s - 1) * W x + s * scaling * B A x

which reuses the base layer's output W x + b (one matmul less) unless dropout changes x.

``ftlab.apply(model, "dora", ...)`` is ``lora.apply(model, use_dora=True, ...)``, as
``LoraConfig(use_dora=True)`` in peft: the same options. DoRA layers are LoRA layers with the
magnitude ``lora_magnitude_vector[name]`` (out,) added (peft's name); they adapt nn.Linear,
Conv1D, ungrouped convolutions and nn.Embedding. On a grouped convolution the LoRA change is not a
weight of the layer's shape (see lora.py), so ||V|| is undefined and DoRA refuses; so does
nn.MultiheadAttention, as in peft.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ftlab.methods import lora
from ftlab.methods.base import MethodSpec, apply_weight, per_output, per_row, weight_out_in
from ftlab.methods.lora import LoraLayer, LoraOptions
from ftlab.methods.lora_embedding import LoraEmbedding


@dataclass
class DoraOptions(LoraOptions):
    """LoRA's options (lora.py) with ``use_dora=True``: what a DoRA layer built directly takes by default."""

    use_dora: bool = True


class DoraLayer(LoraLayer):
    """A LoRA layer (nn.Linear, Conv1D, ungrouped convolution) with a magnitude ``lora_magnitude_vector[name]``
    (out,)."""

    options_class = DoraOptions
    variant = "dora"

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.lora_magnitude_vector = nn.ParameterDict()
        self.merged_norm: torch.Tensor | None = None  # ||V|| at merge time, to unmerge exactly

    @classmethod
    def check(cls, base_layer: nn.Module, name: str, options: LoraOptions) -> None:
        if not options.use_dora:
            raise ValueError("a DoRA layer's adapters have use_dora=True; plain LoRA adapters go on a LoraLayer")
        if getattr(base_layer, "groups", 1) > 1:
            raise ValueError(f"DoRA needs the LoRA change as a weight of the layer's shape, but on a grouped "
                             f"convolution (groups={base_layer.groups}) it is not one, so ||W + scaling B A|| is "
                             f"undefined; use plain LoRA ('lora'), LoHa or LoKr on grouped convolutions")
        if options.lora_bias:
            raise ValueError("lora_bias=True is not supported with DoRA (the magnitude would rescale B's bias in "
                             "forward but not when merged); use lora_bias=False")
        super().check(base_layer, name, options)

    def build(self, adapter: str, options: LoraOptions) -> None:
        super().build(adapter, options)
        with torch.no_grad():
            self.lora_magnitude_vector[adapter] = nn.Parameter(self.weight_norm(adapter))  # (out,): m = ||W||

    def weight_norm(self, adapter: str) -> torch.Tensor:
        """||V|| = ||W + scaling B A|| over everything but the output dimension, detached: (out,)."""
        V = weight_out_in(self.base_layer) + self.low_rank_delta(adapter)  # (out, in[, *kernel])
        return V.detach().flatten(1).norm(dim=1)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """h = (W x + b) + (s - 1) * W x + s * scaling * B A x,   s = m / ||W + scaling B A||."""
        result = self.base_layer(x, *args, **kwargs)  # W x + b
        adapter = self.adapter_in_use()
        if adapter is None:
            return result
        base = self.base_layer
        s = per_output(base, self.lora_magnitude_vector[adapter] / self.weight_norm(adapter))
        dropout = self.lora_dropout[adapter]
        if isinstance(dropout, nn.Identity) or not self.training:
            bias = getattr(base, "bias", None)
            wx = result if bias is None else result - per_output(base, bias)  # W x, reused from the base output
        else:
            x = dropout(x)
            wx = apply_weight(base, x, weight_out_in(base))  # W x on the dropped-out input
        return result + (s - 1) * wx + s * self.low_rank(adapter, x)

    def delta_weight(self, adapter: str) -> torch.Tensor:
        """W' - W = m / ||V|| * V - W in the base weight's own layout; defined while the layer is unmerged."""
        if self.merged is not None:
            raise ValueError("a DoRA delta depends on the unmerged base weight; unmerge() first")
        W = weight_out_in(self.base_layer)
        V = W + self.low_rank_delta(adapter)
        s = per_row(V, self.lora_magnitude_vector[adapter] / self.weight_norm(adapter))  # (out, 1, ...)
        return weight_out_in(self.base_layer, s * V - W)

    def merge_adapter(self, adapter: str) -> None:
        # W' = m / ||V|| * V; keep ||V||, since W' alone cannot give it back
        self.merged_norm = self.weight_norm(adapter)
        V = weight_out_in(self.base_layer) + self.low_rank_delta(adapter)
        merged = per_row(V, self.lora_magnitude_vector[adapter] / self.merged_norm) * V
        self.base_layer.weight.copy_(weight_out_in(self.base_layer, merged))

    def unmerge_adapter(self, adapter: str) -> None:
        merged = weight_out_in(self.base_layer)
        s = per_row(merged, self.lora_magnitude_vector[adapter] / self.merged_norm)
        self.base_layer.weight.copy_(weight_out_in(self.base_layer, merged / s - self.low_rank_delta(adapter)))
        self.merged_norm = None


class DoraEmbedding(DoraLayer, LoraEmbedding):
    """DoRA on nn.Embedding: the magnitude (dim,) scales each embedding dimension (a norm over the vocabulary)."""

    kinds = (nn.Embedding,)


SPEC = MethodSpec(name="dora", apply=lora.apply, implied={"use_dora": True}, lr=1e-3, options=DoraOptions,
                  peft=lora.LORA_FORMAT, layers=lora.SPEC.layers)
