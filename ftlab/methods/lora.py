"""LoRA and DoRA: a trainable low-rank change added to frozen weights.

LoRA (Hu et al. 2021): the frozen weight W (out, in) gets a change of rank r,

    h = W x + scaling * B A x,   A: (r, in), B: (out, r),   scaling = lora_alpha / r

(``use_rslora=True``: scaling = lora_alpha / sqrt(r), Kalajdzievski 2023). A starts
kaiming-uniform and B at zero, so the model starts exactly equal to the base model.

DoRA (Liu et al. 2024) splits the adapted weight into a magnitude and a direction,

    W' = m * (W + scaling * B A) / ||W + scaling * B A||,   m: (out,), norm over each output row,

m starting at ||W|| (so again W' = W). As the paper (section 4.3) and peft do, the norm
is detached: it is treated as a constant in the backward pass.

For nn.Conv2d, A is a conv with the base layer's kernel, stride, padding and dilation
(in -> r channels) and B a 1x1 conv (r -> out); the change is B A with the kernel
flattened, reshaped to (out, in, kh, kw). For GPT-2's Conv1D (weight stored (in, out))
the change is transposed into that layout when merged.

Options and parameter names follow peft's LoraConfig, except that peft's ``target_modules``
is called ``targets`` here (ftlab's name; same rules, see ``_inject.find_targets``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ftlab.methods._inject import (Tuned, _check_unmerged, adapter_names, inject, layer_features, tuned_layers,
                                   weight_out_in)


class LoraLayer(Tuned):
    """A frozen nn.Linear / Conv1D / nn.Conv2d plus LoRA (optionally DoRA) adapters.

    Per adapter: ``lora_A[name]``, ``lora_B[name]``, ``lora_dropout[name]`` and, for DoRA,
    ``lora_magnitude_vector[name]`` of shape (out,); the same names as peft's.
    """

    method = "lora"

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.lora_magnitude_vector = nn.ParameterDict()
        self._merged_norm: torch.Tensor | None = None  # DoRA: ||W + dW|| at merge time, to unmerge exactly

    @classmethod
    def check(cls, base_layer: nn.Module, name: str, r: int = 8, lora_alpha: float = 8, lora_dropout: float = 0.0,
              use_rslora: bool = False, use_dora: bool = False, init_lora_weights: bool = True) -> None:
        n_in, n_out = layer_features(base_layer)
        if isinstance(base_layer, nn.Conv2d):
            n_in *= base_layer.kernel_size[0] * base_layer.kernel_size[1]  # A sees in * kh * kw inputs
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise ValueError(f"r must be a positive integer rank, got {r!r}")
        if r > min(n_in, n_out):
            raise ValueError(f"r={r} does not fit {name!r} ({n_in} inputs, {n_out} outputs): "
                             f"the largest rank allowed there is {min(n_in, n_out)}")
        if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, (int, float)):
            raise ValueError(f"lora_alpha must be a number, got {lora_alpha!r}")
        if not 0.0 <= lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be a probability in [0, 1), got {lora_dropout!r}")
        if init_lora_weights not in (True, False):
            raise ValueError(f"init_lora_weights must be True (B = 0) or False (random B), got {init_lora_weights!r}")

    def add(self, adapter: str, r: int = 8, lora_alpha: float = 8, lora_dropout: float = 0.0,
            use_rslora: bool = False, use_dora: bool = False, init_lora_weights: bool = True) -> None:
        base = self.base_layer
        n_in, n_out = layer_features(base)
        if isinstance(base, nn.Conv2d):
            lora_A = nn.Conv2d(n_in, r, base.kernel_size, base.stride, base.padding, base.dilation, bias=False)
            lora_B = nn.Conv2d(r, n_out, 1, bias=False)
        else:
            lora_A = nn.Linear(n_in, r, bias=False)
            lora_B = nn.Linear(r, n_out, bias=False)
        # kaiming-uniform with a=sqrt(5) is nn.Linear's own default init, which peft (and loralib) use for A
        nn.init.kaiming_uniform_(lora_A.weight, a=math.sqrt(5))
        if init_lora_weights:
            nn.init.zeros_(lora_B.weight)
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A[adapter] = lora_A.to(**like)
        self.lora_B[adapter] = lora_B.to(**like)
        self.lora_dropout[adapter] = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        if use_dora:
            scaling = lora_alpha / (math.sqrt(r) if use_rslora else r)
            with torch.no_grad():
                delta = self._low_rank_delta(adapter, scaling)
                self.lora_magnitude_vector[adapter] = nn.Parameter(self._row_norm(delta))  # (out,)

    def scaling(self, adapter: str) -> float:
        """lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora."""
        config = self.adapter_config[adapter]
        r = config["r"]
        return config["lora_alpha"] / (math.sqrt(r) if config["use_rslora"] else r)

    def _low_rank_delta(self, adapter: str, scaling: float) -> torch.Tensor:
        """scaling * B A, output dimension first: (out, in) or (out, in, kh, kw)."""
        A = self.lora_A[adapter].weight  # (r, in) or (r, in, kh, kw)
        B = self.lora_B[adapter].weight  # (out, r) or (out, r, 1, 1)
        delta = B.flatten(1) @ A.flatten(1)  # (out, in * kh * kw)
        return scaling * delta.view(weight_out_in(self.base_layer).shape)

    def _row_norm(self, delta: torch.Tensor) -> torch.Tensor:
        """||W + delta|| over everything but the output dimension: (out,). Detached (DoRA, section 4.3)."""
        weight = weight_out_in(self.base_layer)
        return (weight + delta).detach().flatten(1).norm(dim=1)

    def _is_dora(self, adapter: str) -> bool:
        return adapter in self.lora_magnitude_vector

    def _per_row(self, v: torch.Tensor) -> torch.Tensor:
        """Shape a per-output vector (out,) to broadcast against an out-first weight."""
        return v.view(-1, *[1] * (self.base_layer.weight.dim() - 1))

    def _per_output(self, v: torch.Tensor) -> torch.Tensor:
        """Shape a per-output vector (out,) to broadcast against this layer's output."""
        return v.view(1, -1, 1, 1) if isinstance(self.base_layer, nn.Conv2d) else v

    def _without_bias(self, x: torch.Tensor) -> torch.Tensor:
        """W x: the base layer's output without its bias."""
        base = self.base_layer
        if isinstance(base, nn.Conv2d):
            return F.conv2d(x, base.weight, None, base.stride, base.padding, base.dilation)
        return x @ weight_out_in(base).T  # (..., out)

    def adapter_forward(self, x: torch.Tensor, adapter: str, *args, **kwargs) -> torch.Tensor:
        """h = W x + b + scaling * B A dropout(x); with DoRA h = m / ||W + dW|| * (W x + scaling * B A x) + b."""
        result = self.base_layer(x, *args, **kwargs)
        dropout = self.lora_dropout[adapter]
        scaling = self.scaling(adapter)
        if not self._is_dora(adapter):
            return result + self.lora_B[adapter](self.lora_A[adapter](dropout(x))) * scaling
        norm = self._row_norm(self._low_rank_delta(adapter, scaling))
        scale = self._per_output(self.lora_magnitude_vector[adapter] / norm)
        if isinstance(dropout, nn.Identity) or not self.training:
            # reuse the base output for W x instead of a second matmul, as peft does
            bias = self.base_layer.bias
            wx = result if bias is None else result - self._per_output(bias)
        else:
            x = dropout(x)
            wx = self._without_bias(x)
        lora = self.lora_B[adapter](self.lora_A[adapter](x)) * scaling
        return result + (scale - 1) * wx + scale * lora

    def delta_weight(self, adapter: str) -> torch.Tensor:
        """W' - W in the base weight's own layout: Linear (out, in), Conv1D (in, out), Conv2d (out, in, kh, kw).

        LoRA: scaling * B A. DoRA: m / ||W + scaling B A|| * (W + scaling B A) - W, which
        depends on the unmerged W, so it is only defined while the layer is not merged.
        """
        delta = self._low_rank_delta(adapter, self.scaling(adapter))
        if self._is_dora(adapter):
            if self.merged_adapter is not None:
                raise ValueError("a DoRA delta depends on the unmerged base weight; unmerge() first")
            weight = weight_out_in(self.base_layer)
            scale = self.lora_magnitude_vector[adapter] / self._row_norm(delta)
            delta = self._per_row(scale) * (weight + delta) - weight
        return weight_out_in(self.base_layer, delta)

    def _merge(self, adapter: str) -> None:
        if not self._is_dora(adapter):
            return super()._merge(adapter)
        # W' = m / ||W + dW|| * (W + dW); keep the norm, since W' alone cannot give it back
        weight = weight_out_in(self.base_layer)
        delta = self._low_rank_delta(adapter, self.scaling(adapter))
        self._merged_norm = self._row_norm(delta)
        scale = self.lora_magnitude_vector[adapter] / self._merged_norm
        merged = self._per_row(scale) * (weight + delta)
        self.base_layer.weight.copy_(weight_out_in(self.base_layer, merged))

    def _unmerge(self, adapter: str) -> None:
        if not self._is_dora(adapter):
            return super()._unmerge(adapter)
        weight = weight_out_in(self.base_layer)
        delta = self._low_rank_delta(adapter, self.scaling(adapter))
        scale = self.lora_magnitude_vector[adapter] / self._merged_norm
        original = weight / self._per_row(scale) - delta
        self.base_layer.weight.copy_(weight_out_in(self.base_layer, original))
        self._merged_norm = None


