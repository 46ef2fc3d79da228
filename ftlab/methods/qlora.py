"""QLoRA: LoRA on top of linear layers whose frozen weights are stored in 4 bits (Dettmers et al. 2023).

    h = dequant(W_4bit) x + b + scaling * B A x

Each targeted nn.Linear or GPT-2 Conv1D is replaced by a ``Linear4bit`` / ``Conv1D4bit`` that keeps
only the packed 4-bit codes and block statistics (``ftlab/methods/nf4.py``) as buffers, plus its
bias. Forward dequantises the weight in ``compute_dtype`` for one matmul and lets it go; backward
dequantises it again instead of keeping the float weight, as bitsandbytes does. Then LoRA
(``ftlab/methods/lora.py``, or DoRA with ``use_dora=True``) wraps these layers in ``QLoraLayer``s:
LoRA layers whose merge first dequantises the base (below), so adapters, ``disable_adapters`` and
export work as for LoRA.

Storage per weight: 4 bits of code + 8/64 bits of absmax + 32/(64*256) bits of second-level
statistics, about 4.13 bits instead of 32 (``storage_report``). The layer stands for a float
weight of ``weight_dtype``: ``layer.weight`` dequantises it on demand (read-only: a fresh tensor
every time), and ``model.to(dtype)`` changes ``weight_dtype`` while the block statistics stay
float32 (see ``QuantizedLayer._apply``).

Merging cannot put W + delta back into 4 bits without rounding it again, so merging a QLoRA
layer swaps its quantised base for the dequantised float layer first (``prepare_merge``):
``ftlab.merge`` and ``merge_and_unload`` give a float model whose weights are dequant(W) + delta,
with the same outputs.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from ftlab.methods.base import (
    ALL_LINEAR,
    MethodSpec,
    TunedLayer,
    carry_out,
    find_targets,
    plan_injection,
    replace_module,
    weight_out_in,
)
from ftlab.methods.dora import DoraLayer
from ftlab.methods.lora import LoraLayer, LoraOptions
from ftlab.methods.nf4 import QUANT_TYPES, QuantizedTensor, check_block_size, dequantize, quantize
from ftlab.validate import check_bool, check_choice

COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
# Buffers that keep float32 whatever the model's dtype (absmax is uint8 when double-quantised).
STATISTICS = ("absmax", "absmax_scale", "absmax_offset")


class _DequantizedLinear(torch.autograd.Function):
    """y = x W^T + b with W dequantised from 4 bits in forward, and again in backward.

    ``F.linear(x, W, b)`` written plainly would make autograd keep the float W (out, in) of every
    layer until backward: exactly the memory that 4-bit storage saves. W is frozen, so only x
    (and b, should someone train it) get gradients.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, bias: torch.Tensor | None, layer: QuantizedLayer) -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, weight_out_in(layer, layer.dequantize_weight(x.dtype)), bias)  # (..., out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        layer = ctx.layer
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ weight_out_in(layer, layer.dequantize_weight(grad.dtype))  # (..., in)
        if ctx.needs_input_grad[1]:
            grad_bias = grad.flatten(0, -2).sum(0)  # (out,)
        return grad_x, grad_bias, None


