"""Pack signed b-bit integer codes into bytes at exactly b bits each, and back.

A code c in [-2^(b-1), 2^(b-1)-1] is stored as the unsigned c + 2^(b-1), most
significant bit first, codes back to back across byte boundaries; the last byte
is zero-padded. Vectorized with numpy's bit (un)packing.
"""

from __future__ import annotations

import numpy as np


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits occupy: ceil(count·bits / 8)."""
    return (count * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"bit width {bits} is not in 1..8")


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Signed codes (any shape, flattened) -> uint8 array of packed_nbytes(codes.size, bits)."""
    _check_bits(bits)
    flat = np.asarray(codes).reshape(-1).astype(np.int16)
    offset = 1 << (bits - 1)
    if flat.size and (flat.min() < -offset or flat.max() >= offset):
        raise ValueError(f"codes outside [{-offset}, {offset - 1}] cannot be packed at {bits} bits")
    unsigned = (flat + offset).astype(np.uint8)
    bit_matrix = np.unpackbits(unsigned[:, None], axis=1)[:, 8 - bits :]
    return np.packbits(bit_matrix.reshape(-1))


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of pack_bits: the first ``count`` codes as int8."""
    _check_bits(bits)
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if packed.size < packed_nbytes(count, bits):
        raise ValueError(f"{packed.size} bytes hold fewer than {count} codes of {bits} bits")
    bit_matrix = np.unpackbits(packed)[: count * bits].reshape(count, bits)
    unsigned = np.packbits(bit_matrix, axis=1)[:, 0] >> (8 - bits)
    return (unsigned.astype(np.int16) - (1 << (bits - 1))).astype(np.int8)
