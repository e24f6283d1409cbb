"""Values as floats: ``fp32`` and ``fp16``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedq.comm.codecs.base import CODECS, Stratum, UpdateCodec
from fedq.comm.codecs.blocks import as_update, check_fp16_range, check_payload, finite, largest


@CODECS.add
@dataclass(frozen=True)
class Fp32Codec(UpdateCodec):
    name: ClassVar[str] = "fp32"
    whole_values: ClassVar[bool] = True

    @property
    def bits_per_value(self) -> float:
        return 32.0

    def encode(self, vector: np.ndarray, rng: np.random.Generator, stratum: Stratum | None = None) -> list[np.ndarray]:
        return [as_update(vector).copy()]

    def decode(self, arrays: Sequence[np.ndarray], numel: int) -> np.ndarray:
        (values,) = check_payload(self.name, arrays, [("values", np.float32, numel)])
        return finite(self.name, values.copy())


@CODECS.add
@dataclass(frozen=True)
class Fp16Codec(UpdateCodec):
    name: ClassVar[str] = "fp16"
    whole_values: ClassVar[bool] = True

    @property
    def bits_per_value(self) -> float:
        return 16.0

    def encode(self, vector: np.ndarray, rng: np.random.Generator, stratum: Stratum | None = None) -> list[np.ndarray]:
        x = as_update(vector)
        check_fp16_range(largest(np.abs(x)))
        return [x.astype(np.float16)]

    def decode(self, arrays: Sequence[np.ndarray], numel: int) -> np.ndarray:
        (values,) = check_payload(self.name, arrays, [("values", np.float16, numel)])
        return finite(self.name, values.astype(np.float32))
