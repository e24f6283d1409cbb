"""Signed b-bit weight codes packed at exactly b bits each (the deployed file's layout).

A code c in [-2^(b-1), 2^(b-1)-1] is stored as the unsigned c + 2^(b-1)
("offset binary") with ``fedq.bitpack.pack_bits``, the unsigned packer the
update codecs use; ``pack_codes`` / ``unpack_codes`` / ``codes_nbytes`` are
its signed counterparts.
"""

from __future__ import annotations

import numpy as np

from fedq import bitpack


def codes_nbytes(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits occupy: ceil(count·bits / 8)."""
    _check_bits(bits)
    return bitpack.packed_nbytes(count, bits)


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"bit width {bits} is not in 1..8")


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Signed codes (any shape, flattened) -> uint8 array of codes_nbytes(codes.size, bits)."""
    _check_bits(bits)
    flat = np.asarray(codes).reshape(-1).astype(np.int16)
    offset = 1 << (bits - 1)
    if flat.size and (flat.min() < -offset or flat.max() >= offset):
        raise ValueError(f"codes outside [{-offset}, {offset - 1}] cannot be packed at {bits} bits")
    return bitpack.pack_bits((flat + offset).astype(np.uint8), bits)


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of pack_codes: the first ``count`` codes as int8."""
    _check_bits(bits)
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    needed = codes_nbytes(count, bits)
    if packed.size < needed:
        raise ValueError(f"{packed.size} bytes hold fewer than {count} codes of {bits} bits")
    unsigned = bitpack.unpack_bits(packed[:needed], bits, count)
    return (unsigned.astype(np.int16) - (1 << (bits - 1))).astype(np.int8)
