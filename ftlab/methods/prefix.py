"""Prefix tuning (Li & Liang, 2021): learned keys and values prepended at every attention layer.

Every attention layer l attends over P learned positions before the real tokens:

    K_l' = [P_K,l ; K_l]   V_l' = [P_V,l ; V_l]      P_K,l, P_V,l: (H, P, d_head)
    attention(Q_l, K_l', V_l') = softmax(Q_l K_l'^T / sqrt(d_head)) V_l'

The base model stays frozen; only the prefixes train. All of them come from one table
``embedding`` of shape ``(P, L * 2 * d)`` (L layers, key and value, d = H * d_head), or, with
``prefix_projection=True``, from a small reparameterisation MLP that the paper found
trains more stably:

    prefix = W_2 tanh(W_1 E + b_1) + b_2     E: (P, d), W_1: (h, d), W_2: (L * 2 * d, h)

As in peft, the prefixes reach the model as its key/value cache (``past_key_values``, a
transformers ``DynamicCache``): every attention layer already concatenates cached keys and
values in front of the new ones. So the real tokens' positions start at P, and the
attention mask gets P ones in front.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from ftlab.methods.base import (
    MethodSpec,
    Plan,
    WholeModelAdapter,
    carry_out,
    check_one_method,
    find_targets,
    freeze,
    model_family,
)
from ftlab.validate import check_int

FAMILIES = ("bert", "gpt2")


def check_virtual_tokens(model: nn.Module, num_virtual_tokens: int, method: str,
                         modules_to_save: list[str] | None) -> list[str]:
    """Check what prefix and prompt tuning both need; return the names of ``modules_to_save``.

    ``model`` must be a BERT or GPT-2 transformers model (``FAMILIES``) with room for the virtual
    tokens: they take positions 0..P-1, so at least one real token must still fit into
    ``config.max_position_embeddings``. ``method`` must be the only one on the model.
    """
    check_one_method(model, method)
    family = model_family(model)
    if family not in FAMILIES:
        raise ValueError(f"{type(model).__name__} (family {family!r}) is not supported by {method} tuning; supported "
                         f"families: {', '.join(FAMILIES)} (transformers models)")
    max_positions = model.config.max_position_embeddings
    if not 1 <= check_int("num_virtual_tokens", num_virtual_tokens) < max_positions:
        raise ValueError(f"num_virtual_tokens must be an int from 1 to {max_positions - 1} (the model has "
                         f"{max_positions} positions and real tokens need at least one), got {num_virtual_tokens!r}")
    if modules_to_save is not None and (isinstance(modules_to_save, str) or not modules_to_save):
        raise ValueError(f"modules_to_save must be a non-empty list of module names (or None), got {modules_to_save!r}")
    return find_targets(model, list(modules_to_save), what="modules_to_save") if modules_to_save else []


def check_length(num_virtual_tokens: int, length: int, max_positions: int) -> None:
    """Raise when ``length`` real tokens after the virtual ones do not fit into the model's positions."""
    if num_virtual_tokens + length > max_positions:
        raise ValueError(f"{num_virtual_tokens} virtual + {length} real tokens exceed the model's {max_positions} "
                         f"positions; use at most {max_positions - num_virtual_tokens} real tokens")


def train_modules(model: nn.Module, saved: list[str], adapter_name: str) -> None:
    """Freeze ``model``; train copies of the modules named ``saved`` (e.g. ``["classifier"]``), as peft does."""
    freeze(model)
    if saved:
        carry_out(model, Plan(adapter_name, [], [(name, model.get_submodule(name)) for name in saved]))


