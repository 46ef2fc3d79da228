"""NF4: 4-bit NormalFloat quantisation of a weight (QLoRA, Dettmers et al. 2023), from scratch.

Bit-compatible with ``bitsandbytes.functional.quantize_4bit(w, quant_type="nf4", blocksize=64)``:
the same packed bytes and statistics. One known exception: with double quantisation, a few
(about 0.2%) of the 8-bit statistics differ from bitsandbytes 0.50 on the CPU, whose kernel finds
the nearest code through a 65536-point lookup table; ours is the exact nearest code.
Five steps:

1. **Code tables.** A 4-bit code is an index into 16 values in [-1, 1]. NF4 takes them from
   quantiles of N(0, 1), so that each value gets about the same share of normally distributed
   weights. FP4 (sign, 2 exponent bits, 1 mantissa bit) and uniform int4 are for comparison.
2. **Blockwise absmax.** The flattened weight is cut into blocks of 64; each block is divided by
   its largest magnitude (absmax) and each value is replaced by the index of the nearest code:

       x_i / absmax_b  ->  argmin_k |x_i / absmax_b - code_k|,     W ≈ code[index] * absmax

3. **Packing.** Two 4-bit indices per byte, the first one in the high nibble.
4. **Double quantisation.** The absmax constants (one float32 per block, 0.5 bit per weight) are
   themselves quantised: their mean is subtracted, then they are quantised to 8 bits with
   blocks of 256 and bitsandbytes' signed "dynamic" 8-bit code, leaving 8/64 + 32/(64*256)
   bits per weight: about 4.127 bits per weight in all instead of 4.5.
5. **Dequantisation** reverses all of it: ``code[index] * absmax`` with absmax restored as
   ``dynamic[absmax_byte] * absmax_scale + absmax_offset``.

Arithmetic is float32, as in bitsandbytes; the quantised state (``QuantizedTensor``) holds
only tensors plus a few plain fields, so a layer can keep them as buffers.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import torch

from ftlab.validate import check_int

QUANT_TYPES = ("nf4", "fp4", "int4")
STATS_BLOCK_SIZE = 256  # block size of the second (8-bit) quantisation of the absmax constants

# bitsandbytes' outermost NF4 probability: about 1 - (1/30 + 1/32) / 2, halfway between the
# tail areas of 15 and 16 equal-probability bins, which keeps the largest quantile finite.
# The literal (not the formula) is used because its float32 rounding is what the table is built from.
NF4_OFFSET = 0.9677083


# 1. Code tables ------------------------------------------------------------------------------


def nf4_code(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 values, sorted, in [-1, 1]: normal quantiles with an exact zero. Shape (16,).

    Asymmetric: 8 positive quantiles at probabilities linspace(offset, 0.5, 9)[:-1] and 7
    negative ones at linspace(offset, 0.5, 8)[:-1] (mirrored), plus 0; then divided by the
    largest, so the ends are -1 and 1:

        q = Phi^-1(p),   Phi^-1(p) = sqrt(2) * erfinv(2p - 1)

    The probabilities and the final division are float32 and the inverse CDF float64, the
    roundings of bitsandbytes' table; all in float64 would change the last bit of 6 values.
    """
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    positive = normal.icdf(torch.linspace(offset, 0.5, 9)[:-1].double())  # (8,) the 0.5 quantile (0) dropped
    negative = -normal.icdf(torch.linspace(offset, 0.5, 8)[:-1].double())  # (7,)
    values = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).float().sort().values
    return values / values.max()


