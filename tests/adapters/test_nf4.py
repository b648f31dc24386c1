"""NF4 quantisation (lm/adapters/nf4.py) against bitsandbytes on CPU, scipy's normal
quantiles and blocks worked by hand (QLoRA, Dettmers et al. 2023, section 3, appendix E)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import nn

from lm.adapters.nf4 import (
    NF4_LEVELS,
    NF4Linear,
    dequantize_absmax,
    dequantize_nf4,
    dynamic_map,
    quantize_absmax,
    quantize_nf4,
)

bnb = pytest.importorskip("bitsandbytes.functional")


def paper_levels() -> np.ndarray:
    """NF4 levels built from scratch (QLoRA section 3): 8 positive and 7 negative quantiles
    of N(0, 1) at evenly spaced probabilities from delta to 1/2, plus 0, over the largest.
    delta = 1 - (1/30 + 1/32) / 2 ~ 0.9677083 (bitsandbytes' ``create_normal_map``)."""
    delta = 1 - (1 / 30 + 1 / 32) / 2
    positive = norm.ppf(np.linspace(delta, 0.5, 9)[:-1])  # 8 values, largest first
    negative = -norm.ppf(np.linspace(delta, 0.5, 8)[:-1])  # 7 values
    levels = np.sort(np.concatenate([negative, [0.0], positive]))
    return levels / levels.max()


def unpack(codes: torch.Tensor) -> torch.Tensor:
    """Bytes -> 4-bit indices, high nibble first (written here, not imported)."""
    return torch.stack([codes // 16, codes % 16], dim=1).flatten().long()


def bnb_nf4(w: torch.Tensor, quant_block_size: int = 64, double_quant: bool = False):
    codes, state = bnb.quantize_4bit(w, blocksize=quant_block_size, quant_type="nf4",
                                     compress_statistics=double_quant)
    return codes.flatten(), state


def bnb_dequantize(codes: torch.Tensor, state) -> torch.Tensor:
    """bitsandbytes' ``dequantize_4bit``, flattened. For an odd last dimension it runs a
    ``torch.compile``d fallback; eager gives the same values without the compile time."""
    with torch._dynamo.config.patch(disable=True):
        return bnb.dequantize_4bit(codes, state).flatten()


# --- the 16 levels -------------------------------------------------------------------------


def test_levels_are_the_normal_quantiles_of_the_paper():
    levels = NF4_LEVELS.double().numpy()
    assert NF4_LEVELS.dtype == torch.float32 and NF4_LEVELS.shape == (16,)
    np.testing.assert_allclose(levels, paper_levels(), rtol=0, atol=1e-6)
    assert np.all(np.diff(levels) > 0) and levels[0] == -1 and levels[-1] == 1
    assert levels[7] == 0.0  # asymmetric: 0 is a level exactly


def test_levels_equal_bitsandbytes_table():
    assert torch.equal(NF4_LEVELS, bnb.get_4bit_type("nf4", device="cpu"))


def test_dynamic_map_equals_bitsandbytes():
    assert torch.equal(dynamic_map(), bnb.create_dynamic_map())


# --- quantise / dequantise against bitsandbytes --------------------------------------------


@pytest.mark.parametrize("shape, quant_block_size", [
    ((32, 64), 64), ((3, 70), 64), ((5, 7), 64), ((129,), 64), ((2, 3, 128), 128), ((48, 32), 32),
])
def test_codes_absmax_and_values_equal_bitsandbytes(shape, quant_block_size):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    codes, absmax = quantize_nf4(w, quant_block_size)
    ref_codes, state = bnb_nf4(w, quant_block_size)
    assert codes.dtype == torch.uint8 and torch.equal(codes, ref_codes)  # bit for bit
    assert absmax.dtype == torch.float32 and torch.equal(absmax, state.absmax)
    deq = dequantize_nf4(codes, absmax, shape, quant_block_size)
    assert deq.shape == shape and deq.dtype == torch.float32
    assert torch.equal(deq.flatten(), bnb_dequantize(ref_codes, state))


def test_edge_cases_equal_bitsandbytes():
    """An all-zero block, values exactly on the midpoints between levels (ties), the
    levels themselves and a block whose absmax is a negative value."""
    midpoints = (NF4_LEVELS[:-1] + NF4_LEVELS[1:]) / 2  # (15,) float32
    ties = torch.cat([midpoints, NF4_LEVELS, torch.zeros(64 - 31)])  # absmax 1: scale exactly 1
    negative = torch.linspace(-3, 2, 64)  # absmax from -3
    w = torch.cat([torch.zeros(64), ties, negative])  # (192,)
    codes, absmax = quantize_nf4(w)
    ref_codes, state = bnb_nf4(w)
    assert torch.equal(codes, ref_codes) and torch.equal(absmax, state.absmax)
    indices = unpack(codes)
    assert torch.all(indices[:64] == 7)  # zeros are level 7 (0.0) ...
    assert torch.equal(dequantize_nf4(codes, absmax, w.shape)[:64], torch.zeros(64))  # ... no NaN
    assert torch.equal(indices[64:79], torch.arange(15))  # a tie goes to the lower level
    assert torch.equal(indices[79:95], torch.arange(16))  # a level is its own code
    assert indices[128] == 0  # -absmax is level -1


def test_block_worked_by_hand():
    """w = [0, 1, -2, 0.5], one block of 4: absmax 2, w / 2 = [0, 0.5, -1, 0.25].
    Nearest levels: 0 -> #7 (0.0); 0.5 -> #12 (0.4407, 0.059 away; #13 0.5626 is 0.063 away);
    -1 -> #0; 0.25 -> #10 (0.2461). Bytes: (7 << 4) | 12 = 124, (0 << 4) | 10 = 10."""
    codes, absmax = quantize_nf4(torch.tensor([0.0, 1.0, -2.0, 0.5]), quant_block_size=4)
    assert codes.tolist() == [124, 10] and absmax.tolist() == [2.0]
    deq = dequantize_nf4(codes, absmax, (4,), quant_block_size=4)
    expected = torch.tensor([0.0, 2 * 0.44070982933044434, -2.0, 2 * 0.24611230194568634])
    torch.testing.assert_close(deq, expected, rtol=0, atol=1e-7)


def test_64_value_block_by_the_paper_formula():
    """code = argmin_i |w / absmax(w) - q_i| over the levels built from scipy, in float64."""
    w = torch.randn(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    absmax = w.abs().max()
    levels = torch.from_numpy(paper_levels())  # (16,) float64
    expected = (w[:, None] / absmax - levels[None, :]).abs().argmin(dim=1)  # (64,)
    codes, got_absmax = quantize_nf4(w.float())
    assert torch.equal(unpack(codes), expected)
    assert got_absmax.item() == pytest.approx(absmax.item(), rel=1e-7)


# --- round-trip error ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(16, 64), (7, 33)])
def test_round_trip_error_within_half_the_widest_gap(shape):
    w = 0.02 * torch.randn(shape, generator=torch.Generator().manual_seed(2))
    codes, absmax = quantize_nf4(w)
    error = (w - dequantize_nf4(codes, absmax, shape)).flatten().abs()  # (n,)
    half_gap = (NF4_LEVELS[1:] - NF4_LEVELS[:-1]).max() / 2  # 0.1385, between 0.7230 and 1
    flat = w.flatten()  # (n,)
    block_absmax = torch.stack([flat[i - i % 64: i - i % 64 + 64].abs().max()
                                for i in range(flat.numel())])  # (n,) each value's block absmax
    assert torch.all(error <= block_absmax * half_gap * (1 + 1e-6))


def test_nf4_error_below_int4_on_normal_weights():
    """On N(0, 1) weights NF4's levels (dense near 0) beat 15 evenly spaced absmax levels
    (symmetric int4, round(7 w / absmax)) in mean absolute and squared error."""
    w = torch.randn(256, 64, generator=torch.Generator().manual_seed(3))
    nf4 = dequantize_nf4(*quantize_nf4(w), w.shape)
    absmax = w.abs().amax(dim=1, keepdim=True)  # (256, 1) blocks are rows
    int4 = torch.round(7 * w / absmax) / 7 * absmax
    assert (w - nf4).abs().mean() < 0.9 * (w - int4).abs().mean()
    assert ((w - nf4) ** 2).mean() < 0.9 * ((w - int4) ** 2).mean()


# --- double quantisation ----------------------------------------------------------------------


def test_double_quant_equals_bitsandbytes():
    """Offset and scales equal bitsandbytes' nested state exactly; dequantising its codes
    gives its absmax exactly. Codes: bitsandbytes' CPU kernel finds the level with an
    approximate search (a few in 1000 land one step off), so ours are required to be the
    nearest level and to agree with it almost everywhere."""
    w = torch.randn(600 * 64, generator=torch.Generator().manual_seed(4))  # 600 absmax values
    _, absmax = quantize_nf4(w)
    codes, scales, offset = quantize_absmax(absmax)
    ref_codes, state = bnb_nf4(w, double_quant=True)
    assert offset.shape == () and torch.equal(offset, state.offset)
    assert scales.shape == (3,) and torch.equal(scales, state.state2.absmax)
    assert codes.dtype == torch.uint8 and (codes == state.absmax).float().mean() > 0.99
    table = dynamic_map().double()
    centred = (absmax.double() - offset.double()).view(-1)  # (600,)
    scaled = centred / scales.double().repeat_interleave(256)[:600]  # (600,) in [-1, 1]
    ours = (scaled - table[codes.long()]).abs()
    theirs = (scaled - table[state.absmax.long()]).abs()
    assert torch.all(ours <= theirs + 1e-7)
    ref_absmax = bnb.dequantize_blockwise(state.absmax, state.state2) + state.offset
    assert torch.equal(dequantize_absmax(state.absmax, state.state2.absmax, state.offset, 600),
                       ref_absmax)
    deq = dequantize_nf4(ref_codes, ref_absmax, w.shape)
    assert torch.equal(deq, bnb_dequantize(ref_codes, state))


def test_double_quant_block_worked_by_hand():
    """absmax [1, 2, 3, 6]: mean 3, centred [-2, -1, 0, 3], scale 3, scaled [-2/3, -1/3, 0, 1].
    The map's top decade holds 0.1 + 0.9 (k + 1/2) / 64, k = 0..63: 2/3 is nearest k = 40
    (0.66953), 1/3 nearest k = 16 (0.33203); 0 and 1 are in the map."""
    codes, scales, offset = quantize_absmax(torch.tensor([1.0, 2.0, 3.0, 6.0]), quant_block_size=4)
    assert offset.item() == 3.0 and scales.tolist() == [3.0]
    top = [0.1 + 0.9 * (k + 0.5) / 64 for k in (40, 16)]
    expected = torch.tensor([3 - 3 * top[0], 3 - 3 * top[1], 3.0, 6.0])
    got = dequantize_absmax(codes, scales, offset, 4, quant_block_size=4)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_double_quant_round_trip_error():
    absmax = 0.01 + torch.rand(1000, generator=torch.Generator().manual_seed(5))
    codes, scales, offset = quantize_absmax(absmax)
    error = (absmax - dequantize_absmax(codes, scales, offset, 1000)).abs()  # (1000,)
    table = dynamic_map()
    half_gap = (table[1:] - table[:-1]).max() / 2  # ~0.007, the coarsest step near +-1
    block_scale = scales.repeat_interleave(256)[:1000]  # (1000,)
    assert torch.all(error <= block_scale * half_gap + 1e-6)


# --- NF4Linear -------------------------------------------------------------------------------


def linear(in_features=48, out_features=32, bias=True, seed=0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias)


@pytest.mark.parametrize("double_quant", [False, True])
def test_linear_forward_is_f_linear_of_the_dequantised_weight(double_quant):
    base = linear()
    layer = NF4Linear.from_linear(base, double_quant=double_quant)
    x = torch.randn(2, 5, 48, requires_grad=True)
    weight = layer.dequantize()  # (32, 48)
    assert weight.shape == (32, 48) and weight.dtype == torch.float32
    y = layer(x)
    assert y.shape == (2, 5, 32)
    torch.testing.assert_close(y, F.linear(x, weight, base.bias), rtol=0, atol=0)
    y.sum().backward()  # gradients reach the input, none are kept for the layer
    assert x.grad is not None and list(layer.parameters()) == []
    # the weight itself is bitsandbytes' NF4 round trip (double quant: near it)
    codes, state = bnb_nf4(base.weight.detach(), double_quant=double_quant)
    ref = bnb_dequantize(codes, state).view(32, 48)
    tolerance = 0.0 if not double_quant else 0.02 * base.weight.abs().max().item()
    torch.testing.assert_close(weight, ref, rtol=0, atol=tolerance)


def test_linear_output_close_to_the_original():
    base = linear()
    x = torch.randn(8, 48)
    for double_quant in (False, True):
        y = NF4Linear.from_linear(base, double_quant=double_quant)(x)
        expected = base(x)
        assert (y - expected).norm() / expected.norm() < 0.15  # 4 bits: a few percent
    y16 = NF4Linear.from_linear(base)(x.bfloat16())
    assert y16.dtype == torch.bfloat16


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_state_dict_round_trip(double_quant, bias):
    layer = NF4Linear.from_linear(linear(bias=bias), double_quant=double_quant)
    fresh = NF4Linear.from_linear(linear(bias=bias, seed=1), double_quant=double_quant)
    x = torch.randn(3, 48)
    assert not torch.equal(fresh(x), layer(x))
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh(x), layer(x))
    assert ("bias" in layer.state_dict()) == bias


def test_linear_memory_is_about_an_eighth():
    base = linear(256, 128)
    n = base.weight.numel()  # 32768 weights, 512 blocks of 64
    plain = NF4Linear.from_linear(base)
    double = NF4Linear.from_linear(base, double_quant=True)

    def weight_bytes(layer):
        return sum(b.numel() * b.element_size() for k, b in layer.state_dict().items()
                   if k.startswith("weight"))

    assert weight_bytes(plain) == n // 2 + 4 * (n // 64)  # 4 bits + a float32 per block
    assert weight_bytes(double) == n // 2 + n // 64 + 4 * 2 + 4  # + 2 scales and the offset
    assert weight_bytes(plain) / (4 * n) == pytest.approx(1 / 8 + 1 / 64)
    assert weight_bytes(double) / (4 * n) < 0.13


@pytest.mark.parametrize("quant_block_size", [0, -2, 1, 63, 2.0, True])
def test_bad_quant_block_size_is_one_line(quant_block_size):
    with pytest.raises(ValueError,
                       match=rf"^adapter\.quant_block_size={quant_block_size} is invalid") as info:
        NF4Linear.from_linear(linear(), quant_block_size=quant_block_size)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="adapter.quant_block_size"):
        quantize_nf4(torch.randn(8), quant_block_size=quant_block_size)


def test_linear_repr_and_attributes():
    layer = NF4Linear.from_linear(linear(), quant_block_size=32, double_quant=True)
    assert (layer.in_features, layer.out_features, layer.quant_block_size, layer.double_quant) == (
        48, 32, 32, True)
    assert ("in_features=48, out_features=32, bias=True, quant_block_size=32, double_quant=True"
            in repr(layer))


def test_an_older_qlora_config_naming_the_nf4_block_block_size_builds_the_same_layers():
    """QLoRA checkpoints saved before ``adapter.quant_block_size`` had that name hold the
    NF4 block as ``adapter.block_size``: rebuilt from such a config, the layers are the
    new config's, block for block."""
    from lm.adapters.build import apply_adapter
    from tests.conftest import tiny

    new = {"name": "qlora", "r": 2, "alpha": 4, "dropout": 0.0, "targets": ["blocks.*.attn.c_attn"],
           "quantize": ["blocks.*"], "quant_block_size": 32, "double_quant": False}
    old = {k: v for k, v in new.items() if k != "quant_block_size"} | {"block_size": 32}
    models = [tiny(), tiny()]
    for model, cfg in zip(models, [new, old]):
        apply_adapter(model, cfg)
    nf4 = [[m for m in model.modules() if isinstance(m, NF4Linear)] for model in models]
    assert nf4[0] and [m.quant_block_size for m in nf4[1]] == [32] * len(nf4[0])
    x = torch.randint(0, 37, (1, 8))
    assert torch.equal(models[0](x)[0], models[1](x)[0])
