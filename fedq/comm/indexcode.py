"""Rice coding of strictly increasing indices (the positions that top-k keeps).

Indices become gaps ``g_i = idx_i - idx_{i-1} - 1`` (with ``idx_{-1} = -1``). Each gap
is split into a quotient ``g >> r``, sent in unary (that many 1 bits then a 0 bit,
LSB-first, the last byte padded with 1 bits), and an ``r``-bit remainder, sent with
``pack_bits``. Keeping the two streams apart makes decoding vectorized: the i-th
0 bit of the unary stream ends the i-th quotient. Since the gaps sum to less than
``numel``, the unary stream has at most ``k + numel / 2**r`` bits whatever the
pattern of indices, so clustered top-k positions cannot blow up the message.
"""

from __future__ import annotations

import numpy as np

from fedq.bitpack import pack_bits, packed_nbytes, unpack_bits
from fedq.comm.errors import CodecError

MAX_RICE_BITS = 31


def encode_sorted_indices(indices: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Return ``(r, unary_bytes, remainder_bytes)`` for strictly increasing ``indices``."""
    gaps = np.diff(np.asarray(indices, np.int64), prepend=-1) - 1
    r = _rice_parameter(gaps)
    quotients = np.right_shift(gaps, r)
    stops = np.cumsum(quotients + 1) - 1
    nbits = int(stops[-1]) + 1 if stops.size else 0
    bits = np.ones(-(-nbits // 8) * 8, bool)
    bits[stops] = False
    unary = np.packbits(bits, bitorder="little")
    remainders = pack_bits(np.bitwise_and(gaps, (1 << r) - 1), r)
    return r, unary, remainders


def decode_sorted_indices(
    r: int, unary: np.ndarray, remainders: np.ndarray, count: int, numel: int
) -> np.ndarray:
    """Inverse of ``encode_sorted_indices``; rejects streams that do not hold ``count``
    strictly increasing indices below ``numel``."""
    if not 0 <= r <= MAX_RICE_BITS:
        raise CodecError(f"topk payload: Rice parameter {r} outside 0..{MAX_RICE_BITS}")
    if len(remainders) != packed_nbytes(count, r):
        raise CodecError(
            f"topk payload: remainder stream has {len(remainders)} bytes, "
            f"expected {packed_nbytes(count, r)} for {count} indices of {r} bits"
        )
    stops = np.flatnonzero(np.unpackbits(unary, bitorder="little") == 0)
    if stops.size != count:
        raise CodecError(f"topk payload: unary stream ends {stops.size} gaps, expected {count}")
    expected_len = -(-(int(stops[-1]) + 1) // 8) if count else 0
    if len(unary) != expected_len:
        raise CodecError(f"topk payload: unary stream has {len(unary)} bytes, expected {expected_len}")
    quotients = np.diff(stops, prepend=-1) - 1
    if count and int(quotients.max()) > (numel >> r):
        raise CodecError(f"topk payload: an index gap exceeds the vector length {numel}")
    gaps = (quotients << r) | unpack_bits(remainders, r, count).astype(np.int64)
    indices = np.cumsum(gaps + 1) - 1
    if count and int(indices[-1]) >= numel:
        raise CodecError(f"topk payload: index {int(indices[-1])} out of range for {numel} values")
    return indices


def _rice_parameter(gaps: np.ndarray) -> int:
    """The remainder width that minimizes the coded size, searched near log2(mean gap)."""
    if gaps.size == 0:
        return 0
    centre = int(np.log2(float(gaps.mean()) + 1.0))
    candidates = range(max(0, centre - 2), min(MAX_RICE_BITS, centre + 2) + 1)
    return min(candidates, key=lambda r: int((gaps >> r).sum()) + gaps.size * r)
