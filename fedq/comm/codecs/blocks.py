"""What the codecs share: checks of their settings and payloads, and values in blocks with a float16 scale each."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedq.bitpack import pack_bits, packed_nbytes, unpack_bits
from fedq.comm.entropy import ans_decode, ans_encode
from fedq.comm.errors import CodecError

QUANT_BITS = range(2, 9)
FP16_MAX = float(np.finfo(np.float16).max)


def check_bits(name: str, bits: int) -> None:
    if bits not in QUANT_BITS:
        raise CodecError(f"codec {name}: bits must be one of 2..8 (1 bit: use codec sign), got {bits}")


def check_density(name: str, density: float) -> None:
    if not 0.0 < density <= 1.0:
        raise CodecError(f"codec {name}: density must be in (0, 1], got {density}")


def check_block_size(name: str, block_size: int) -> None:
    if block_size < 1:
        raise CodecError(f"codec {name}: block_size must be >= 1, got {block_size}")


def as_update(vector: np.ndarray) -> np.ndarray:
    x = np.asarray(vector)
    if x.ndim != 1 or x.dtype.kind != "f":
        raise CodecError(f"codecs encode a 1-D float vector, got shape {x.shape} dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise CodecError("update contains NaN or Inf; refusing to encode it")
    return x


def largest(values: np.ndarray) -> float:
    return float(values.max()) if values.size else 0.0


def check_fp16_range(max_abs: float) -> None:
    if max_abs > FP16_MAX:
        raise CodecError(f"update magnitude {max_abs:.3g} exceeds the float16 range ({FP16_MAX:g})")


def num_blocks(numel: int, block_size: int) -> int:
    return -(-numel // block_size)


def as_blocks(x: np.ndarray, block_size: int) -> np.ndarray:
    """View ``x`` as (blocks, block_size), zero-padding the last block."""
    n_blocks = num_blocks(x.size, block_size)
    if x.size != n_blocks * block_size:
        x = np.concatenate([x, np.zeros(n_blocks * block_size - x.size, x.dtype)])
    return x.reshape(n_blocks, block_size)


def fp16_ceil(values: np.ndarray) -> np.ndarray:
    """Round non-negative float32 values up to the nearest float16."""
    rounded = values.astype(np.float16)
    low = rounded.astype(np.float32) < values
    rounded[low] = np.nextafter(rounded[low], np.float16(np.inf))
    return rounded


def block_counts(numel: int, block_size: int) -> np.ndarray:
    """How many real (unpadded) values each block holds."""
    counts = np.full(num_blocks(numel, block_size), block_size, np.int64)
    if counts.size:
        counts[-1] = numel - (counts.size - 1) * block_size
    return counts


def quantize(
    x: np.ndarray, bits: int, block_size: int, rng: np.random.Generator | None, dither: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic rounding of each block to codes 0..2**bits-1 for levels -s + code * 2s/(2**bits-1)
    (the given dither, or one drawn from ``rng``)."""
    blocks = as_blocks(x, block_size)
    max_abs = np.abs(blocks).max(axis=1) if blocks.size else np.zeros(0, np.float32)
    check_fp16_range(largest(max_abs))
    scales = fp16_ceil(max_abs)
    half = np.float32((2**bits - 1) / 2)
    safe = np.where(scales > 0, scales.astype(np.float32), np.float32(1.0))
    position = blocks * (half / safe)[:, None] + half  # in [0, 2**bits - 1]
    if dither is not None:
        position += as_blocks(dither.astype(np.float32), block_size)
    else:
        position += rng.random(position.shape, dtype=np.float32)  # type: ignore[union-attr]
    codes = np.clip(np.floor(position), 0, 2**bits - 1).astype(np.uint8)
    return codes.ravel()[: x.size], scales


def code_arrays(codes: np.ndarray, bits: int, entropy_coding: bool) -> list[np.ndarray]:
    """The wire arrays of quantized codes: packed ``bits`` each, or ANS-coded (``[header, counts, words]``)."""
    return ans_encode(codes) if entropy_coding else [pack_bits(codes, bits)]


def code_spec(bits: int, count: int | None, entropy_coding: bool) -> list[tuple[str, type, int | None]]:
    """The payload spec (see :func:`check_payload`) of :func:`code_arrays`' arrays for ``count`` codes (None: any)."""
    if entropy_coding:
        return [("header", np.int32, 2), ("counts", np.uint32, None), ("words", np.uint32, None)]
    return [("codes", np.uint8, None if count is None else packed_nbytes(count, bits))]


def read_codes(codec: str, arrays: Sequence[np.ndarray], count: int, bits: int, entropy_coding: bool) -> np.ndarray:
    """The ``count`` codes of :func:`code_arrays`' (checked) arrays."""
    if not entropy_coding:
        return unpack_bits(arrays[0], bits, count)
    codes = ans_decode(arrays[0], arrays[1], arrays[2], count, codec)
    if codes.size and (codes.min() < 0 or codes.max() >= 2**bits):
        raise CodecError(f"{codec} payload: a code outside 0..{2**bits - 1}")
    return codes


def dequantize(codes: np.ndarray, scales: np.ndarray, bits: int, block_size: int) -> np.ndarray:
    s = scales.astype(np.float32)[:, None]
    step = s / np.float32((2**bits - 1) / 2)
    return (as_blocks(codes.astype(np.float32), block_size) * step - s).ravel()[: codes.size]


def check_payload(
    codec: str, arrays: Sequence[np.ndarray], spec: list[tuple[str, type, int | None]]
) -> list[np.ndarray]:
    """Check the number of arrays, and each array's dtype, 1-D shape and length (None = any)."""
    if len(arrays) != len(spec):
        raise CodecError(f"{codec} payload has {len(arrays)} arrays, expected {len(spec)}")
    checked = []
    for array, (label, dtype, length) in zip(arrays, spec):
        array = np.asarray(array)
        if array.dtype != dtype or array.ndim != 1:
            raise CodecError(
                f"{codec} payload: {label} is {array.dtype} with shape {array.shape}, "
                f"expected 1-D {np.dtype(dtype)}"
            )
        if length is not None:
            check_length(codec, label, array, length)
        checked.append(array)
    return checked


def check_length(codec: str, label: str, array: np.ndarray, length: int) -> None:
    if array.size != length:
        raise CodecError(f"{codec} payload: {label} has {array.size} entries, expected {length}")


def check_scales(codec: str, scales: np.ndarray) -> None:
    if not (np.isfinite(scales).all() and (scales >= 0).all()):
        raise CodecError(f"{codec} payload: scales must be finite and non-negative")


def finite(codec: str, values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise CodecError(f"{codec} payload decodes to NaN or Inf")
    return values
