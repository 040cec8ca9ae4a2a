"""greenlm's integer codes packed into GGUF's block formats, byte for byte, with no re-rounding.

Every format holds 32 consecutive weights of a row (along the input dimension) per block, little-endian:

| format | bytes | layout                                  | weight                    |
|--------|------:|-----------------------------------------|---------------------------|
| Q4_0   |    18 | fp16 d, 16 bytes of nibbles             | d * (q - 8),  q in 0..15  |
| Q4_1   |    20 | fp16 d, fp16 m, 16 bytes of nibbles     | d * q + m,    q in 0..15  |
| Q5_0   |    22 | fp16 d, uint32 high bits, 16 nibbles    | d * (q - 16), q in 0..31  |
| Q5_1   |    24 | fp16 d, fp16 m, uint32 high bits, nibbles | d * q + m,  q in 0..31  |
| Q8_0   |    34 | fp16 d, 32 int8                         | d * q,        q in -127..127 |

Nibble byte j of a block holds weight j in its low half and weight j + 16 in its high half; bit j of the
uint32 is the fifth bit of weight j. A greenlm grid (`kernels.quant_grid`: w = scale * q - scale * zero) is one of
these when its group size is 32, its scales are fp16 numbers, and its zero is 8 / 16 / 128 or its minimum
scale * zero is an fp16 number (`QuantizedWeight.gguf_mismatch` says which is missing). gguf-py's
`quants.dequantize` reads the blocks back; the tests check the round trip is exact.
"""

from __future__ import annotations

import gguf
import numpy as np

from greenlm.kernels.quant_grid import GGUF_BLOCK, GGUF_GRIDS, GgufGrid, QuantizedWeight

QTYPES = {name: gguf.GGMLQuantizationType[name.upper()] for name in GGUF_GRIDS}


class CodesMismatch(ValueError):
    """The codes are not on the format's grid: writing them would need re-rounding."""


def _fp16_bytes(values: np.ndarray) -> np.ndarray:
    """float32 [rows, blocks] that are fp16 numbers -> uint8 [rows, blocks, 2], little-endian."""
    half = values.astype("<f2")
    return half.view(np.uint8).reshape(*values.shape, 2)


def _nibbles(codes: np.ndarray) -> np.ndarray:
    """uint8 [rows, blocks, 32] codes -> [rows, blocks, 16]: low nibbles of j and j + 16."""
    low = codes & 0x0F
    return low[..., :16] | (low[..., 16:] << 4)


def _high_bits(codes: np.ndarray) -> np.ndarray:
    """uint8 [rows, blocks, 32] 5-bit codes -> [rows, blocks, 4]: bit j of a little-endian uint32 = bit 4 of j."""
    return np.packbits((codes >> 4) & 1, axis=-1, bitorder="little")


def pack_blocks(weight: QuantizedWeight, grid: GgufGrid) -> np.ndarray:
    """`weight`'s codes as `grid`'s GGUF blocks: uint8 [out, in / 32 * block bytes], rows in weight order.
    Raises CodesMismatch when the codes are not exactly on the format's grid."""
    reason = weight.gguf_mismatch(grid)
    if reason:
        raise CodesMismatch(f"cannot write these codes as {grid.name}: {reason}")
    rows, cols = weight.shape
    blocks = cols // GGUF_BLOCK
    codes = weight.q.numpy().astype(np.uint8).reshape(rows, blocks, GGUF_BLOCK)
    scale = weight.scale.float().numpy()
    parts = [_fp16_bytes(scale)]
    if not grid.symmetric:
        parts.append(_fp16_bytes(-(scale * weight.zero.float().numpy())))  # m = -d * zero, exactly fp16
    if grid.name == "q8_0":
        parts.append((codes.astype(np.int16) - 128).astype(np.int8).view(np.uint8))
    else:
        if grid.bits == 5:
            parts.append(_high_bits(codes))
        parts.append(_nibbles(codes))
    return np.concatenate(parts, axis=-1).reshape(rows, -1)


def dequantize_blocks(data: np.ndarray, qtype) -> np.ndarray:
    """float32 [rows, in] of GGUF blocks `data` [rows, bytes] of type `qtype` (gguf-py's reader)."""
    return gguf.quants.dequantize(data, qtype).astype(np.float32)


def bits_per_weight(qtype) -> float:
    """Storage bits per weight of a GGUF type, scales included (e.g. Q4_0 4.5, Q8_0 8.5, F16 16)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return 8.0 * size / block