def fp4_code() -> torch.Tensor:
    """bitsandbytes' FP4 values, indexed by the 4-bit pattern ``s e1 e0 m``. Shape (16,).

    Bit 3 is the sign. The 3 other bits are a tiny float: exponent field e (2 bits) and
    mantissa bit m; e = 0 is subnormal (m * 1/16), otherwise (1 + m/2) * 2^(4 - e), so
    the magnitudes are 0, 1/16, 8, 12, 4, 6, 2, 3 (e counts down from the largest power:
    bitsandbytes' layout). Divided by the largest, 12, to lie in [-1, 1].
    """
    magnitudes = []
    for e in range(4):
        for m in range(2):
            magnitudes.append(m / 16 if e == 0 else (1 + m / 2) * 2.0 ** (4 - e))
    magnitudes = torch.tensor(magnitudes)  # (8,) indexed by e*2 + m
    return torch.cat([magnitudes, -magnitudes]) / magnitudes.max()


def int4_code() -> torch.Tensor:
    """Uniform symmetric int4: index i stands for (i - 8) / 7. Shape (16,).

    Scaled values lie in [-1, 1], so only -7/7 ... 7/7 (15 values, zero included) are ever
    chosen; index 0 (-8/7) stays unused, the price of a symmetric grid with an exact zero.
    """
    return (torch.arange(16) - 8) / 7.0


def dynamic_code() -> torch.Tensor:
    """bitsandbytes' signed 8-bit "dynamic" code (Dettmers 2015), used for the absmax statistics. (256,)

    Decade d = 0..6 covers magnitudes 10^(d-6) * [0.1, 1] with 2^d bin centres of a linear
    grid, so larger numbers get more values: 1 + 2 + ... + 64 = 127 magnitudes, each with both
    signs, plus 0 and 1. Sorted; the lowest is -0.99297 (there is no -1).
    """
    values = [torch.tensor([0.0, 1.0])]
    for d in range(7):
        edges = torch.linspace(0.1, 1.0, 2**d + 1)  # float32, like bitsandbytes
        centres = (edges[:-1] + edges[1:]) / 2
        values += [10.0 ** (d - 6) * centres, -(10.0 ** (d - 6)) * centres]
    return torch.cat(values).sort().values


_TABLES = {"nf4": nf4_code, "fp4": fp4_code, "int4": int4_code, "dynamic": dynamic_code}


