"""NF4 / FP4 / int4 quantisation (ftlab.methods.nf4) checked against bitsandbytes on CPU."""
import dataclasses
import math

import bitsandbytes.functional as bnb
import pytest
import safetensors.torch
import torch
from torch import nn

from ftlab.methods import nf4

WEIGHTS = ["random 300x70", "random 7x13 (odd count)", "random 65", "random 1", "random 2x3x50",
           "MiniLM query layer 0", "tiny GPT-2 c_attn", "GPT-2-shaped 768x2304"]
MULTI_BLOCK = [name for name in WEIGHTS if name != "random 1"]  # double quantisation needs two blocks to centre


@pytest.fixture
def weight(request):
    """A float32 weight by name: random normal, a real MiniLM weight or a GPT-2 one."""
    name = request.param
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    if name.startswith("random"):
        shape = tuple(int(s) for s in name.split()[1].split("x"))
        return torch.randn(shape, generator=g)
    if name == "MiniLM query layer 0":
        model, _ = request.getfixturevalue("minilm")
        return model.bert.encoder.layer[0].attention.self.query.weight.detach()
    if name == "tiny GPT-2 c_attn":
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500, n_positions=64))
        return gpt2.transformer.h[0].attn.c_attn.weight.detach()  # (64, 192), Conv1D layout (in, out)
    return 0.02 * torch.randn(768, 2304, generator=g)  # GPT-2 small's c_attn shape and init std


def nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The n 4-bit codes of packed bytes, high nibble first (written independently of nf4.unpack_4bit)."""
    return torch.stack([packed.view(-1) // 16, packed.view(-1) % 16], dim=1).view(-1)[:n].long()


# Code tables ----------------------------------------------------------------------------------


def test_nf4_code_is_normal_quantiles_bit_identical_to_bitsandbytes_table():
    code = nf4.nf4_code()
    assert torch.equal(code, bnb.get_4bit_type("nf4", device="cpu"))
    assert code.dtype == torch.float32 and torch.equal(code, code.sort().values)
    assert (code[0], code[7], code[15]) == (-1, 0, 1)
    assert (code > 0).sum() == 8 and (code < 0).sum() == 7
    # the inverse CDF is float64-precise: Phi^-1(0.975) = 1.959963984540054 (to 16 digits)
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    assert normal.icdf(torch.tensor(0.975, dtype=torch.float64)).item() == pytest.approx(1.959963984540054, abs=1e-14)
    # and a table computed wholly in float64 differs from ours only by float32 rounding
    positive = normal.icdf(torch.linspace(nf4.NF4_OFFSET, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -normal.icdf(torch.linspace(nf4.NF4_OFFSET, 0.5, 8, dtype=torch.float64)[:-1])
    exact = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    assert (exact / exact.max() - code.double()).abs().max() < 1.2e-7


def test_fp4_int4_and_dynamic_codes_equal_their_definitions():
    assert torch.equal(nf4.fp4_code(), bnb.get_4bit_type("fp4", device="cpu"))
    assert torch.equal(nf4.dynamic_code(), bnb.create_dynamic_map(signed=True))
    int4 = nf4.int4_code()
    assert int4[8] == 0 and int4[1] == -1 and int4[15] == 1
    assert torch.allclose(int4[1:], torch.linspace(-1, 1, 15), atol=1e-7)


# Parity with bitsandbytes ---------------------------------------------------------------------


@pytest.mark.parametrize("weight", WEIGHTS, indirect=True)
def test_nf4_packed_bytes_bit_identical_to_bitsandbytes(weight):
    packed, state = bnb.quantize_4bit(weight, blocksize=64, quant_type="nf4")
    q = nf4.quantize(weight, block_size=64, double_quant=False, quant_type="nf4")
    assert q.packed.dtype == torch.uint8 and q.packed.numel() == math.ceil(weight.numel() / 2)
    assert torch.equal(q.packed, packed.view(-1))
    assert torch.equal(q.absmax, state.absmax)
    restored = nf4.dequantize(q)
    assert restored.shape == weight.shape and restored.dtype == weight.dtype
    assert (restored - bnb.dequantize_4bit(packed, state)).abs().max() <= 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_nf4_matches_bitsandbytes_in_half_precision(minilm, dtype):
    weight = minilm[0].bert.encoder.layer[0].attention.self.query.weight.detach().to(dtype)
    packed, state = bnb.quantize_4bit(weight, blocksize=64, quant_type="nf4")
    q = nf4.quantize(weight, double_quant=False)
    assert torch.equal(q.packed, packed.view(-1))
    restored = nf4.dequantize(q)
    assert restored.dtype == dtype
    assert torch.equal(restored, bnb.dequantize_4bit(packed, state))


@pytest.mark.parametrize("weight", ["random 300x70", "MiniLM query layer 0", "tiny GPT-2 c_attn"], indirect=True)
def test_fp4_matches_bitsandbytes_up_to_the_sign_of_zero(weight):
    packed, state = bnb.quantize_4bit(weight, blocksize=64, quant_type="fp4")
    q = nf4.quantize(weight, double_quant=False, quant_type="fp4")
    ours, theirs = nibbles(q.packed, weight.numel()), nibbles(packed, weight.numel())
    differ = ours != theirs
    # Only values that round to zero differ: bitsandbytes' CPU path codes tiny positives as
    # "-0" (8) and tiny negatives as "+0" (0); ours copies the value's sign bit (as its CUDA
    # kernel does). Both decode to zero.
    assert set(theirs[differ].tolist()) <= {0, 8}
    assert torch.equal(ours[differ], 8 * torch.signbit(weight.reshape(-1)[differ]).long())
    assert differ.float().mean() < 0.02
    assert (nf4.dequantize(q) - bnb.dequantize_4bit(packed, state)).abs().max() <= 1e-6


def scaled_statistics(weight: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The centred absmax constants of ``weight`` divided by their block's scale, float32 (num_blocks,)."""
    _, state = bnb.quantize_4bit(weight, blocksize=64, quant_type="nf4")
    per_stat = scale.repeat_interleave(256)[: state.absmax.numel()]
    return (state.absmax - offset) * (1.0 / per_stat)