def apply(model: nn.Module, *, r: int = 8, lora_alpha: float = 8, lora_dropout: float = 0.0,
          targets: list[str] | str | None = None, use_rslora: bool = False, use_dora: bool = False,
          init_lora_weights: bool = True, modules_to_save: list[str] | None = None,
          adapter_name: str = "default") -> nn.Module:
    """Add a LoRA (or, with ``use_dora=True``, DoRA) adapter to ``model``'s target layers; freeze the rest.

    ``targets`` is peft's ``target_modules`` (None: the family default, e.g. BERT
    ["query", "value"], GPT-2 ["c_attn"], ResNet every conv of layer1..layer4).
    ``init_lora_weights=False`` draws B at random (the model no longer starts equal to the
    base; for tests). ``modules_to_save`` (e.g. ["classifier"]) are trained in full, as copies.
    Returns ``model``, changed in place.
    """
    options = dict(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, use_rslora=use_rslora,
                   use_dora=use_dora, init_lora_weights=init_lora_weights)
    return inject(model, LoraLayer, targets, adapter_name, options, modules_to_save)


def add_weighted_adapter(model: nn.Module, adapters: list[str], weights: list[float],
                         adapter_name: str) -> nn.Module:
    """Add adapter ``adapter_name`` whose change is exactly sum_i weights[i] * delta_i.

    Stacks the factors: A = [A_1; A_2; ...] (sum r_i, in), B = [w_1 s_1 B_1, w_2 s_2 B_2, ...]
    (out, sum r_i), with scaling 1 (lora_alpha = r = sum r_i), so B A = sum_i w_i s_i B_i A_i.
    This is peft's ``combination_type="cat"``; peft's default ``"linear"`` instead mixes the A's
    and the B's separately, and (sum a_i A_i)(sum b_j B_j) has cross terms, so it is not this sum.
    Only plain LoRA adapters (not DoRA) can be summed; the new adapter is added inactive.
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
    _check_unmerged(model, "combine adapters")
    layers = [layer for _, layer in tuned_layers(model) if isinstance(layer, LoraLayer)
              and any(a in layer.adapter_config for a in adapters)]
    if any(layer._is_dora(a) for layer in layers for a in adapters if a in layer.adapter_config):
        raise ValueError("DoRA adapters are not a sum of low-rank changes and cannot be combined; use plain LoRA ones")

    for layer in layers:
        present = [(a, w) for a, w in zip(adapters, weights) if a in layer.adapter_config]
        A = torch.cat([layer.lora_A[a].weight for a, _ in present], dim=0)  # (sum r, in[, kh, kw])
        B = torch.cat([w * layer.scaling(a) * layer.lora_B[a].weight
                       for a, w in present], dim=1)  # (out, sum r[, 1, 1])
        rank = A.shape[0]
        layer.add_adapter(adapter_name, r=rank, lora_alpha=rank, lora_dropout=0.0, use_rslora=False,
                          use_dora=False, init_lora_weights=True)
        with torch.no_grad():
            layer.lora_A[adapter_name].weight.copy_(A)
            layer.lora_B[adapter_name].weight.copy_(B)
        layer.lora_A[adapter_name].requires_grad_(False)
        layer.lora_B[adapter_name].requires_grad_(False)
    return model
