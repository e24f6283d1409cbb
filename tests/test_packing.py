"""Bit packing of signed quantization codes."""

from __future__ import annotations

import numpy as np
import pytest

from fedq.quant import codes_nbytes, pack_codes, unpack_codes


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [0, 1, 7, 13, 1001])
def test_round_trip_is_bit_exact(bits: int, count: int) -> None:
    rng = np.random.default_rng(bits * 1000 + count)
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    codes = rng.integers(low, high + 1, size=count).astype(np.int8)
    if count >= 2:
        codes[:2] = [low, high]  # both extremes survive
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.uint8
    assert packed.size == codes_nbytes(count, bits) == -(-count * bits // 8)
    out = unpack_codes(packed, bits, count)
    assert out.dtype == np.int8 and np.array_equal(out, codes)


def test_layout_is_offset_binary_lsb_first() -> None:
    # 2-bit codes -2,-1,0,1 -> unsigned 0,1,2,3, least significant bits first
    assert pack_codes(np.array([-2, -1, 0, 1]), 2).tolist() == [0b11100100]
    # 3-bit codes 3,-4,0 -> 7,0,4 -> bits 111 000 001(00) from the low end
    assert pack_codes(np.array([3, -4, 0]), 3).tolist() == [0b00000111, 0b00000001]


def test_multidimensional_codes_are_flattened() -> None:
    codes = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
    assert np.array_equal(unpack_codes(pack_codes(codes, 4), 4, 16).reshape(4, 4), codes)


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match=r"outside \[-2, 1\]"):
        pack_codes(np.array([0, 2]), 2)
    with pytest.raises(ValueError, match="not in 1..8"):
        pack_codes(np.array([0]), 9)
    with pytest.raises(ValueError, match="fewer than 9 codes"):
        unpack_codes(np.zeros(1, np.uint8), 1, 9)
