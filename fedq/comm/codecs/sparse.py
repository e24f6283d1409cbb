"""Part of the values: ``topk`` (the largest, with their indices) and ``mask`` (a seeded random part)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedq.bitpack import pack_bits, packed_nbytes, unpack_bits
from fedq.comm.codecs.base import CODECS, DITHER, MASK, ServerUpdate, Stratum, UpdateCodec
from fedq.comm.codecs.blocks import (
    as_update,
    check_bits,
    check_block_size,
    check_density,
    check_length,
    check_payload,
    check_scales,
    dequantize,
    finite,
    num_blocks,
    quantize,
)
from fedq.comm.codecs.rounding import GridCodec, UniformCodec
from fedq.comm.errors import CodecError
from fedq.comm.indexcode import decode_sorted_indices, encode_sorted_indices


@CODECS.add
@dataclass(frozen=True)
class TopKCodec(UpdateCodec):
    """Keep the ``ceil(density * n)`` largest-magnitude entries.

    Indices are Rice-coded gaps (``fedq.comm.indexcode``); values are quantized with
    the unbiased uniform quantizer, blocks taken over the kept values in index order.
    Payload: ``[header uint32 [k, rice_bits], unary gap quotients (uint8),
    gap remainders (uint8), value codes (uint8), value scales (float16)]``.
    """

    density: float = 0.01
    bits: int = 4
    block_size: int = 1024
    name: ClassVar[str] = "topk"
    stochastic: ClassVar[bool] = True
    biased: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_density(self.name, self.density)
        check_bits(self.name, self.bits)
        check_block_size(self.name, self.block_size)

    @property
    def bits_per_value(self) -> float:
        return self.density * self.bits

    def num_kept(self, numel: int) -> int:
        return math.ceil(self.density * numel)

    def encode(self, vector: np.ndarray, rng: np.random.Generator, stratum: Stratum | None = None) -> list[np.ndarray]:
        x = as_update(vector)
        dither = stratum.dither(rng, x.size) if stratum else None
        k = self.num_kept(x.size)
        kept = np.sort(np.argpartition(np.abs(x), x.size - k)[x.size - k :]) if k else np.zeros(0, np.intp)
        rice_bits, unary, remainders = encode_sorted_indices(kept)
        codes, scales = quantize(x[kept], self.bits, self.block_size, rng, dither[kept] if dither is not None else None)
        header = np.array([k, rice_bits], np.uint32)
        return [header, unary, remainders, pack_bits(codes, self.bits), scales]

    def decode(self, arrays: Sequence[np.ndarray], numel: int) -> np.ndarray:
        header, unary, remainders, packed, scales = check_payload(
            self.name,
            arrays,
            [
                ("header", np.uint32, 2),
                ("index quotients", np.uint8, None),
                ("index remainders", np.uint8, None),
                ("value codes", np.uint8, None),
                ("value scales", np.float16, None),
            ],
        )
        k, rice_bits = int(header[0]), int(header[1])
        expected_k = self.num_kept(numel)
        if k != expected_k:
            raise CodecError(f"topk payload: k={k}, expected {expected_k} ({self.density:g} of {numel} values)")
        check_length(self.name, "value codes", packed, packed_nbytes(k, self.bits))
        check_length(self.name, "value scales", scales, num_blocks(k, self.block_size))
        check_scales(self.name, scales)
        kept = decode_sorted_indices(rice_bits, unary, remainders, k, numel)
        values = dequantize(unpack_bits(packed, self.bits, k), scales, self.bits, self.block_size)
        out = np.zeros(numel, np.float32)
        out[kept] = values
        return finite(self.name, out)



@CODECS.add
@dataclass(frozen=True)
class MaskCodec(UpdateCodec):
    """A random ``density`` of the values, coded like ``uniform`` (``bits``) or like ``grid`` (``step``); the server
    fills in the rest.

    The client draws its mask from a seed it sends (a 40-byte header: no index is sent),
    so the codec keeps no state and a client that never took part sends a valid update.
    With a :class:`Stratum` (``comm.uplink.correlated``) the round's clients draw their
    masks from the round's shared uniforms, each from its own slot, so that every value
    is sent by about ``density x slots`` of them (at least one when that is >= 1) instead
    of by none with probability (1 - density) ** slots.
    :meth:`decode_update` is the server's reading of one payload: the sent values, and
    ``reference`` (the server's last step) elsewhere. A round then fills each update's
    unsent values with the mean of what the round's other clients sent there
    (``fedq.fl.partial.fill_from_senders``), so that the round's average of a value is the
    average of the clients that sent it (not divided by those that did not), and a
    value that no client sent moves by ``carry`` x what it moved last round (1: as it
    moved, the shared reference CAFe, Ortega et al. 2025, has its clients compress
    against, here held by the server so the client needs none; 0: it stays).
    Payload: ``[header uint64 [seed, round, count, slot, slots], *the sent values' payload]``
    (``uniform``'s: codes, packed or ANS-coded, and a float16 scale per block; or ``grid``'s).
    """

    density: float = 0.15
    bits: int | None = None  # uniform values at these bits (2 when neither bits nor step is given)
    step: float | None = None  # grid values at this step (block RMS units)
    block_size: int = 1024
    entropy_coding: bool = False
    carry: float = 1.0
    name: ClassVar[str] = "mask"
    stochastic: ClassVar[bool] = True
    reads_reference: ClassVar[bool] = True

    @classmethod
    def takes_default_bits(cls, settings: dict[str, object]) -> bool:
        return settings.get("step") is None  # a mask of grid values (step) takes no bits

    def __post_init__(self) -> None:
        check_density(self.name, self.density)
        if self.bits is not None and self.step is not None:
            raise CodecError(f"codec {self.name}: takes bits (uniform values) or step (grid values), not both")
        if self.step is not None and self.entropy_coding:
            raise CodecError(f"codec {self.name}: entropy_coding applies to bits; grid values (step) are always ANS-coded")
        if self.bits is None and self.step is None:
            object.__setattr__(self, "bits", 2)
        if not 0.0 <= self.carry <= 1.0:
            raise CodecError(f"codec {self.name}: carry must be in [0, 1], got {self.carry}")
        _ = self.values  # building the inner codec checks bits, step and block_size

    @property
    def values(self) -> UniformCodec | GridCodec:
        """The codec of the sent values."""
        if self.step is not None:
            return GridCodec(step=self.step, block_size=self.block_size)
        return UniformCodec(bits=self.bits, block_size=self.block_size, entropy_coding=self.entropy_coding)  # type: ignore[arg-type]

    @property
    def bits_per_value(self) -> float:
        return self.density * self.values.bits_per_value

    def sent(self, header: np.ndarray, numel: int) -> np.ndarray:
        """The indices a payload with ``header`` carries, in order: where frac(u + slot / slots) < density, with u
        the uniforms of the header's seed and round (the client's own, or its round's with a stratum)."""
        return self._draw(header, numel)[1]

    def _draw(self, header: np.ndarray, numel: int) -> tuple[np.ndarray, np.ndarray]:
        """(the uniforms u, the sent indices)."""
        seed, server_round, _, slot, slots = (int(v) for v in header)
        uniforms = Stratum(seed, server_round, slot, slots).shared(numel, MASK)
        return uniforms, np.flatnonzero(np.mod(uniforms + np.float32(slot / slots), np.float32(1.0)) < self.density)

    def encode(self, vector: np.ndarray, rng: np.random.Generator, stratum: Stratum | None = None) -> list[np.ndarray]:
        x = as_update(vector)
        where = stratum or Stratum(int(rng.integers(2**63)), 0, 0, 1)
        header = np.array([where.seed, where.round, 0, where.slot, where.slots], np.uint64)
        uniforms, kept = self._draw(header, x.size)
        header[2] = kept.size
        if stratum is None:
            return [header, *self.values.encode(x[kept], rng)]
        dither = self._co_sender_dither(uniforms[kept], kept, x.size, stratum, rng)
        return [header, *self.values.encode_dithered(x[kept], dither)]

    def _co_sender_dither(self, uniforms: np.ndarray, kept: np.ndarray, numel: int, stratum: Stratum,
                          rng: np.random.Generator) -> np.ndarray:
        """A dither for the sent values, stratified across the clients that send the same value.

        The slots that send a value are those whose point frac(u + slot / slots) falls below ``density``; the points
        sit 1 / slots apart from first = u mod 1 / slots up. So every sender of a value knows how many send it
        (``count``) and its own place among them (``rank``, its point's), and rounds with
        frac(b + (rank + v) / count), ``b`` the round's shared uniform for the value and ``v`` its own: uniform for
        each client (each stays unbiased), one in each 1 / count of [0, 1) across the value's senders (their
        rounding errors partly cancel in the round's mean, as ``correlated`` does for codecs that send every value).
        """
        slots = stratum.slots
        u = uniforms.astype(np.float64)
        first = np.mod(u, 1.0 / slots)
        point = np.mod(u + stratum.slot / slots, 1.0)
        count = np.maximum(np.ceil((self.density - first) * slots), 1.0)
        rank = np.minimum(np.rint((point - first) * slots), count - 1)
        shared = stratum.shared(numel, DITHER)[kept].astype(np.float64)
        dither = np.mod(shared + (rank + rng.random(kept.size)) / count, 1.0).astype(np.float32)
        return np.minimum(dither, np.float32(1.0 - 2**-24))  # float32 rounding may reach 1.0

    def _sent_values(self, arrays: Sequence[np.ndarray], numel: int) -> tuple[np.ndarray, np.ndarray]:
        (header,) = check_payload(self.name, arrays[:1], [("header", np.uint64, 5)])
        if not int(header[3]) < int(header[4]):
            raise CodecError(f"{self.name} payload: slot {int(header[3])} of {int(header[4])} slots")
        kept = self.sent(header, numel)
        if int(header[2]) != kept.size:
            raise CodecError(f"{self.name} payload: its seed draws {kept.size} of {numel} values at density "
                             f"{self.density:g}, but it says it carries {int(header[2])} (another density or a damaged seed)")
        try:
            return kept, self.values.decode(arrays[1:], kept.size)
        except CodecError as err:
            raise CodecError(f"{self.name} payload's values: {err}") from None

    def decode(self, arrays: Sequence[np.ndarray], numel: int) -> np.ndarray:
        """The sent values in place, zeros elsewhere (the server reads a payload with :meth:`decode_update`)."""
        return self.decode_update(arrays, numel, np.zeros(numel, np.float32)).values

    def decode_update(self, arrays: Sequence[np.ndarray], numel: int, reference: np.ndarray) -> ServerUpdate:
        kept, values = self._sent_values(arrays, numel)
        update = np.asarray(reference, np.float32) * np.float32(self.carry)
        update[kept] = values
        sent = np.zeros(numel, bool)
        sent[kept] = True
        return ServerUpdate(update, sent)
