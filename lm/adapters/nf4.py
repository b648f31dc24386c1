"""NF4: 4-bit NormalFloat quantisation of a frozen weight, and a Linear layer that uses it.

Trained weights are roughly normal, so QLoRA stores each one as one of 16 levels placed at
quantiles of N(0, 1) (``NF4_LEVELS``, -1 ... 0 ... 1): every level then gets about the same
share of the weights. A weight is quantised in blocks of ``quant_block_size`` (64) values: divide
the block by its absolute maximum (``absmax``, one float32 per block) so it lies in [-1, 1],
store the index (0..15) of the nearest level, two indices per byte. Dequantising is a table
look-up times the block's absmax. Double quantisation stores the float32 absmax values
themselves in 8 bits (blocks of 256, after subtracting their mean): 0.5 + 4/64 = 0.5625
bytes per weight becomes about 0.5 + 1/64 = 0.516.

Everything here is plain PyTorch; the tests check codes, scales and dequantised values
against ``bitsandbytes.functional.quantize_4bit(..., quant_type="nf4")`` on CPU.

Sources: QLoRA, Dettmers et al. 2023, section 3 (NF4, double quantisation) and appendix E
(the NF4 table); the 8-bit map of double quantisation is bitsandbytes'
``create_dynamic_map`` (Dettmers 2016, "8-bit approximations for parallelism in deep
learning"; Dettmers et al. 2022, "8-bit optimizers via block-wise quantization").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# The 16 NF4 levels, ascending, as printed in QLoRA appendix E. How they are made
# (section 3): take quantiles of N(0, 1) at evenly spaced probabilities, 8 on the positive
# side and 7 on the negative side, add 0, and divide by the largest so they span [-1, 1].
# Positive: Q(p) for p = linspace(delta, 1/2, 9) without its last point (Q(1/2) = 0);
# negative: -Q(p) for p = linspace(delta, 1/2, 8) without its last. The outermost quantile
# uses delta = 0.9677083 ~ 1 - (1/30 + 1/32) / 2 rather than 1, where Q is infinite. One
# side having a level more than the other (asymmetric) is what lets 0 be a level exactly,
# so zeros and padding survive quantisation unchanged.
NF4_LEVELS = torch.tensor([
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
], dtype=torch.float32)  # (16,)

ABSMAX_BLOCK_SIZE = 256  # QLoRA's block size for the second-level (double) quantisation
_TINY = torch.finfo(torch.float32).tiny  # stands in for absmax 0 (an all-zero block) when dividing


def dynamic_map() -> torch.Tensor:
    """The 256 values of the signed 8-bit "dynamic" map, ascending, in [-1, 1]: float32 (256,).

    Each byte is a sign, a decade and a fraction: the decade 10^(e-6), e = 0..6, holds 2^e
    values, the centres of 2^e equal bins of [0.1, 1] times 10^(e-6), on each side of zero;
    with 0 and 1 that is 2 * 127 + 2 = 256. Small numbers thus get fine steps and large ones
    coarse steps, like a float. The same values as ``bitsandbytes.functional.
    create_dynamic_map()`` (its default, signed), which double quantisation uses.

    Source: Dettmers 2016, "8-bit approximations for parallelism in deep learning";
    bitsandbytes ``create_dynamic_map``.
    """
    values = [0.0, 1.0]
    for e in range(7):
        edges = torch.linspace(0.1, 1.0, 2**e + 1)  # (2^e + 1,) float32 bin edges
        centres = (edges[:-1] + edges[1:]) / 2  # (2^e,) float32
        magnitudes = (centres * 10.0 ** (e - 6)).tolist()  # float32 products, as Python floats
        values += magnitudes + [-m for m in magnitudes]
    return torch.tensor(sorted(values), dtype=torch.float32)  # (256,)


DYNAMIC_MAP = dynamic_map()  # (256,) float32, built once


# --- blockwise absmax quantisation, shared by the 4-bit and the 8-bit code --------------


def check_quant_block_size(quant_block_size: int) -> None:
    """Raise ``ValueError`` unless ``quant_block_size`` is an even integer >= 2."""
    size = quant_block_size
    if not isinstance(size, int) or isinstance(size, bool) or size < 2 or size % 2:
        raise ValueError(f"adapter.quant_block_size={size} is invalid: must be an even integer "
                         ">= 2 (two 4-bit codes share a byte; the paper's is 64)")


def _to_blocks(x: torch.Tensor, quant_block_size: int) -> torch.Tensor:
    """Flatten ``x`` (row-major) into rows of ``quant_block_size``, zero-padding the last row.

    Returns float32 (n_blocks, quant_block_size), n_blocks = ceil(x.numel() / quant_block_size).
    """
    flat = x.reshape(-1).float()  # (n,)
    pad = -flat.numel() % quant_block_size
    return F.pad(flat, (0, pad)).view(-1, quant_block_size)  # (n_blocks, quant_block_size)


def _nearest_level(scaled: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the level nearest to each value of ``scaled``: int64, same shape.

    ``levels`` is ascending; a value goes to level i when it lies between the midpoints to
    levels i-1 and i+1. A value exactly on a midpoint goes to the lower level (as
    bitsandbytes does).
    """
    levels = levels.to(scaled.device)
    midpoints = (levels[:-1] + levels[1:]) / 2  # (L-1,) decision boundaries
    return torch.bucketize(scaled, midpoints)  # same shape as scaled, 0..L-1


