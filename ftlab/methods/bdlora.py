"""BD-LoRA: LoRA with one factor block-diagonal, so a tensor-parallel layer needs no extra communication.

Wang, Kübler, Budhathoki, Wang and Kleindessner 2025, "Block-Diagonal LoRA for Eliminating
Communication Overhead in Tensor Parallel LoRA Serving" (arXiv:2510.23346). LoRA's change stays

    h = W x + b + scaling * B A x,   with A = diag(A_1, ..., A_n)   or   B = diag(B_1, ..., B_n)

A layer sharded over n devices by its outputs (column-parallel: q/k/v, up and gate projections) keeps
its adapter on each device without gathering anything when B is block-diagonal; a layer sharded by
its inputs (row-parallel: out and down projections) when A is. A block-diagonal factor has 1/n of
the parameters of a full one. A block-diagonal B starts at zero (so the model starts as the base
model), a block-diagonal A kaiming-uniform, as a plain A.

``use_bdlora`` (peft's option: a dict or peft's BdLoraConfig) names the layers: a target whose name
contains a fragment of ``target_modules_bd_a`` gets a block-diagonal A, of ``target_modules_bd_b`` a
block-diagonal B; ``nblocks`` (default 1) is n; ``match_strict`` (default True) requires every target
to be in one list. The factor is stored as peft does: the n blocks stacked, (out, in / n).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ftlab.methods.base import layer_features
from ftlab.methods.lora import LoraLayer, LoraOptions, init_low_rank
from ftlab.validate import check_int


class BlockDiagonalLinear(nn.Module):
    """x (..., in) -> (..., out) through diag(W_1, ..., W_n); ``weight`` (out, in / n) holds the n blocks stacked."""

    def __init__(self, n_in: int, n_out: int, nblocks: int):
        super().__init__()
        self.nblocks = nblocks
        self.weight = nn.Parameter(torch.empty(n_out, n_in // nblocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.nblocks
        blocks = self.weight.view(n, -1, self.weight.shape[1])  # (n, out / n, in / n)
        x = x.reshape(*x.shape[:-1], n, -1)  # (..., n, in / n)
        return torch.einsum("...ni,noi->...no", x, blocks).flatten(-2)  # (..., out)

    def dense(self) -> torch.Tensor:
        """The block-diagonal matrix itself, (out, in)."""
        return torch.block_diag(*self.weight.chunk(self.nblocks, dim=0))


class BdLoraLayer(LoraLayer):
    """A LoRA layer (nn.Linear or Conv1D) whose ``lora_A[name]`` or ``lora_B[name]`` is a ``BlockDiagonalLinear``."""

    kinds = (nn.Linear, Conv1D)
    variant = "bdlora"

    @classmethod
    def check(cls, base_layer: nn.Module, name: str, options: LoraOptions) -> None:
        nblocks = check_int("use_bdlora's nblocks", options.use_bdlora.get("nblocks", 1), minimum=1)
        n_in, n_out = layer_features(base_layer)
        dims = {"A": (("inputs", n_in), ("r", options.r)), "B": (("r", options.r), ("outputs", n_out))}
        for what, dim in dims[options.block_diagonal]:
            if dim % nblocks:
                raise ValueError(f"a block-diagonal {options.block_diagonal} with nblocks={nblocks} needs {what} "
                                 f"({dim}) divisible by {nblocks}")
        if options.lora_bias:
            raise ValueError("lora_bias=True is not supported with a block-diagonal factor; use lora_bias=False")
        super().check(base_layer, name, options)

    def build(self, adapter: str, options: LoraOptions) -> None:
        super().build(adapter, options)
        nblocks = options.use_bdlora.get("nblocks", 1)
        full = self.lora_A if options.block_diagonal == "A" else self.lora_B
        factor = BlockDiagonalLinear(full[adapter].in_features, full[adapter].out_features, nblocks)
        if options.block_diagonal == "A":
            init_low_rank(factor.weight, None, options)
        else:
            nn.init.zeros_(factor.weight)
        full[adapter] = factor.to(self.base_layer.weight)

    def low_rank_delta(self, adapter: str) -> torch.Tensor:
        """scaling * B A with the block-diagonal factor written out: (out, in)."""
        A, B = (m.dense() if isinstance(m, BlockDiagonalLinear) else m.weight
                for m in (self.lora_A[adapter], self.lora_B[adapter]))
        return self.adapter_config[adapter].scaling * B @ A
