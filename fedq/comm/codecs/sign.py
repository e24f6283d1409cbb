"""One bit a value: ``sign``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedq.bitpack import pack_bits, packed_nbytes, unpack_bits
from fedq.comm.codecs.base import CODECS, Stratum, UpdateCodec
from fedq.comm.codecs.blocks import (
    as_blocks,
    as_update,
    check_block_size,
    check_fp16_range,
    check_payload,
    check_scales,
    finite,
    largest,
    num_blocks,
)


@CODECS.add
@dataclass(frozen=True)
class SignCodec(UpdateCodec):
    """1 bit per value (1 = negative, zero counts as positive) times the block's mean |x|.

    Payload: ``[sign bits (uint8, packed), scales (float16, one per block)]``.
    """

    block_size: int = 1024
    name: ClassVar[str] = "sign"
    biased: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_block_size(self.name, self.block_size)

    @property
    def bits_per_value(self) -> float:
        return 1.0

    def encode(self, vector: np.ndarray, rng: np.random.Generator, stratum: Stratum | None = None) -> list[np.ndarray]:
        x = as_update(vector)
        abs_blocks = as_blocks(np.abs(x), self.block_size)
        counts = np.full(len(abs_blocks), self.block_size, np.float32)
        if len(counts):
            counts[-1] = x.size - (len(counts) - 1) * self.block_size
        means = abs_blocks.sum(axis=1, dtype=np.float32) / counts
        check_fp16_range(largest(means))
        return [pack_bits(x < 0, 1), means.astype(np.float16)]

    def decode(self, arrays: Sequence[np.ndarray], numel: int) -> np.ndarray:
        packed, scales = check_payload(
            self.name,
            arrays,
            [
                ("signs", np.uint8, packed_nbytes(numel, 1)),
                ("scales", np.float16, num_blocks(numel, self.block_size)),
            ],
        )
        check_scales(self.name, scales)
        signs = 1.0 - 2.0 * as_blocks(unpack_bits(packed, 1, numel).astype(np.float32), self.block_size)
        values = (signs * scales.astype(np.float32)[:, None]).ravel()[:numel]
        return finite(self.name, values)
