"""VeLoRA: LoRA whose backward pass keeps a rank-1 summary of A's input instead of the input itself.

Miles, Reddy, Elezi and Deng 2024, "VeLoRA: Memory Efficient Training using Rank-1 Sub-Token
Projections" (arXiv:2405.17991). The forward pass is LoRA's, h = W x + b + scaling * B A x. What
changes is what autograd keeps for the gradient of A, dL/dA = g^T x (g: the gradient at A's output):
instead of every input x (tokens, d), each token's features are cut into ``num_groups`` sub-tokens
of d / num_groups features, and only their projections on one unit vector v are kept:

    c = s v,  s: a sub-token (d / G,),   kept: c, one number per sub-token   (G times fewer numbers)
    backward: x is rebuilt as c v (times ``scale``), and dL/dA = g^T x_rebuilt

The input's gradient, g A, needs no x and stays exact; so do the gradients of B and the layers
below. v is fixed (``init_type="random"``: a random unit vector), or the normalised mean sub-token of
the first training batch ("batch_average_once") or of every training batch ("batch_average", peft's
default). It is a buffer, ``lora_velora_embed[name]``, saved with the adapter (peft's name). In
evaluation, and without gradients, A runs as usual.

Options: ``velora_config`` (peft's), a dict or peft's VeloraConfig with ``num_groups`` (64),
``scale`` (1.0) and ``init_type``. nn.Linear and GPT-2's Conv1D only, as in peft.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from ftlab.methods.lora import LoraLayer, LoraOptions
from ftlab.validate import check_choice, check_int, check_number

DEFAULTS = {"num_groups": 64, "scale": 1.0, "init_type": "batch_average"}
INIT_TYPES = ("batch_average", "batch_average_once", "random")


def sub_tokens(x: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(..., d) -> (tokens, num_groups, ceil(d / num_groups)): each token's features cut into sub-tokens, padded."""
    size = math.ceil(x.shape[-1] / num_groups)
    x = F.pad(x, (0, num_groups * size - x.shape[-1]))
    return x.reshape(-1, num_groups, size)


def unit(v: torch.Tensor) -> torch.Tensor:
    """v / ||v|| (a zero vector becomes the normalised vector of ones)."""
    v = v.float()
    if v.norm() == 0:
        v = torch.ones_like(v)
    return v / v.norm()


class CompressedInput(torch.autograd.Function):
    """y = x A^T, keeping for backward only the projections of x's sub-tokens on v (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, A: torch.Tensor, v: torch.Tensor, num_groups: int, scale: float):
        ctx.save_for_backward(torch.einsum("tgs,s->tg", sub_tokens(x, num_groups), v.to(x.dtype)), A, v)  # (tokens, G)
        ctx.shape, ctx.scale = x.shape, scale
        return F.linear(x, A)  # (..., r)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        kept, A, v = ctx.saved_tensors
        grad = grad.reshape(-1, grad.shape[-1])  # (tokens, r)
        grad_x = (grad @ A).reshape(ctx.shape)  # exact: needs A, not x
        rebuilt = (kept[:, :, None] * v.to(grad.dtype)).flatten(1)[:, :ctx.shape[-1]] * ctx.scale  # (tokens, d)
        return grad_x, grad.T @ rebuilt, None, None, None


class VeloraLayer(LoraLayer):
    """A LoRA layer (nn.Linear or Conv1D) whose A keeps rank-1 sub-token summaries of its input for backward; v is
    ``lora_velora_embed[name]``."""

    kinds = (nn.Linear, Conv1D)
    variant = "velora"

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.lora_velora_embed = nn.Module()  # a buffer per adapter, saved with it (peft's name)
        self.embed_set: dict[str, bool] = {}  # whether v was taken from a batch yet ("batch_average_once")

    @classmethod
    def check(cls, base_layer: nn.Module, name: str, options: LoraOptions) -> None:
        settings = {**DEFAULTS, **options.velora_config}
        unknown = sorted(set(settings) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"velora_config has no option {unknown[0]!r}; its options are {sorted(DEFAULTS)}")
        check_int("velora_config's num_groups", settings["num_groups"], minimum=1)
        check_number("velora_config's scale", settings["scale"], minimum=0, strict_minimum=True)
        check_choice("velora_config's init_type", settings["init_type"], INIT_TYPES)
        super().check(base_layer, name, options)

    def settings(self, adapter: str) -> dict:
        return {**DEFAULTS, **self.adapter_config[adapter].velora_config}

    def build(self, adapter: str, options: LoraOptions) -> None:
        super().build(adapter, options)
        settings = self.settings(adapter)
        n_in = self.lora_A[adapter].in_features
        size = math.ceil(n_in / settings["num_groups"])
        like = self.base_layer.weight
        random = settings["init_type"] == "random"
        v = unit(torch.randn(size)) if random else torch.zeros(size)
        self.lora_velora_embed.register_buffer(adapter, v.to(device=like.device, dtype=like.dtype))
        self.embed_set[adapter] = random

    def low_rank(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        """scaling * B A x, as LoRA's; in training A's input is kept compressed for backward."""
        if not (self.training and torch.is_grad_enabled()):
            return super().low_rank(adapter, x)
        settings = self.settings(adapter)
        if settings["init_type"] == "batch_average" or not self.embed_set[adapter]:
            with torch.no_grad():  # v: the normalised mean sub-token of this batch
                mean = sub_tokens(x.detach(), settings["num_groups"]).flatten(0, 1).mean(dim=0)
                getattr(self.lora_velora_embed, adapter).copy_(unit(mean))
            self.embed_set[adapter] = True
        v = getattr(self.lora_velora_embed, adapter)
        after_A = CompressedInput.apply(x, self.lora_A[adapter].weight, v, settings["num_groups"], settings["scale"])
        return self.lora_B[adapter](after_A) * self.adapter_config[adapter].scaling

    def remove(self, adapter: str) -> None:
        delattr(self.lora_velora_embed, adapter)
        del self.embed_set[adapter]
        super().remove(adapter)
