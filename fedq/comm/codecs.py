"""Update codecs: ``encode(vector) -> arrays`` and ``decode(arrays) -> vector``.

A client flattens its update (local - global, all float tensors) into one float32
vector and encodes it; the arrays returned by ``encode`` are exactly what goes on
the wire, so ``payload_bytes(arrays)`` is the honest byte count. Everything the
decoder needs apart from ``numel`` (the model size, known to both sides) travels
inside those arrays, and ``decode`` rejects any payload that does not match.

Bit packing is LSB-first (see ``fedq.bitpack``).

Every codec is one entry of ``CODECS`` (``fedq.registry``: a researcher's own is
``comm.uplink.name=module:Class``), and says what the rest of fedq needs to know
about it as class attributes, so that no other module tests a codec's name:
``biased`` (the client keeps an error-feedback residual), ``stochastic`` (it
rounds with a dither, which may be correlated across a round's clients),
``reads_reference`` (a payload carries part of the values and the server reads
the rest as its own last step: no downlink, no coordinate-wise aggregation) and
``whole_values`` (every value as a float: the downlink sends the whole model
with it rather than deltas).
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, cast

import numpy as np

from fedq.bitpack import pack_bits, packed_nbytes, unpack_bits
from fedq.comm.entropy import ans_decode, ans_encode
from fedq.comm.errors import CodecError
from fedq.comm.indexcode import decode_sorted_indices, encode_sorted_indices
from fedq.errors import ConfigError
from fedq.registry import Registry

QUANT_BITS = range(2, 9)
FP16_MAX = float(np.finfo(np.float16).max)
DITHER, MASK = 0xD17, 0x3A5  # the tags of the round's shared uniforms: rounding dithers, masks


@dataclass(frozen=True)
class Stratum:
    """A client's place in its round's shared randomness (``comm.uplink.correlated``): the uniforms that ``seed`` and
    ``round`` draw are the round's, and this client is ``slot`` of ``slots``."""

    seed: int
    round: int
    slot: int
    slots: int

    def shared(self, size: int, tag: int) -> np.ndarray:
        return np.random.default_rng([self.seed, self.round, tag]).random(size, dtype=np.float32)

    def dither(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """The client's uniform dither, frac(a + (slot + v) / slots) with ``a`` the round's and ``v`` the client's
        own. Each client's dither is uniform, so its rounding stays unbiased, and at every value the round's
        dithers fall one into each 1/slots of [0, 1), so that their rounding errors partly cancel in the average
        (Suresh et al., 2022, correlated quantization)."""
        own = rng.random(size, dtype=np.float32)
        dither = np.mod(self.shared(size, DITHER) + (self.slot + own) / self.slots, np.float32(1.0))
        return np.minimum(dither, np.float32(1.0 - 2**-24))  # float32 rounding may reach 1.0


class ServerUpdate(NamedTuple):
    """A payload as the server reads it: the update, and which of its values the payload carried (None: all)."""

    values: np.ndarray
    sent: np.ndarray | None


class UpdateCodec(ABC):
    """Turns a flat float32 update into wire arrays and back."""

    name: ClassVar[str]
    biased: ClassVar[bool] = False  # True: needs error feedback (a residual the client keeps)
    stochastic: ClassVar[bool] = False  # True: rounds with a uniform dither (which may be correlated across clients)
    reads_reference: ClassVar[bool] = False  # True: the server fills what a payload did not carry from its last step
    whole_values: ClassVar[bool] = False  # True: every value as a float (the downlink sends the whole model with it)

    @classmethod
    def takes_default_bits(cls, settings: dict[str, object]) -> bool:
        """Whether ``bits``, left unset in ``settings``, takes the run's default (``quant.bits`` on the uplink)."""
        return "bits" in codec_settings(cls)

    @property
    @abstractmethod
    def bits_per_value(self) -> float:
        """Nominal bits per model parameter, for reports (payload_bytes is the real count)."""

    @abstractmethod
    def encode(self, vector: np.ndarray, rng: np.random.Generator, stratum: Stratum | None = None) -> list[np.ndarray]:
        """Encode a 1-D float vector into the arrays that are sent. A codec that rounds stochastically draws its
        uniform dither from ``rng``, stratified across the round's clients with a ``stratum`` (correlated rounding)."""

    @abstractmethod
    def decode(self, arrays: Sequence[np.ndarray], numel: int) -> np.ndarray:
        """Decode a payload into a float32 vector of shape ``(numel,)``; raise CodecError if malformed."""

    def decode_update(self, arrays: Sequence[np.ndarray], numel: int, reference: np.ndarray) -> ServerUpdate:
        """The update a payload stands for on the server, which holds ``reference`` (its last step): only a codec
        that sends part of the values (``mask``) fills the rest from it; the others decode what was sent."""
        return ServerUpdate(self.decode(arrays, numel), None)


CODECS: Registry[UpdateCodec] = Registry("codecs", "codec", UpdateCodec)


@CODECS.add
@dataclass(frozen=True)
class Fp32Codec(UpdateCodec):
    name: ClassVar[str] = "fp32"
    whole_values: ClassVar[bool] = True

    @property
    def bits_per_value(self) -> float:
        return 32.0

    def encode(self, vector: np.ndarray, rng: np.random.Generator, stratum: Stratum | None = None) -> list[np.ndarray]:
        return [_as_update(vector).copy()]

    def decode(self, arrays: Sequence[np.ndarray], numel: int) -> np.ndarray:
        (values,) = _check_payload(self.name, arrays, [("values", np.float32, numel)])
        return _finite(self.name, values.copy())


@CODECS.add
@dataclass(frozen=True)
class Fp16Codec(UpdateCodec):
    name: ClassVar[str] = "fp16"
    whole_values: ClassVar[bool] = True

    @property
    def bits_per_value(self) -> float:
        return 16.0

    def encode(self, vector: np.ndarray, rng: np.random.Generator, stratum: Stratum | None = None) -> list[np.ndarray]:
        x = _as_update(vector)
        _check_fp16_range(_max(np.abs(x)))
        return [x.astype(np.float16)]

    def decode(self, arrays: Sequence[np.ndarray], numel: int) -> np.ndarray:
        (values,) = _check_payload(self.name, arrays, [("values", np.float16, numel)])
        return _finite(self.name, values.astype(np.float32))


@CODECS.add
@dataclass(frozen=True)
class UniformCodec(UpdateCodec):
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

    def __post_init__(self) -> None:
        _check_bits(self.name, self.bits)
        _check_block_size(self.name, self.block_size)

    @property
    def bits_per_value(self) -> float:
        return float(self.bits)

    def encode(self, vector: np.ndarray, rng: np.random.Generator, stratum: Stratum | None = None) -> list[np.ndarray]:
        x = _as_update(vector)
        return self._encode(x, stratum.dither(rng, x.size) if stratum else None, rng)

    def encode_dithered(self, vector: np.ndarray, dither: np.ndarray) -> list[np.ndarray]:
        """:meth:`encode` with the given uniform dither, one per value."""
        return self._encode(_as_update(vector), dither, None)

    def _encode(self, x: np.ndarray, dither: np.ndarray | None, rng: np.random.Generator | None) -> list[np.ndarray]:
        codes, scales = _quantize(x, self.bits, self.block_size, rng, dither)
        return [*_code_arrays(codes, self.bits, self.entropy_coding), scales]

    def decode(self, arrays: Sequence[np.ndarray], numel: int) -> np.ndarray:
        *coded, scales = _check_payload(self.name, arrays, [
            *_code_spec(self.bits, numel, self.entropy_coding), ("scales", np.float16, _num_blocks(numel, self.block_size))])
        _check_scales(self.name, scales)
        codes = _codes(self.name, coded, numel, self.bits, self.entropy_coding)
        return _finite(self.name, _dequantize(codes, scales, self.bits, self.block_size))


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
        _check_block_size(self.name, self.block_size)

    @property
    def bits_per_value(self) -> float:
        return 1.0

    def encode(self, vector: np.ndarray, rng: np.random.Generator, stratum: Stratum | None = None) -> list[np.ndarray]:
        x = _as_update(vector)
        abs_blocks = _blocks(np.abs(x), self.block_size)
        counts = np.full(len(abs_blocks), self.block_size, np.float32)
        if len(counts):
            counts[-1] = x.size - (len(counts) - 1) * self.block_size
        means = abs_blocks.sum(axis=1, dtype=np.float32) / counts
        _check_fp16_range(_max(means))
        return [pack_bits(x < 0, 1), means.astype(np.float16)]

    def decode(self, arrays: Sequence[np.ndarray], numel: int) -> np.ndarray:
        packed, scales = _check_payload(
            self.name,
            arrays,
            [
                ("signs", np.uint8, packed_nbytes(numel, 1)),
                ("scales", np.float16, _num_blocks(numel, self.block_size)),
            ],
        )
        _check_scales(self.name, scales)
        signs = 1.0 - 2.0 * _blocks(unpack_bits(packed, 1, numel).astype(np.float32), self.block_size)
        values = (signs * scales.astype(np.float32)[:, None]).ravel()[:numel]
        return _finite(self.name, values)


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
        _check_density(self.name, self.density)
        _check_bits(self.name, self.bits)
        _check_block_size(self.name, self.block_size)

    @property
    def bits_per_value(self) -> float:
        return self.density * self.bits

    def num_kept(self, numel: int) -> int:
        return math.ceil(self.density * numel)

    def encode(self, vector: np.ndarray, rng: np.random.Generator, stratum: Stratum | None = None) -> list[np.ndarray]:
        x = _as_update(vector)
        dither = stratum.dither(rng, x.size) if stratum else None
        k = self.num_kept(x.size)
        kept = np.sort(np.argpartition(np.abs(x), x.size - k)[x.size - k :]) if k else np.zeros(0, np.intp)
        rice_bits, unary, remainders = encode_sorted_indices(kept)
        codes, scales = _quantize(x[kept], self.bits, self.block_size, rng, dither[kept] if dither is not None else None)
        header = np.array([k, rice_bits], np.uint32)
        return [header, unary, remainders, pack_bits(codes, self.bits), scales]

    def decode(self, arrays: Sequence[np.ndarray], numel: int) -> np.ndarray:
        header, unary, remainders, packed, scales = _check_payload(
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
        _check_length(self.name, "value codes", packed, packed_nbytes(k, self.bits))
        _check_length(self.name, "value scales", scales, _num_blocks(k, self.block_size))
        _check_scales(self.name, scales)
        kept = decode_sorted_indices(rice_bits, unary, remainders, k, numel)
        values = _dequantize(unpack_bits(packed, self.bits, k), scales, self.bits, self.block_size)
        out = np.zeros(numel, np.float32)
        out[kept] = values
        return _finite(self.name, out)


@CODECS.add
@dataclass(frozen=True)
class GridCodec(UpdateCodec):
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
        _check_block_size(self.name, self.block_size)

    @property
    def bits_per_value(self) -> float:
        return 1.0  # nominal: the coded size depends on the update (payload_bytes is the real count)

    def encode(self, vector: np.ndarray, rng: np.random.Generator, stratum: Stratum | None = None) -> list[np.ndarray]:
        x = _as_update(vector)
        return self._encode(x, stratum.dither(rng, x.size) if stratum else None, rng)

    def encode_dithered(self, vector: np.ndarray, dither: np.ndarray) -> list[np.ndarray]:
        """:meth:`encode` with the given uniform dither, one per value."""
        return self._encode(_as_update(vector), dither, None)

    def _encode(self, x: np.ndarray, dither: np.ndarray | None, rng: np.random.Generator | None) -> list[np.ndarray]:
        blocks = _blocks(x, self.block_size)
        rms = np.sqrt(np.square(blocks, dtype=np.float64).sum(axis=1) / np.maximum(_block_counts(x.size, self.block_size), 1))
        _check_fp16_range(_max(self.step * rms))
        steps = _fp16_ceil((self.step * rms).astype(np.float32))
        safe = np.where(steps > 0, steps.astype(np.float32), np.float32(1.0))
        noise = _blocks(dither, self.block_size) if dither is not None else rng.random(blocks.shape, dtype=np.float32)  # type: ignore[union-attr]
        codes = np.floor(blocks / safe[:, None] + noise).astype(np.int64).ravel()[: x.size]
        return [*ans_encode(codes), steps]

    def decode(self, arrays: Sequence[np.ndarray], numel: int) -> np.ndarray:
        header, counts, words, steps = _check_payload(self.name, arrays, [
            ("header", np.int32, 2), ("counts", np.uint32, None), ("words", np.uint32, None),
            ("steps", np.float16, _num_blocks(numel, self.block_size))])
        _check_scales(self.name, steps)
        codes = ans_decode(header, counts, words, numel, self.name).astype(np.float32)
        return _finite(self.name, (_blocks(codes, self.block_size) * steps.astype(np.float32)[:, None]).ravel()[:numel])


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
        _check_density(self.name, self.density)
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
        x = _as_update(vector)
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
        (header,) = _check_payload(self.name, arrays[:1], [("header", np.uint64, 5)])
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


def codec_settings(codec: str | type[UpdateCodec]) -> tuple[str, ...]:
    """The settings a codec takes (``bits``, ``block_size``, ``density``, ...): its dataclass fields."""
    cls = CODECS.get(codec) if isinstance(codec, str) else codec
    return tuple(f.name for f in dataclasses.fields(cast("type[Any]", cls)))


def codec_class(name: str) -> type[UpdateCodec]:
    """The codec a setting names (a built-in's name, or module:Class); a name that is none is one CodecError line."""
    try:
        return CODECS.get(name)
    except ConfigError as err:
        raise CodecError(str(err)) from None


def make_codec(name: str, **settings: object) -> UpdateCodec:
    """The codec ``name`` with ``settings`` (None = the codec's default); a setting the codec does not
    take is refused, so that no value is ever silently ignored."""
    cls = codec_class(name)
    given = {key: value for key, value in settings.items() if value is not None}
    unused = [key for key in given if key not in codec_settings(cls)]
    if unused:
        takes = ", ".join(codec_settings(cls)) or "no settings"
        raise CodecError(f"codec {name} does not use {unused[0]} (it takes {takes})")
    return cls(**given)


def payload_bytes(arrays: Sequence[np.ndarray]) -> int:
    """Bytes on the wire: the sum of the sizes of the arrays actually sent."""
    return sum(int(a.nbytes) for a in arrays)


def _check_bits(name: str, bits: int) -> None:
    if bits not in QUANT_BITS:
        raise CodecError(f"codec {name}: bits must be one of 2..8 (1 bit: use codec sign), got {bits}")


def _check_density(name: str, density: float) -> None:
    if not 0.0 < density <= 1.0:
        raise CodecError(f"codec {name}: density must be in (0, 1], got {density}")


def _check_block_size(name: str, block_size: int) -> None:
    if block_size < 1:
        raise CodecError(f"codec {name}: block_size must be >= 1, got {block_size}")


def _as_update(vector: np.ndarray) -> np.ndarray:
    x = np.asarray(vector)
    if x.ndim != 1 or x.dtype.kind != "f":
        raise CodecError(f"codecs encode a 1-D float vector, got shape {x.shape} dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise CodecError("update contains NaN or Inf; refusing to encode it")
    return x


def _max(values: np.ndarray) -> float:
    return float(values.max()) if values.size else 0.0


def _check_fp16_range(max_abs: float) -> None:
    if max_abs > FP16_MAX:
        raise CodecError(f"update magnitude {max_abs:.3g} exceeds the float16 range ({FP16_MAX:g})")


def _num_blocks(numel: int, block_size: int) -> int:
    return -(-numel // block_size)


def _blocks(x: np.ndarray, block_size: int) -> np.ndarray:
    """View ``x`` as (blocks, block_size), zero-padding the last block."""
    n_blocks = _num_blocks(x.size, block_size)
    if x.size != n_blocks * block_size:
        x = np.concatenate([x, np.zeros(n_blocks * block_size - x.size, x.dtype)])
    return x.reshape(n_blocks, block_size)


def _fp16_ceil(values: np.ndarray) -> np.ndarray:
    """Round non-negative float32 values up to the nearest float16."""
    rounded = values.astype(np.float16)
    low = rounded.astype(np.float32) < values
    rounded[low] = np.nextafter(rounded[low], np.float16(np.inf))
    return rounded


def _block_counts(numel: int, block_size: int) -> np.ndarray:
    """How many real (unpadded) values each block holds."""
    counts = np.full(_num_blocks(numel, block_size), block_size, np.int64)
    if counts.size:
        counts[-1] = numel - (counts.size - 1) * block_size
    return counts


def _quantize(
    x: np.ndarray, bits: int, block_size: int, rng: np.random.Generator | None, dither: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic rounding of each block to codes 0..2**bits-1 for levels -s + code * 2s/(2**bits-1)
    (the given dither, or one drawn from ``rng``)."""
    blocks = _blocks(x, block_size)
    max_abs = np.abs(blocks).max(axis=1) if blocks.size else np.zeros(0, np.float32)
    _check_fp16_range(_max(max_abs))
    scales = _fp16_ceil(max_abs)
    half = np.float32((2**bits - 1) / 2)
    safe = np.where(scales > 0, scales.astype(np.float32), np.float32(1.0))
    position = blocks * (half / safe)[:, None] + half  # in [0, 2**bits - 1]
    if dither is not None:
        position += _blocks(dither.astype(np.float32), block_size)
    else:
        position += rng.random(position.shape, dtype=np.float32)  # type: ignore[union-attr]
    codes = np.clip(np.floor(position), 0, 2**bits - 1).astype(np.uint8)
    return codes.ravel()[: x.size], scales


def _code_arrays(codes: np.ndarray, bits: int, entropy_coding: bool) -> list[np.ndarray]:
    """The wire arrays of quantized codes: packed ``bits`` each, or ANS-coded (``[header, counts, words]``)."""
    return ans_encode(codes) if entropy_coding else [pack_bits(codes, bits)]


def _code_spec(bits: int, count: int | None, entropy_coding: bool) -> list[tuple[str, type, int | None]]:
    """The payload spec (see :func:`_check_payload`) of :func:`_code_arrays`' arrays for ``count`` codes (None: any)."""
    if entropy_coding:
        return [("header", np.int32, 2), ("counts", np.uint32, None), ("words", np.uint32, None)]
    return [("codes", np.uint8, None if count is None else packed_nbytes(count, bits))]


def _codes(codec: str, arrays: Sequence[np.ndarray], count: int, bits: int, entropy_coding: bool) -> np.ndarray:
    """The ``count`` codes of :func:`_code_arrays`' (checked) arrays."""
    if not entropy_coding:
        return unpack_bits(arrays[0], bits, count)
    codes = ans_decode(arrays[0], arrays[1], arrays[2], count, codec)
    if codes.size and (codes.min() < 0 or codes.max() >= 2**bits):
        raise CodecError(f"{codec} payload: a code outside 0..{2**bits - 1}")
    return codes


def _dequantize(codes: np.ndarray, scales: np.ndarray, bits: int, block_size: int) -> np.ndarray:
    s = scales.astype(np.float32)[:, None]
    step = s / np.float32((2**bits - 1) / 2)
    return (_blocks(codes.astype(np.float32), block_size) * step - s).ravel()[: codes.size]


def _check_payload(
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
            _check_length(codec, label, array, length)
        checked.append(array)
    return checked


def _check_length(codec: str, label: str, array: np.ndarray, length: int) -> None:
    if array.size != length:
        raise CodecError(f"{codec} payload: {label} has {array.size} entries, expected {length}")


def _check_scales(codec: str, scales: np.ndarray) -> None:
    if not (np.isfinite(scales).all() and (scales >= 0).all()):
        raise CodecError(f"{codec} payload: scales must be finite and non-negative")


def _finite(codec: str, values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise CodecError(f"{codec} payload decodes to NaN or Inf")
    return values