def _quantize_blocks(blocks: torch.Tensor, levels: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax-quantise each row of ``blocks`` (float32 (n_blocks, quant_block_size)) to ``levels``.

    Returns (level indices int64 (n_blocks, quant_block_size), absmax float32 (n_blocks,)).
    """
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    # times the reciprocal rather than divided by absmax: the same rounding as bitsandbytes
    inverse = 1.0 / absmax.clamp(min=_TINY)  # (n_blocks,)
    scaled = blocks * inverse[:, None]  # (n_blocks, quant_block_size) in [-1, 1]
    return _nearest_level(scaled, levels), absmax


def _dequantize_blocks(indices: torch.Tensor, levels: torch.Tensor, absmax: torch.Tensor,
                       quant_block_size: int, n: int) -> torch.Tensor:
    """Level look-up times each block's absmax, for the first ``n`` indices: float32 (n,).

    ``indices``: integer (m,), m >= n, row-major; ``absmax``: float32 (ceil(n / quant_block_size),).
    """
    pad = absmax.numel() * quant_block_size - n
    indices = F.pad(indices[:n].long(), (0, pad))  # (n_blocks * quant_block_size,) whole blocks
    values = levels.to(absmax.device)[indices]  # (n_blocks * quant_block_size,)
    values = values.view(-1, quant_block_size)  # (n_blocks, quant_block_size)
    return (values * absmax[:, None]).reshape(-1)[:n]  # (n,)


# --- NF4: 4-bit codes, two per byte ------------------------------------------------------


def _pack(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte, the first in the high nibble: int (m,) -> uint8 (ceil(m/2),)."""
    codes = codes.to(torch.uint8)  # (m,)
    if codes.numel() % 2:
        codes = F.pad(codes, (0, 1), value=7)  # a lone last code is paired with level 0.0
    return (codes[0::2] << 4) | codes[1::2]  # (ceil(m/2),)


def _unpack(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_pack``: uint8 (k,) -> int64 (2k,) codes 0..15."""
    high = packed >> 4  # (k,) first code of each byte
    low = packed & 0x0F  # (k,) second code
    return torch.stack([high, low], dim=1).reshape(-1).long()  # (2k,)


def quantize_nf4(w: torch.Tensor, quant_block_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise ``w`` to NF4 in blocks of ``quant_block_size`` values.

    ``w`` (any shape, float) is flattened row-major and cut into blocks (the last one
    zero-padded). Each block is divided by its absmax and each value stored as the index of
    the nearest ``NF4_LEVELS`` entry, two per byte (first value in the high nibble).

    Returns:
        codes: uint8 (ceil(w.numel() / 2),), the packed 4-bit indices.
        absmax: float32 (ceil(w.numel() / quant_block_size),), each block's max |w|.

    Raises:
        ValueError: ``quant_block_size`` is not an even integer >= 2.

    Source: QLoRA, Dettmers et al. 2023, section 3; the same bytes and absmax as
    ``bitsandbytes.functional.quantize_4bit(w, blocksize=quant_block_size, quant_type="nf4")``.
    """
    check_quant_block_size(quant_block_size)
    blocks = _to_blocks(w, quant_block_size)  # (n_blocks, quant_block_size)
    indices, absmax = _quantize_blocks(blocks, NF4_LEVELS)  # as blocks, (n_blocks,)
    indices = indices.reshape(-1)[: w.numel()]  # (n,) drop the padding
    return _pack(indices), absmax


def dequantize_nf4(codes: torch.Tensor, absmax: torch.Tensor, shape: tuple[int, ...] | torch.Size,
                   quant_block_size: int = 64) -> torch.Tensor:
    """Inverse of ``quantize_nf4``: ``NF4_LEVELS[code] * absmax`` of each value's block.

    Args:
        codes: uint8 (ceil(n / 2),) packed indices; absmax: float32 (ceil(n / quant_block_size),);
        shape: the weight's shape, n = prod(shape).

    Returns: float32 tensor of ``shape``.

    Raises:
        ValueError: ``quant_block_size`` is not an even integer >= 2.

    Source: QLoRA, Dettmers et al. 2023, section 3; equals ``bitsandbytes.functional.
    dequantize_4bit`` on the same codes.
    """
    check_quant_block_size(quant_block_size)
    n = math.prod(shape)
    assert codes.numel() == -(-n // 2) and absmax.numel() == -(-n // quant_block_size), \
        f"codes {codes.numel()} / absmax {absmax.numel()} do not fit {n} values"
    indices = _unpack(codes)  # (2 * ceil(n / 2),)
    return _dequantize_blocks(indices, NF4_LEVELS, absmax.float(), quant_block_size, n).view(shape)


# --- double quantisation: the absmax values in 8 bits ------------------------------------


def quantize_absmax(absmax: torch.Tensor, quant_block_size: int = ABSMAX_BLOCK_SIZE
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Double quantisation: store NF4's absmax values in 8 bits.

    Absmax values are all positive, so their mean is subtracted first (offset) to centre
    them on 0 and use both halves of the signed map. The centred values are then
    absmax-quantised in blocks of ``quant_block_size`` to the nearest ``DYNAMIC_MAP`` entry.

    Args:
        absmax: float32 (n,), from ``quantize_nf4``.

    Returns:
        codes: uint8 (n,), indices into ``DYNAMIC_MAP``.
        scales: float32 (ceil(n / quant_block_size),), each block's max |absmax - offset|.
        offset: float32 scalar (0-dim), the mean of ``absmax``.

    Raises:
        ValueError: ``quant_block_size`` is not an integer >= 1.

    Source: QLoRA, Dettmers et al. 2023, section 3 "Double Quantization" (blocks of 256,
    mean subtracted). The paper says 8-bit floats; this uses bitsandbytes' dynamic map, as
    ``quantize_4bit(..., compress_statistics=True)`` does, and gives its offset and scales.
    """
    size = quant_block_size
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"double quantisation quant_block_size={size} is invalid: "
                         "must be an integer >= 1 (the paper's is 256)")
    offset = absmax.float().mean()  # () float32
    blocks = _to_blocks(absmax - offset, quant_block_size)  # (n_blocks2, quant_block_size)
    indices, scales = _quantize_blocks(blocks, DYNAMIC_MAP)  # as blocks, (n_blocks2,)
    codes = indices.reshape(-1)[: absmax.numel()].to(torch.uint8)  # (n,)
    return codes, scales, offset


def dequantize_absmax(codes: torch.Tensor, scales: torch.Tensor, offset: torch.Tensor, n: int,
                      quant_block_size: int = ABSMAX_BLOCK_SIZE) -> torch.Tensor:
    """Inverse of ``quantize_absmax``: ``DYNAMIC_MAP[code] * scale + offset``.

    Args:
        codes: uint8 (n,); scales: float32 (ceil(n / quant_block_size),); offset: float32 scalar;
        n: how many absmax values; quant_block_size: as given to ``quantize_absmax``.

    Returns: float32 (n,), the approximate absmax values.

    Source: QLoRA, Dettmers et al. 2023, section 3; bitsandbytes ``dequantize_blockwise``
    plus ``offset``, as its ``dequantize_4bit`` does for a nested quant state.
    """
    assert codes.numel() == n, f"{codes.numel()} codes for {n} absmax values"
    values = _dequantize_blocks(codes, DYNAMIC_MAP, scales.float(), quant_block_size, n)  # (n,)
    return values + offset  # (n,)


# --- the 4-bit Linear layer --------------------------------------------------------------


class NF4Linear(nn.Module):
    """A frozen Linear layer whose weight is stored in NF4 and dequantised on every call.

    ``y = x @ W.T + b`` with W rebuilt from its 4-bit codes (QLoRA's base layer; LoRA
    adapters train on top of it). Nothing here is trainable: the quantised weight and the
    bias are buffers, so they are saved in ``state_dict`` but have no gradient. Build one
    from a trained layer with ``NF4Linear.from_linear``.

    Buffers (n = out_features * in_features):
        weight_codes: uint8 (ceil(n / 2),), packed 4-bit level indices.
        weight_absmax: float32 (ceil(n / quant_block_size),), without double quantisation; with it:
        weight_absmax_codes: uint8 (ceil(n / quant_block_size),),
        weight_absmax_scales: float32 (ceil(n_blocks / 256),),
        weight_absmax_offset: float32 (), see ``quantize_absmax``.
        bias: float32 (out_features,), or None.

    Raises:
        ValueError: ``quant_block_size`` is not an even integer >= 2 (one line).

    Source: QLoRA, Dettmers et al. 2023; bitsandbytes ``nn.Linear4bit`` (its ``quant_type=
    "nf4"``, ``compress_statistics`` = our ``double_quant``).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 quant_block_size: int = 64, double_quant: bool = False):
        super().__init__()
        check_quant_block_size(quant_block_size)
        self.in_features, self.out_features = in_features, out_features
        self.quant_block_size, self.double_quant = quant_block_size, double_quant
        n = in_features * out_features
        n_blocks = -(-n // quant_block_size)
        self.register_buffer("weight_codes", torch.zeros(-(-n // 2), dtype=torch.uint8))
        if double_quant:
            n_blocks2 = -(-n_blocks // ABSMAX_BLOCK_SIZE)
            self.register_buffer("weight_absmax_codes", torch.zeros(n_blocks, dtype=torch.uint8))
            self.register_buffer("weight_absmax_scales", torch.zeros(n_blocks2))
            self.register_buffer("weight_absmax_offset", torch.zeros(()))
        else:
            self.register_buffer("weight_absmax", torch.zeros(n_blocks))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, quant_block_size: int = 64,
                    double_quant: bool = False) -> NF4Linear:
        """Quantise ``linear``'s weight (and copy its bias) into a new ``NF4Linear`` on the
        same device. Raises ``ValueError`` for a bad ``quant_block_size``."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    quant_block_size, double_quant).to(linear.weight.device)
        layer.set_weight(linear.weight.detach())
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor) -> None:
        """Quantise ``weight`` (out_features, in_features) into this layer's buffers."""
        assert weight.shape == (self.out_features, self.in_features), weight.shape
        codes, absmax = quantize_nf4(weight, self.quant_block_size)  # (n/2,) uint8, (n_blocks,)
        self.weight_codes.copy_(codes)
        if self.double_quant:
            absmax_codes, scales, offset = quantize_absmax(absmax)  # (n_blocks,), (n_b2,), ()
            self.weight_absmax_codes.copy_(absmax_codes)
            self.weight_absmax_scales.copy_(scales)
            self.weight_absmax_offset.copy_(offset)
        else:
            self.weight_absmax.copy_(absmax)

    def absmax(self) -> torch.Tensor:
        """Each weight block's absmax, float32 (n_blocks,) (approximate under double_quant)."""
        if not self.double_quant:
            return self.weight_absmax
        return dequantize_absmax(self.weight_absmax_codes, self.weight_absmax_scales,
                                 self.weight_absmax_offset, self.weight_absmax_codes.numel())

    def dequantize(self) -> torch.Tensor:
        """The weight, float32 (out_features, in_features)."""
        shape = (self.out_features, self.in_features)
        return dequantize_nf4(self.weight_codes, self.absmax(), shape, self.quant_block_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_features) -> (..., out_features), in x's dtype."""
        weight = self.dequantize().to(x.dtype)  # (out_features, in_features)
        bias = None if self.bias is None else self.bias.to(x.dtype)  # (out_features,)
        return F.linear(x, weight, bias)  # (..., out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, quant_block_size={self.quant_block_size}, "
                f"double_quant={self.double_quant}")