class PrefixTuning(WholeModelAdapter):
    """A frozen transformers model plus learned key/value prefixes of ``num_virtual_tokens`` positions.

    Called like the base model (``input_ids``, ``attention_mask``, ``labels``, ...); returns
    the base model's output, logits aligned with ``input_ids``. Inside ``disable_adapters`` it is
    the base model alone.
    """

    def __init__(self, base_model: nn.Module, num_virtual_tokens: int, prefix_projection: bool = False,
                 encoder_hidden_size: int | None = None):
        super().__init__(base_model)
        config = base_model.config
        self.num_virtual_tokens = num_virtual_tokens
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads
        self.hidden_size = config.hidden_size
        self.max_positions = config.max_position_embeddings
        width = self.num_layers * 2 * self.hidden_size
        if prefix_projection:
            hidden = encoder_hidden_size or self.hidden_size
            self.embedding = nn.Embedding(num_virtual_tokens, self.hidden_size)
            self.transform = nn.Sequential(nn.Linear(self.hidden_size, hidden), nn.Tanh(), nn.Linear(hidden, width))
        else:
            self.embedding = nn.Embedding(num_virtual_tokens, width)
            self.transform = None

    def prefixes(self) -> torch.Tensor:
        """All keys and values, ``(L, 2, H, P, d_head)`` (index 0 of dim 1: keys, 1: values)."""
        table = self.embedding.weight  # (P, d) with projection, else (P, L * 2 * d)
        if self.transform is not None:
            table = self.transform(table)  # (P, L * 2 * d)
        P, H = self.num_virtual_tokens, self.num_heads
        # The flat vector of one position is [layer 0 keys, layer 0 values, layer 1 keys, ...], each (H * d_head).
        return table.view(P, self.num_layers, 2, H, self.hidden_size // H).permute(1, 2, 3, 0, 4)

    def past_key_values(self, batch_size: int) -> DynamicCache:
        """A fresh cache holding the prefixes of every layer, keys and values ``(B, H, P, d_head)``.

        Fresh on every call because attention layers append the real tokens' keys to it.
        """
        kv = self.prefixes()
        dtype = next(self.base_model.parameters()).dtype
        layers = [(kv[i, 0].expand(batch_size, -1, -1, -1).to(dtype), kv[i, 1].expand(batch_size, -1, -1, -1).to(dtype))
                  for i in range(self.num_layers)]
        return DynamicCache(layers)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs):
        """The base model reading the prefixes as its key/value cache at every layer."""
        if self.disabled:
            return self.base_model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                   **kwargs)
        tokens = input_ids if input_ids is not None else inputs_embeds
        batch_size, length = tokens.shape[:2]
        check_length(self.num_virtual_tokens, length, self.max_positions)
        if attention_mask is not None:  # every real token may attend to every prefix position
            ones = attention_mask.new_ones(batch_size, self.num_virtual_tokens)
            attention_mask = torch.cat([ones, attention_mask], dim=1)  # (B, P + T)
        return self.base_model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                               past_key_values=self.past_key_values(batch_size), **kwargs)


def apply(model: nn.Module, num_virtual_tokens: int = 20, *, prefix_projection: bool = False,
          encoder_hidden_size: int | None = None, modules_to_save: list[str] | None = None,
          adapter_name: str = "default") -> PrefixTuning:
    """Freeze ``model`` (a transformers BERT or GPT-2) and return it wrapped with trainable prefixes.

    Options as in peft's ``PrefixTuningConfig``: ``num_virtual_tokens`` (P), ``prefix_projection``
    (the reparameterisation MLP), ``encoder_hidden_size`` (its hidden width h, default d).
    ``modules_to_save``: modules that train too, e.g. ``["classifier"]`` for a sequence
    classifier (peft adds it for ``task_type="SEQ_CLS"``). Use the returned module.

    Trainable parameters: ``P * L * 2 * d``, or with the projection
    ``P * d + (d * h + h) + (h * L * 2 * d + L * 2 * d)``.
    """
    saved = check_virtual_tokens(model, num_virtual_tokens, "prefix", modules_to_save)
    if encoder_hidden_size is not None:
        check_int("encoder_hidden_size", encoder_hidden_size, minimum=1)
    train_modules(model, saved, adapter_name)
    device = next(model.parameters()).device
    return PrefixTuning(model, num_virtual_tokens, prefix_projection, encoder_hidden_size).to(device)


SPEC = MethodSpec(name="prefix", apply=apply, lr=1e-2)