@functools.cache
def code_table(name: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """The code table ``name`` ("nf4", "fp4", "int4" or "dynamic") on ``device``; built once, do not modify."""
    return _TABLES[name]().to(device)


# 2. Blockwise absmax quantisation -------------------------------------------------------------


def blockwise_absmax(x: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale each block of the flat float32 ``x`` (n,) by its absmax into [-1, 1].

    Returns (scaled (num_blocks * block_size,), absmax (num_blocks,)); the last block is padded
    with zeros, which does not change its absmax.
    """
    blocks = torch.nn.functional.pad(x, (0, -x.numel() % block_size)).view(-1, block_size)  # (num_blocks, block_size)
    absmax = blocks.abs().amax(dim=1)  # (num_blocks,)
    # An all-zero block has absmax 0: clamping keeps 0 * (1 / absmax) at 0 instead of NaN.
    # Multiplying by the reciprocal (not dividing) rounds exactly as bitsandbytes does.
    scaled = blocks * (1.0 / absmax.clamp(min=torch.finfo(torch.float32).tiny))[:, None]
    return scaled.view(-1), absmax


def nearest_code(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index into ``code`` (K,) of the value nearest to each element of ``x``: int64, x's shape.

    The decision boundaries are the midpoints between neighbouring values of the sorted code;
    a value exactly on a midpoint takes the lower one, as bitsandbytes does.
    """
    sorted_code, order = code.sort()
    midpoints = (sorted_code[:-1] + sorted_code[1:]) / 2  # (K-1,)
    return order[torch.bucketize(x, midpoints)]


def encode(scaled: torch.Tensor, name: str) -> torch.Tensor:
    """Code indices (int64) of ``scaled`` values in [-1, 1] for the code table ``name``.

    FP4 is a sign-magnitude float: bit 3 is the value's sign bit and the low 3 bits the
    nearest magnitude, so -0.001 becomes "-0" (index 8), as in bitsandbytes' CUDA kernel.
    """
    code = code_table(name, scaled.device)
    if name == "fp4":
        return nearest_code(scaled.abs(), code[:8]) + 8 * torch.signbit(scaled)
    return nearest_code(scaled, code)


def decode(indices: torch.Tensor, absmax: torch.Tensor, name: str, block_size: int) -> torch.Tensor:
    """Undo ``blockwise_absmax`` + ``encode``: ``code[index] * absmax`` of its block, float32 (n,)."""
    n = indices.numel()
    values = code_table(name, absmax.device)[indices.long()]  # (n,)
    blocks = torch.nn.functional.pad(values, (0, -n % block_size)).view(-1, block_size)  # (num_blocks, block_size)
    return (blocks * absmax[:, None]).view(-1)[:n]


# 3. Packing ----------------------------------------------------------------------------------


def pack_4bit(indices: torch.Tensor) -> torch.Tensor:
    """Two 4-bit indices per byte, the first in the high nibble: (n,) -> uint8 (ceil(n / 2),).

    An odd count is padded with one index 0.
    """
    pairs = torch.nn.functional.pad(indices.to(torch.uint8), (0, indices.numel() % 2)).view(-1, 2)  # (n/2, 2)
    return (pairs[:, 0] << 4) | pairs[:, 1]


def unpack_4bit(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Undo ``pack_4bit``: uint8 (ceil(n / 2),) -> the first n indices, int64 (n,)."""
    pairs = torch.stack([packed >> 4, packed & 0x0F], dim=1)  # (ceil(n/2), 2)
    return pairs.view(-1)[:n].long()


# 4. The quantised state, double quantisation, quantize / dequantize -----------------------------


@dataclasses.dataclass
class QuantizedTensor:
    """A 4-bit quantised weight: packed codes and block statistics, all plain tensors.

    ``packed``         uint8 (ceil(n / 2),): two code indices per byte, first in the high nibble
    ``absmax``         float32 (num_blocks,), or with double quantisation uint8 (num_blocks,):
                       indices into the dynamic code
    ``absmax_scale``   float32 (ceil(num_blocks / 256),): absmax of each block of 256 centred
                       statistics (double quantisation only, else None)
    ``absmax_offset``  float32 (): the mean subtracted from the statistics (double quantisation only)

    The names map to bitsandbytes' QuantState: ``absmax``, ``state2.absmax`` and ``offset``.
    """

    packed: torch.Tensor
    absmax: torch.Tensor
    absmax_scale: torch.Tensor | None
    absmax_offset: torch.Tensor | None
    shape: torch.Size
    dtype: torch.dtype
    block_size: int
    quant_type: str

    @property
    def double_quant(self) -> bool:
        """True when the absmax constants are themselves quantised to 8 bits."""
        return self.absmax_scale is not None

    @property
    def numel(self) -> int:
        """How many weights this state stands for."""
        return math.prod(self.shape)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by field name (to register as buffers, move, or count bytes)."""
        names = ("packed", "absmax", "absmax_scale", "absmax_offset")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


def check_block_size(block_size) -> None:
    """Raise unless ``block_size`` is a positive power of two."""
    if check_int("block_size", block_size) < 1 or block_size & (block_size - 1):
        raise ValueError(
            f"block_size must be a positive power of two (64 is bitsandbytes' default), got {block_size!r}"
        )


def quantize(weight: torch.Tensor, block_size: int = 64, double_quant: bool = True,
             quant_type: str = "nf4") -> QuantizedTensor:
    """Quantise ``weight`` (any shape, floating point) to 4 bits per value, blockwise.

    ``quant_type`` is "nf4", "fp4" or "int4"; ``double_quant`` also quantises the per-block
    absmax constants to 8 bits (bitsandbytes' ``compress_statistics=True``).
    """
    if isinstance(weight, QuantizedTensor):
        raise TypeError("weight is already quantised (a QuantizedTensor); pass dequantize(weight) to quantise again")
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        got = weight.dtype if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise TypeError(f"weight must be a floating-point torch.Tensor, got {got}")
    if weight.numel() == 0:
        raise ValueError("weight is empty; there is nothing to quantise")
    if not torch.isfinite(weight).all():
        raise ValueError("weight has NaN or infinite values; a block's absmax would be meaningless")
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"unknown quant_type {quant_type!r}; choose one of {', '.join(QUANT_TYPES)}")
    check_block_size(block_size)

    x = weight.detach().reshape(-1).float()  # (n,)
    n = x.numel()
    scaled, absmax = blockwise_absmax(x, block_size)
    # An odd count keeps one padding zero to fill the last byte, as bitsandbytes packs it.
    indices = encode(scaled[: n + n % 2], quant_type)
    absmax_scale = absmax_offset = None
    if double_quant:
        # absmax values are all positive: centring them puts both halves of the signed 8-bit code to use
        absmax_offset = absmax.mean()  # ()
        scaled_stats, absmax_scale = blockwise_absmax(absmax - absmax_offset, STATS_BLOCK_SIZE)
        absmax = encode(scaled_stats[: absmax.numel()], "dynamic").to(torch.uint8)  # (num_blocks,)
    return QuantizedTensor(packed=pack_4bit(indices), absmax=absmax, absmax_scale=absmax_scale,
                           absmax_offset=absmax_offset, shape=weight.shape, dtype=weight.dtype,
                           block_size=block_size, quant_type=quant_type)


def dequantize(q: QuantizedTensor) -> torch.Tensor:
    """Rebuild the weight from ``q``: ``code[index] * absmax`` per block, in q's shape and dtype."""
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"dequantize expects a QuantizedTensor from quantize(), got {type(q).__name__}")
    absmax = q.absmax
    if q.double_quant:
        absmax = decode(q.absmax, q.absmax_scale, "dynamic", STATS_BLOCK_SIZE) + q.absmax_offset  # (num_blocks,)
    values = decode(unpack_4bit(q.packed, q.numel), absmax, q.quant_type, q.block_size)  # (n,)
    return values.view(q.shape).to(q.dtype)


# 5. Measures ---------------------------------------------------------------------------------


def bits_per_parameter(q: QuantizedTensor) -> float:
    """Stored bits per weight: the bytes of every tensor ``q`` holds, times 8, over the weight count.

    The code tables are not counted: they are constants, rebuilt by code, shared by all weights.
    """
    stored = sum(t.numel() * t.element_size() for t in q.tensors().values())
    return 8 * stored / q.numel


def round_trip(weight: torch.Tensor, quant_type: str = "nf4", block_size: int = 64, double_quant: bool = True) -> dict:
    """Quantise ``weight`` and dequantise it again: what the stored format loses and what it costs.

    Returns ``{"error": W - W_hat (float64, W's shape), "relative_error": ||W - W_hat|| / ||W||,
    "bits_per_parameter": stored bits per weight, "quant_type", "block_size", "double_quant"}``.
    """
    q = quantize(weight, block_size=block_size, double_quant=double_quant, quant_type=quant_type)
    w = weight.detach().double()
    error = w - dequantize(q).double()  # W's shape
    return {"error": error, "relative_error": (error.norm() / w.norm()).item(),
            "bits_per_parameter": bits_per_parameter(q), "quant_type": quant_type, "block_size": block_size,
            "double_quant": double_quant}


def quantization_error(weight: torch.Tensor, quant_type: str = "nf4", block_size: int = 64,
                       double_quant: bool = True) -> float:
    """Relative Frobenius error of a round trip: ||W - dequantize(quantize(W))|| / ||W||."""
    return round_trip(weight, quant_type, block_size, double_quant)["relative_error"]