class QuantizedLayer(nn.Module):
    """A frozen linear layer stored in 4 bits; base of ``Linear4bit`` and ``Conv1D4bit``.

    Buffers: ``packed`` uint8 (n/2,), ``absmax`` (uint8 with double quantisation, else float32),
    ``absmax_scale`` and ``absmax_offset`` (float32, double quantisation only); parameter: ``bias``.
    ``num_packed_parameters`` tells ``ftlab.measure.count_parameters`` how many weights the
    packed buffer stands for.
    """

    def __init__(self, base_layer: nn.Module, quant_type: str = "nf4", double_quant: bool = True,
                 block_size: int = 64, compute_dtype: torch.dtype = torch.float32):
        # Only nn.Module's __init__: nn.Linear's (or Conv1D's) would allocate a float weight, which
        # is what this layer does without. The subclasses still inherit from nn.Linear / Conv1D, as
        # bitsandbytes' Linear4bit does, so every isinstance check (targets, layer_features,
        # Conv1D's transposed layout in merge and export) treats them as the layers they replace.
        nn.Module.__init__(self)
        weight = base_layer.weight.detach()
        q = quantize(weight, block_size=block_size, double_quant=double_quant, quant_type=quant_type)
        for name, tensor in q.tensors().items():
            self.register_buffer(name, tensor)
        for name in ("absmax_scale", "absmax_offset"):  # None without double quantisation
            if name not in self._buffers:
                self.register_buffer(name, None)
        bias = base_layer.bias
        self.register_parameter("bias", None if bias is None else nn.Parameter(bias.detach().clone(),
                                                                               requires_grad=False))
        self.weight_shape = weight.shape
        self.weight_dtype = weight.dtype
        self.quant_type = quant_type
        self.block_size = block_size
        self.compute_dtype = compute_dtype

    @property
    def num_packed_parameters(self) -> int:
        """How many weights the packed buffer stands for."""
        return math.prod(self.weight_shape)

    @property
    def double_quant(self) -> bool:
        return self.absmax_scale is not None

    def quant_state(self) -> QuantizedTensor:
        """The stored weight as ``nf4.QuantizedTensor`` (the buffers themselves, not copies)."""
        return QuantizedTensor(packed=self.packed, absmax=self.absmax, absmax_scale=self.absmax_scale,
                               absmax_offset=self.absmax_offset, shape=self.weight_shape, dtype=self.weight_dtype,
                               block_size=self.block_size, quant_type=self.quant_type)

    def dequantize_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The float weight in this layer's layout (Linear (out, in), Conv1D (in, out)); default ``weight_dtype``."""
        q = self.quant_state()
        return dequantize(dataclasses.replace(q, dtype=dtype or q.dtype))

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight, a new tensor each time (writing into it changes nothing)."""
        return self.dequantize_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """h = dequant(W) x + b, computed in ``compute_dtype`` and returned in x's dtype."""
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return _DequantizedLinear.apply(x.to(self.compute_dtype), bias, self).to(x.dtype)  # (..., out)

    def dequantized(self) -> nn.Module:
        """A frozen float nn.Linear / Conv1D with the dequantised weight and the bias (``merge`` uses it)."""
        layer = self._float_layer().to(device=self.packed.device, dtype=self.weight_dtype)
        with torch.no_grad():
            layer.weight.copy_(self.weight)
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        return layer.requires_grad_(False)

    def _float_layer(self) -> nn.Module:
        raise NotImplementedError

    def _apply(self, fn, recurse=True):
        # model.to(torch.bfloat16) or .half() converts every floating-point buffer; rounding the block
        # statistics to 16 bits would spoil every weight of the block. So they keep their float32
        # values and follow only the device, while the float weight this layer stands for takes
        # the new dtype (as a float weight would): it is what ``weight`` and ``merge`` return.
        statistics = {name: self._buffers[name] for name in STATISTICS if self._buffers.get(name) is not None}
        super()._apply(fn, recurse)
        for name, tensor in statistics.items():
            self._buffers[name] = tensor.to(self.packed.device)
        self.weight_dtype = fn(torch.empty(0, dtype=self.weight_dtype, device=self.packed.device)).dtype
        return self

    def __repr__(self) -> str:
        return nn.Module.__repr__(self)  # not Conv1D's own repr, which hides the quantisation

    def extra_repr(self) -> str:
        n_out, n_in = self.weight_shape[::-1] if isinstance(self, Conv1D) else self.weight_shape
        return (f"in_features={n_in}, out_features={n_out}, bias={self.bias is not None}, "
                f"quant_type={self.quant_type}, double_quant={self.double_quant}, block_size={self.block_size}, "
                f"compute_dtype={self.compute_dtype}")


class Linear4bit(QuantizedLayer, nn.Linear):
    """An nn.Linear (weight (out, in)) stored in 4 bits. Ours, not bitsandbytes' class of the same name."""

    def __init__(self, base_layer: nn.Linear, **options):
        super().__init__(base_layer, **options)
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features

    def _float_layer(self) -> nn.Linear:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)


class Conv1D4bit(QuantizedLayer, Conv1D):
    """GPT-2's Conv1D (weight stored (in, out)) in 4 bits; quantised in that stored layout."""

    def __init__(self, base_layer: Conv1D, **options):
        super().__init__(base_layer, **options)
        self.nx, self.nf = base_layer.weight.shape  # Conv1D's names: nx inputs, nf outputs

    def _float_layer(self) -> Conv1D:
        return Conv1D(self.nf, self.nx)


def check_options(quant_type: str, double_quant: bool, block_size: int, compute_dtype: torch.dtype) -> None:
    """Raise ValueError/TypeError unless the quantisation options are valid."""
    check_choice("quant_type", quant_type, QUANT_TYPES)
    check_bool("double_quant", double_quant)
    check_block_size(block_size)
    if compute_dtype not in COMPUTE_DTYPES:
        raise TypeError(f"compute_dtype must be one of {', '.join(map(str, COMPUTE_DTYPES))}, got {compute_dtype!r}")


def check_quantizable(module: nn.Module, name: str) -> None:
    """Raise TypeError unless ``module`` (called ``name``) is a float nn.Linear or Conv1D not yet quantised."""
    base = module.base_layer if isinstance(module, TunedLayer) else module
    if isinstance(base, QuantizedLayer):
        raise TypeError(f"{name!r} is already quantised ({type(base).__name__}); quantising twice would round "
                        f"rounded weights. To add another adapter on the quantised model, use "
                        f"ftlab.add_adapter(model, name, method='lora', ...)")
    if isinstance(module, TunedLayer):
        raise TypeError(f"{name!r} already carries a {module.method!r} adapter; apply qlora to a model "
                        f"without adapters (quantise first, then add more adapters)")
    if not isinstance(module, (nn.Linear, Conv1D)):
        raise TypeError(f"qlora quantises nn.Linear and transformers' Conv1D layers, but {name!r} is a "
                        f"{type(module).__name__}; choose targets that name linear layers")
    if not module.weight.is_floating_point():
        raise TypeError(f"{name!r} has a {module.weight.dtype} weight; only floating-point weights can be quantised")


