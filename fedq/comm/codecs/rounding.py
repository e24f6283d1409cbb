"""Unbiased stochastic rounding of every value: ``uniform`` (levels across the block's range) and ``grid``
(a step of the block's RMS, entropy-coded)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedq.comm.codecs.base import CODECS, Stratum, UpdateCodec
from fedq.comm.codecs.blocks import (
    as_blocks,
    as_update,
    block_counts,
    check_bits,
    check_block_size,
    check_fp16_range,
    check_payload,
    check_scales,
    code_arrays,
    code_spec,
    dequantize,
    finite,
    fp16_ceil,
    largest,
    num_blocks,
    quantize,
    read_codes,
)
from fedq.comm.entropy import ans_decode, ans_encode
from fedq.comm.errors import CodecError


class DitheredRounding(UpdateCodec):
    """A codec that rounds every value up or down with a uniform dither: its own (from ``rng``), stratified across
    the round's clients (a :class:`Stratum`), or given (``encode_dithered``: the mask codec's sent values)."""

    def encode(self, vector: np.ndarray, rng: np.random.Generator, stratum: Stratum | None = None) -> list[np.ndarray]:
        x = as_update(vector)
        return self._encode(x, stratum.dither(rng, x.size) if stratum else None, rng)

    def encode_dithered(self, vector: np.ndarray, dither: np.ndarray) -> list[np.ndarray]:
        """:meth:`encode` with the given uniform dither, one per value."""
        return self._encode(as_update(vector), dither, None)

    @abstractmethod
    def _encode(self, x: np.ndarray, dither: np.ndarray | None, rng: np.random.Generator | None) -> list[np.ndarray]:
        """The payload of ``x`` rounded with ``dither`` (None: drawn from ``rng``)."""


@CODECS.add
@dataclass(frozen=True)
class UniformCodec(DitheredRounding):
    """Unbiased stochastic rounding to 2**bits levels spread over [-s, s] per block.

    ``s`` is the block's max |x| rounded up to float16, so the scale the decoder uses
    is exactly the one the encoder used and every value lies inside the level range.
    Payload: ``[codes (uint8, bits-packed), scales (float16, one per block)]``; with
    ``entropy_coding`` the codes are ANS-coded instead of packed (``fedq.comm.entropy``:
    ``[header, counts, words, scales]``), the same values in fewer bytes.
    """

    bits: int = 8
    block_size: int = 1024
    entropy_coding: bool = False
    name: ClassVar[str] = "uniform"
    stochastic: ClassVar[bool] = True
    shares_a_grid: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_bits(self.name, self.bits)
        check_block_size(self.name, self.block_size)

    @property
    def bits_per_value(self) -> float:
        return float(self.bits)

    def _encode(self, x: np.ndarray, dither: np.ndarray | None, rng: np.random.Generator | None) -> list[np.ndarray]:
        codes, scales = quantize(x, self.bits, self.block_size, rng, dither)
        return [*code_arrays(codes, self.bits, self.entropy_coding), scales]

    def decode(self, arrays: Sequence[np.ndarray], numel: int) -> np.ndarray:
        *coded, scales = check_payload(self.name, arrays, [
            *code_spec(self.bits, numel, self.entropy_coding), ("scales", np.float16, num_blocks(numel, self.block_size))])
        check_scales(self.name, scales)
        codes = read_codes(self.name, coded, numel, self.bits, self.entropy_coding)
        return finite(self.name, dequantize(codes, scales, self.bits, self.block_size))



@CODECS.add
@dataclass(frozen=True)
class GridCodec(DitheredRounding):
    """Unbiased stochastic rounding onto a grid of ``step`` x the block's root mean square, entropy-coded.

    Unlike ``uniform``, whose levels span the block's largest value and have no zero,
    the grid has a zero level and a step set by the block's typical value: most of an
    update rounds to 0 or one step, so the codes (ANS-coded, ``fedq.comm.entropy``) cost
    far less than a bit each, and no value is ever clipped (the codes are unbounded).
    Each value's error is below one step; ``step`` trades bytes for noise.
    Payload: ``[header int32, counts uint32, words uint32, scales (float16 step per block)]``.
    """

    step: float = 4.0
    block_size: int = 1024
    name: ClassVar[str] = "grid"
    stochastic: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 0.0 < self.step <= 1000.0:
            raise CodecError(f"codec {self.name}: step must be in (0, 1000] (block RMS units), got {self.step}")
        check_block_size(self.name, self.block_size)

    @property
    def bits_per_value(self) -> float:
        return 1.0  # nominal: the coded size depends on the update (payload_bytes is the real count)

    def _encode(self, x: np.ndarray, dither: np.ndarray | None, rng: np.random.Generator | None) -> list[np.ndarray]:
        blocks = as_blocks(x, self.block_size)
        rms = np.sqrt(np.square(blocks, dtype=np.float64).sum(axis=1) / np.maximum(block_counts(x.size, self.block_size), 1))
        check_fp16_range(largest(self.step * rms))
        steps = fp16_ceil((self.step * rms).astype(np.float32))
        safe = np.where(steps > 0, steps.astype(np.float32), np.float32(1.0))
        noise = as_blocks(dither, self.block_size) if dither is not None else rng.random(blocks.shape, dtype=np.float32)  # type: ignore[union-attr]
        codes = np.floor(blocks / safe[:, None] + noise).astype(np.int64).ravel()[: x.size]
        return [*ans_encode(codes), steps]

    def decode(self, arrays: Sequence[np.ndarray], numel: int) -> np.ndarray:
        header, counts, words, steps = check_payload(self.name, arrays, [
            ("header", np.int32, 2), ("counts", np.uint32, None), ("words", np.uint32, None),
            ("steps", np.float16, num_blocks(numel, self.block_size))])
        check_scales(self.name, steps)
        codes = ans_decode(header, counts, words, numel, self.name).astype(np.float32)
        return finite(self.name, (as_blocks(codes, self.block_size) * steps.astype(np.float32)[:, None]).ravel()[:numel])
