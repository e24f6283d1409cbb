"""Values as floats: ``fp32`` and ``fp16``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedq.comm.codecs.base import CODECS, Stratum, UpdateCodec
from fedq.comm.codecs.blocks import as_update, check_fp16_range, check_payload, finite, largest


class FloatCodec(UpdateCodec):
    """Every value as a float of ``dtype``: the payload is ``[values]``."""

    dtype: ClassVar[type[np.floating]]
    whole_values: ClassVar[bool] = True

    @property
    def bits_per_value(self) -> float:
        return 8.0 * np.dtype(self.dtype).itemsize

    def encode(self, vector: np.ndarray, rng: np.random.Generator, stratum: Stratum | None = None) -> list[np.ndarray]:
        x = as_update(vector)
        if self.dtype is np.float16:  # float32 holds every finite update as_update lets through
            check_fp16_range(largest(np.abs(x)))
        return [x.astype(self.dtype)]  # a copy, also at float32

    def decode(self, arrays: Sequence[np.ndarray], numel: int) -> np.ndarray:
        (values,) = check_payload(self.name, arrays, [("values", self.dtype, numel)])
        return finite(self.name, values.astype(np.float32))  # a copy, also from float32


@CODECS.add
@dataclass(frozen=True)
class Fp32Codec(FloatCodec):
    name: ClassVar[str] = "fp32"
    dtype = np.float32


@CODECS.add
@dataclass(frozen=True)
class Fp16Codec(FloatCodec):
    name: ClassVar[str] = "fp16"
    dtype = np.float16