def quantize_layer(layer: nn.Linear | Conv1D, quant_type: str = "nf4", double_quant: bool = True,
                   block_size: int = 64, compute_dtype: torch.dtype = torch.float32) -> QuantizedLayer:
    """A ``Linear4bit`` / ``Conv1D4bit`` copy of ``layer`` in 4 bits; ``layer`` itself is not changed."""
    check_options(quant_type, double_quant, block_size, compute_dtype)
    check_quantizable(layer, "layer")
    cls = Conv1D4bit if isinstance(layer, Conv1D) else Linear4bit
    return cls(layer, quant_type=quant_type, double_quant=double_quant, block_size=block_size,
               compute_dtype=compute_dtype)


class QLoraLayer(LoraLayer):
    """LoRA on a 4-bit ``Linear4bit`` / ``Conv1D4bit``: merging first swaps in the dequantised float base layer."""

    kinds = (Linear4bit, Conv1D4bit)

    def prepare_merge(self) -> None:
        # 4 bits cannot hold W + delta without rounding it again, so the merge is into float weights
        if isinstance(self.base_layer, QuantizedLayer):
            self.base_layer = self.base_layer.dequantized()


class QDoraLayer(DoraLayer):
    """DoRA on a 4-bit layer (QDoRA); merging dequantises the base layer first, as ``QLoraLayer``."""

    kinds = QLoraLayer.kinds
    prepare_merge = QLoraLayer.prepare_merge


def apply(model: nn.Module, *, r: int = 8, lora_alpha: float = 8, lora_dropout: float = 0.0,
          targets: list[str] | str = ALL_LINEAR, use_rslora: bool = False, use_dora: bool = False,
          init_lora_weights: bool | str = True, modules_to_save: list[str] | None = None, adapter_name: str = "default",
          quant_type: str = "nf4", double_quant: bool = True, block_size: int = 64,
          compute_dtype: torch.dtype = torch.float32) -> nn.Module:
    """Quantise ``model``'s target layers to 4 bits and add a LoRA adapter to them; freeze the rest.

    ``targets``: as for LoRA (``base.find_targets``), by default ``"all-linear"``: every
    nn.Linear / Conv1D but the output head, as QLoRA does. ``quant_type`` "nf4" (or "fp4",
    "int4"), ``double_quant`` (bitsandbytes' ``compress_statistics``), ``block_size`` and
    ``compute_dtype`` (the matmul's dtype, bitsandbytes' ``bnb_4bit_compute_dtype``) set the
    quantisation; the other options are LoRA's (``lora.apply``).
    Returns ``model``, changed in place; on bad input it raises and leaves ``model`` as it was.
    """
    options = LoraOptions(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, use_rslora=use_rslora,
                          init_lora_weights=init_lora_weights, use_dora=use_dora)
    check_options(quant_type, double_quant, block_size, compute_dtype)
    names = find_targets(model, targets)
    for name in names:
        check_quantizable(model.get_submodule(name), name)
    # quantise every layer before replacing any, so that a failure (e.g. a NaN weight) changes nothing
    quantized = {name: quantize_layer(model.get_submodule(name), quant_type, double_quant, block_size, compute_dtype)
                 for name in names}
    originals = {name: replace_module(model, name, layer) for name, layer in quantized.items()}
    try:
        plan = plan_injection(model, [QLoraLayer, QDoraLayer], options, targets=targets, adapter_name=adapter_name,
                              modules_to_save=modules_to_save, method="qlora")
    except (ValueError, TypeError):
        # the plan changes nothing; put the float layers back as well
        for name, original in originals.items():
            replace_module(model, name, original)
        raise
    return carry_out(model, plan)


def storage_report(model: nn.Module) -> dict:
    """Bytes the quantised layers store for their weights, against the same weights in float32.

    Returns ``{"layers", "parameters", "bytes", "float32_bytes", "ratio", "bits_per_parameter"}``;
    ``bytes`` counts the packed codes and every statistic (biases stay float and are left out).
    """
    layers = [m for m in model.modules() if isinstance(m, QuantizedLayer)]
    if not layers:
        raise ValueError("the model has no quantised layers; apply qlora first")
    parameters = sum(m.num_packed_parameters for m in layers)
    stored = sum(t.numel() * t.element_size() for m in layers for t in m.quant_state().tensors().values())
    return {"layers": len(layers), "parameters": parameters, "bytes": stored, "float32_bytes": 4 * parameters,
            "ratio": stored / (4 * parameters), "bits_per_parameter": 8 * stored / parameters}


SPEC = MethodSpec(name="qlora", apply=apply, lr=1e-3, options=LoraOptions,
                  layers=("ftlab.methods.qlora:QLoraLayer", "ftlab.methods.qlora:QDoraLayer"))
