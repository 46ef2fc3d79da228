"""LoRA on nn.MultiheadAttention: both projections get a low-rank change, as in peft.

nn.MultiheadAttention keeps its query, key and value projections stacked in one parameter,
``in_proj_weight`` (3 E, E), and reads its output projection's weight ``out_proj.weight`` (E, E)
without calling ``out_proj``. So LoRA cannot hook a forward there; instead the wrappers give the
changed weights where the attention reads them (``out_proj``'s wrapper as its ``weight``, this one as
``in_proj_weight``, run with ``torch.func.functional_call``):

    in_proj_weight' = in_proj_weight + scaling * B A,        A: (r, E),  B: (3 E, r)
    out_proj.weight' = out_proj.weight + scaling * B_o A_o,  A_o: (r, E), B_o: (E, r)

The output projection's adapter lives in a ``LoraLayer`` that wraps ``out_proj`` (peft's layout, so
adapter files are peft's); ``merge``, ``set_adapter`` and ``disable_adapters`` treat both wrappers
together. Only the case of equal query/key/value sizes is supported (peft's limit), there is no
dropout (the change is applied to weights, not inputs), and no DoRA.
"""
from __future__ import annotations

import torch
from torch import nn

from ftlab.methods.base import warn_rank
from ftlab.methods.lora import LoraLayer, LoraOptions, init_low_rank


class LoraMultiheadAttention(LoraLayer):
    """A frozen nn.MultiheadAttention with LoRA on ``in_proj_weight`` (``lora_A``, ``lora_B`` here) and on ``out_proj``
    (a ``LoraLayer`` in the attention's place of ``out_proj``)."""

    kinds = (nn.MultiheadAttention,)

    def __init__(self, base_layer: nn.MultiheadAttention):
        super().__init__(base_layer)
        base_layer.out_proj = LoraLayer(base_layer.out_proj)

    @classmethod
    def check(cls, base_layer: nn.MultiheadAttention, name: str, options: LoraOptions) -> None:
        if not base_layer._qkv_same_embed_dim:
            raise TypeError("LoRA on nn.MultiheadAttention needs query, key and value of the same size (one "
                            "in_proj_weight), as in peft; target the surrounding linear layers instead")
        if options.lora_bias:
            raise ValueError("lora_bias=True is not supported on nn.MultiheadAttention; use lora_bias=False")
        warn_rank(name, options.r, base_layer.embed_dim, base_layer.embed_dim)

    def build(self, adapter: str, options: LoraOptions) -> None:
        attention = self.base_layer
        lora_A = nn.Linear(attention.embed_dim, options.r, bias=False)
        lora_B = nn.Linear(options.r, 3 * attention.embed_dim, bias=False)
        init_low_rank(lora_A.weight, lora_B, options)
        self.lora_A[adapter] = lora_A.to(attention.in_proj_weight)
        self.lora_B[adapter] = lora_B.to(attention.in_proj_weight)
        self.lora_dropout[adapter] = nn.Identity()
        attention.out_proj.add(adapter, options)

    def __getattr__(self, name: str):
        # nn.TransformerEncoderLayer reads its attention's settings (batch_first, num_heads, in_proj_bias, out_proj):
        # this wrapper answers for the attention it wraps
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    @property
    def in_proj_weight(self) -> torch.Tensor:
        """in_proj_weight + scaling * B A while the adapter is in use: (3 E, E)."""
        adapter = self.adapter_in_use()
        weight = self.base_layer.in_proj_weight
        return weight if adapter is None else weight + self.low_rank_delta(adapter)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs):
        """The attention with in_proj_weight + scaling * B A (and out_proj's wrapper giving its changed weight)."""
        attention = self.base_layer
        if self.adapter_in_use() is None:
            return attention(query, key, value, **kwargs)
        # the attention reads out_proj.weight, which the out_proj wrapper gives with its change
        return torch.func.functional_call(attention, {"in_proj_weight": self.in_proj_weight}, (query, key, value),
                                          kwargs)

    def delta_weight(self, adapter: str) -> torch.Tensor:
        """The change of in_proj_weight, (3 E, E) (out_proj's wrapper has its own)."""
        return self.low_rank_delta(adapter)

    def merge_adapter(self, adapter: str) -> None:
        self.base_layer.in_proj_weight += self.delta_weight(adapter)

    def unmerge_adapter(self, adapter: str) -> None:
        self.base_layer.in_proj_weight -= self.delta_weight(adapter)
