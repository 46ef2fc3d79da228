"""LoRA on nn.Embedding: a low-rank change of the embedding table (Hu et al. 2021; loralib and peft do the same).

An embedding looks token x up in its table, seen output first as E (dim, num_embeddings): h = E[:, x].
LoRA adds the same lookup in a rank-r table:

    h = E[:, x] + scaling * B A[:, x],   A: (r, num_embeddings),   B: (dim, r)

so the table becomes E + scaling * B A, or (B A)^T in nn.Embedding's own (num_embeddings, dim) layout.
Unlike on linear layers, A starts at zero and B at N(0, 1): a zero lookup table keeps the model equal
to the base model, and a random B gives A's looked-up columns gradients at once (loralib's choice).
As in peft, A and B are plain tensors (``lora_embedding_A``, ``lora_embedding_B``; a lookup needs no
nn.Linear), and no dropout is applied to token ids.
"""
from __future__ import annotations

import torch
from torch import nn

from ftlab.methods.base import apply_weight, warn_rank
from ftlab.methods.lora import LoraLayer, LoraOptions


class LoraEmbedding(LoraLayer):
    """A frozen nn.Embedding plus LoRA adapters ``lora_embedding_A[name]`` (r, num_embeddings) and
    ``lora_embedding_B[name]`` (dim, r). Forward, merging and DoRA are LoRA's (lora.py, dora.py); only the
    low-rank term differs."""

    kinds = (nn.Embedding,)

    def __init__(self, base_layer: nn.Embedding):
        super().__init__(base_layer)
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()

    @classmethod
    def check(cls, base_layer: nn.Embedding, name: str, options: LoraOptions) -> None:
        if options.lora_bias:
            raise ValueError("lora_bias=True: an embedding has no bias to merge B's bias into (peft refuses it too); "
                             "use lora_bias=False")
        warn_rank(name, options.r, base_layer.num_embeddings, base_layer.embedding_dim)

    def build(self, adapter: str, options: LoraOptions) -> None:
        base = self.base_layer
        like = base.weight
        A = torch.zeros(options.r, base.num_embeddings, device=like.device, dtype=like.dtype)
        B = torch.randn(base.embedding_dim, options.r, device=like.device, dtype=like.dtype)
        if options.init_lora_weights is False:  # both random (for tests), as peft
            A.normal_()
        self.lora_embedding_A[adapter] = nn.Parameter(A)
        self.lora_embedding_B[adapter] = nn.Parameter(B)
        self.lora_dropout[adapter] = nn.Identity()

    def low_rank(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """scaling * B A[:, x]: look x up in A (r, num_embeddings), then map r -> dim. (..., dim)."""
        A, B = self.lora_embedding_A[adapter], self.lora_embedding_B[adapter]
        looked_up = apply_weight(self.base_layer, x, A)  # (..., r)
        return looked_up @ B.T * self.adapter_config[adapter].scaling  # (..., dim)

    def low_rank_delta(self, adapter: str) -> torch.Tensor:
        """scaling * B A, output first: (dim, num_embeddings)."""
        return self.adapter_config[adapter].scaling * self.lora_embedding_B[adapter] @ self.lora_embedding_A[adapter]
