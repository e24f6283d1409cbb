"""Packing unsigned integers of any width 0..32 into a uint8 array, exactly ``width`` bits each.

Layout of ``pack_bits(values, width)`` for ``n`` values: first ``width // 8`` whole
byte planes (least significant byte first; each plane is ``n`` bytes), then the top
``width % 8`` bits of every value as one LSB-first bit stream: value ``i`` occupies
bits ``[r*i, r*i + r)`` of the stream, bit ``j`` of the stream being bit ``j % 8``
(least significant first) of byte ``j // 8``; the last byte is zero-padded.
"""

from __future__ import annotations

import numpy as np


def packed_nbytes(count: int, width: int) -> int:
    """Bytes that ``pack_bits`` produces for ``count`` values of ``width`` bits."""
    whole, rest = divmod(width, 8)
    return count * whole + (count * rest + 7) // 8


def pack_bits(values: np.ndarray, width: int) -> np.ndarray:
    """Pack unsigned integers ``< 2**width`` into ``packed_nbytes(len(values), width)`` bytes."""
    if not 0 <= width <= 32:
        raise ValueError(f"bit width must be in 0..32, got {width}")
    v = np.asarray(values).ravel().astype(np.uint32 if width > 8 else np.uint8, copy=False)
    whole, rest = divmod(width, 8)
    parts = [np.right_shift(v, 8 * i).astype(np.uint8) for i in range(whole)]
    if rest:
        parts.append(_pack_narrow(np.right_shift(v, 8 * whole).astype(np.uint8, copy=False), rest))
    return np.concatenate(parts) if parts else np.zeros(0, np.uint8)


def unpack_bits(data: np.ndarray, width: int, count: int) -> np.ndarray:
    """Inverse of ``pack_bits``: uint8 values for width <= 8, uint32 otherwise."""
    if len(data) != packed_nbytes(count, width):
        raise ValueError(f"{len(data)} bytes cannot hold exactly {count} values of {width} bits")
    whole, rest = divmod(width, 8)
    if width == 8:
        return data.copy()
    if width < 8:
        return _unpack_narrow(data, rest, count) if rest else np.zeros(count, np.uint8)
    out = np.zeros(count, np.uint32)
    for i in range(whole):
        out |= data[i * count : (i + 1) * count].astype(np.uint32) << (8 * i)
    if rest:
        high = _unpack_narrow(data[whole * count :], rest, count)
        out |= high.astype(np.uint32) << (8 * whole)
    return out


def _pack_narrow(v: np.ndarray, width: int) -> np.ndarray:
    """LSB-first stream of ``width`` (1..7) bits per uint8 value: 8 values -> ``width`` bytes."""
    if width == 1:
        return np.packbits(v.astype(bool), bitorder="little")
    n = v.size
    if 8 % width == 0:  # 2 and 4 bits: whole values per byte, packed in uint8 (8x less memory than the words below)
        per = 8 // width
        flat = np.zeros(-(-n // per) * per, np.uint8)
        flat[:n] = v
        values = flat.reshape(-1, per)
        packed = values[:, 0].copy()
        for i in range(1, per):
            packed |= values[:, i] << np.uint8(width * i)
        return packed
    groups = -(-n // 8)
    padded = np.zeros(groups * 8, np.uint64)
    padded[:n] = v
    lanes = padded.reshape(groups, 8)
    words = np.zeros(groups, np.uint64)
    for i in range(8):
        words |= lanes[:, i] << np.uint64(width * i)
    packed = words.astype("<u8").view(np.uint8).reshape(groups, 8)[:, :width]
    return packed.ravel()[: (n * width + 7) // 8]


def _unpack_narrow(data: np.ndarray, width: int, count: int) -> np.ndarray:
    if width == 1:
        return np.unpackbits(data, count=count, bitorder="little")
    if 8 % width == 0:
        per, mask8 = 8 // width, np.uint8((1 << width) - 1)
        values = np.empty((data.size, per), np.uint8)
        for i in range(per):
            values[:, i] = (data >> np.uint8(width * i)) & mask8
        return values.ravel()[:count]
    groups = -(-count // 8)
    stream = np.zeros(groups * width, np.uint8)
    stream[: data.size] = data
    words8 = np.zeros((groups, 8), np.uint8)
    words8[:, :width] = stream.reshape(groups, width)
    words = words8.view("<u8").ravel()
    mask = np.uint64((1 << width) - 1)
    out = np.empty((groups, 8), np.uint8)
    for i in range(8):
        out[:, i] = (words >> np.uint64(width * i)) & mask
    return out.ravel()[:count]