def nearest(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Brute-force nearest code index (float64 distances; the lower index on a tie)."""
    return (x.double()[:, None] - code.double()[None, :]).abs().argmin(dim=1)


@pytest.mark.parametrize("weight", MULTI_BLOCK, indirect=True)
def test_double_quant_statistics_match_bitsandbytes(weight):
    packed, state = bnb.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=True)
    q = nf4.quantize(weight, block_size=64, double_quant=True)
    assert torch.equal(q.packed, packed.view(-1))
    assert torch.equal(q.absmax_offset, state.offset)
    assert torch.equal(q.absmax_scale, state.state2.absmax)
    assert q.absmax.dtype == torch.uint8 and q.absmax.shape == state.absmax.shape
    assert torch.equal(state.state2.code, nf4.dynamic_code())

    code = nf4.dynamic_code()
    x = scaled_statistics(weight, q.absmax_offset, q.absmax_scale)
    assert torch.equal(q.absmax.long(), nearest(x, code))  # ours: the nearest 8-bit code
    # bitsandbytes 0.50's CPU kernel first rounds x to a grid of 65536 points spaced 2/65535 on
    # [-1, 1], then takes the code nearest that grid point: a value within half a grid step of a
    # midpoint between two codes can take the neighbour. That rule predicts every one of its bytes...
    grid = -1 + 2 * ((x.clamp(-1, 1) + 1) * 0.5 * 65535 + 0.5).floor() / 65535
    assert torch.equal(state.absmax.long(), nearest(grid, code))
    # ...so the two differ on a few statistics only, and ours is never the farther one.
    differ = q.absmax != state.absmax
    assert differ.float().mean() < 0.01
    ours_distance = (code[q.absmax.long()] - x).abs()
    theirs_distance = (code[state.absmax.long()] - x).abs()
    assert (ours_distance <= theirs_distance).all()
    assert (ours_distance[differ] < theirs_distance[differ]).all()


@pytest.mark.parametrize("weight", MULTI_BLOCK, indirect=True)
def test_double_quant_dequantize_matches_bitsandbytes(weight):
    packed, state = bnb.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=True)
    expected = bnb.dequantize_4bit(packed, state)
    # bitsandbytes' own state, read by our dequantize, gives bitsandbytes' weights
    theirs = nf4.QuantizedTensor(packed=packed.view(-1), absmax=state.absmax, absmax_scale=state.state2.absmax,
                                 absmax_offset=state.offset, shape=weight.shape, dtype=weight.dtype, block_size=64,
                                 quant_type="nf4")
    assert (nf4.dequantize(theirs) - expected).abs().max() <= 1e-6
    # our own round trip gives the same weights in every block whose 8-bit absmax agrees
    q = nf4.quantize(weight)
    same_block = (q.absmax == state.absmax).repeat_interleave(64)[: weight.numel()].view(weight.shape)
    assert same_block.float().mean() > 0.99
    assert (nf4.dequantize(q) - expected)[same_block].abs().max() <= 1e-6


# Padding, storage, error ----------------------------------------------------------------------


@pytest.mark.parametrize("quant_type", nf4.QUANT_TYPES)
@pytest.mark.parametrize("shape", [(1,), (3,), (65,), (7, 13), (2, 3, 50)])
def test_sizes_not_a_multiple_of_the_block_round_trip(shape, quant_type):
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    n = weight.numel()
    q = nf4.quantize(weight, double_quant=False, quant_type=quant_type)
    assert q.packed.numel() == math.ceil(n / 2) and q.absmax.numel() == math.ceil(n / 64)
    restored = nf4.dequantize(q)
    assert restored.shape == weight.shape and torch.isfinite(restored).all()
    # the padded tail acts exactly like explicit zeros up to a whole block
    padded = torch.cat([weight.reshape(-1), torch.zeros(-n % 64)])
    q_padded = nf4.quantize(padded, double_quant=False, quant_type=quant_type)
    assert torch.equal(nibbles(q.packed, n), nibbles(q_padded.packed, n))
    assert torch.equal(restored.reshape(-1), nf4.dequantize(q_padded)[:n])
    # dequantised weights are fixed points: quantising them again gives the same bytes
    assert torch.equal(nf4.quantize(restored, double_quant=False, quant_type=quant_type).packed, q.packed)
    # with double quantisation the restored weights stay close (one block: absmax = offset exactly)
    close = nf4.dequantize(nf4.quantize(weight, quant_type=quant_type))
    assert (close - restored).abs().max() <= 0.02 * weight.abs().max()


def test_all_zero_blocks_give_zeros_not_nan():
    weight = torch.cat([torch.zeros(128), torch.randn(100)])
    for double_quant in (False, True):
        restored = nf4.dequantize(nf4.quantize(weight, double_quant=double_quant))
        assert torch.equal(restored[:128], torch.zeros(128))


def test_bits_per_parameter_counts_the_stored_bytes():
    weight = torch.randn(1536, 384)
    n = weight.numel()
    q = nf4.quantize(weight, double_quant=True)
    plain = nf4.quantize(weight, double_quant=False)
    for state in (q, plain):  # no tensor hides a larger storage (a view would save all of it)
        for t in state.tensors().values():
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
    # 4-bit codes + one uint8 per 64 weights + one float32 per 64*256 weights + one float32 offset
    assert nf4.bits_per_parameter(q) == 8 * (n / 2 + n / 64 + 4 * math.ceil(n / 64 / 256) + 4) / n
    assert nf4.bits_per_parameter(q) <= 4.13
    assert nf4.bits_per_parameter(plain) == 4.5  # 4 + 32/64


def test_nf4_has_the_lowest_error_on_minilm_weights(minilm):
    # Measured on every MiniLM linear weight (block 64): NF4 < int4 < FP4. bitsandbytes' FP4 has
    # no level between 1/192 and 1/6 of the absmax, where most values of a normal block lie, and
    # loses to a uniform grid of step 1/7 there.
    model = minilm[0]
    layers = [model.bert.encoder.layer[0].attention.self.query, model.bert.encoder.layer[5].output.dense,
              model.bert.pooler.dense]
    for layer in layers:
        errors = {t: nf4.quantization_error(layer.weight, quant_type=t) for t in nf4.QUANT_TYPES}
        assert errors["nf4"] < errors["int4"] < errors["fp4"], errors
        assert errors["nf4"] < 0.1



def test_round_trip_returns_the_error_tensor_its_norm_and_the_stored_bits():
    weight = torch.randn(96, 40, generator=torch.Generator().manual_seed(3))
    for quant_type, block_size, double_quant in [("nf4", 64, True), ("fp4", 16, False), ("int4", 256, True)]:
        result = nf4.round_trip(weight, quant_type, block_size, double_quant)
        q = nf4.quantize(weight, block_size=block_size, double_quant=double_quant, quant_type=quant_type)
        want = weight.double() - nf4.dequantize(q).double()
        assert result["error"].shape == weight.shape and torch.equal(result["error"], want)
        assert result["relative_error"] == pytest.approx((want.norm() / weight.double().norm()).item(), rel=1e-12)
        assert result["relative_error"] == nf4.quantization_error(weight, quant_type, block_size, double_quant)
        assert result["bits_per_parameter"] == nf4.bits_per_parameter(q)
        assert (result["quant_type"], result["block_size"], result["double_quant"]) == (quant_type, block_size,
                                                                                        double_quant)

def test_quantized_state_lives_in_module_buffers_and_safetensors():
    weight = torch.randn(96, 40)
    q = nf4.quantize(weight)
    holder = nn.Module()
    for name, tensor in q.tensors().items():
        holder.register_buffer(name, tensor)
    loaded = safetensors.torch.load(safetensors.torch.save(holder.state_dict()))
    assert set(loaded) == {"packed", "absmax", "absmax_scale", "absmax_offset"}
    assert torch.equal(nf4.dequantize(dataclasses.replace(q, **loaded)), nf4.dequantize(q))


# Bad input ------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors_and_leave_the_weight_unchanged():
    weight = torch.randn(8, 8)
    before = weight.clone()
    q = nf4.quantize(weight)
    assert torch.equal(weight, before)
    with pytest.raises(TypeError, match="floating-point"):
        nf4.quantize(torch.ones(8, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="floating-point torch.Tensor, got list"):
        nf4.quantize([[1.0, 2.0]])
    with pytest.raises(TypeError, match="already quantised"):
        nf4.quantize(q)
    with pytest.raises(ValueError, match="unknown quant_type 'nf8'.*nf4, fp4, int4"):
        nf4.quantize(weight, quant_type="nf8")
    for block_size in (0, -64, 48):
        with pytest.raises(ValueError, match="positive power of two"):
            nf4.quantize(weight, block_size=block_size)
    for block_size in (64.0, True):
        with pytest.raises(TypeError, match="block_size must be a whole number"):
            nf4.quantize(weight, block_size=block_size)
    with pytest.raises(ValueError, match="empty"):
        nf4.quantize(torch.empty(0, 4))
    with pytest.raises(ValueError, match="NaN or infinite"):
        nf4.quantize(torch.tensor([1.0, float("nan")]))
    with pytest.raises(TypeError, match="QuantizedTensor"):
        nf4.dequantize(weight)
