"""The codec interface (``UpdateCodec``), its registry ``CODECS`` and how a setting names and builds a codec."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, cast

import numpy as np

from fedq.comm.errors import CodecError
from fedq.errors import ConfigError
from fedq.registry import ClassRegistry

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
    # True: per-block levels at ``bits`` that secure aggregation (fedq.fl.secagg) can put on a grid the round shares
    # instead of the client's own scales (the codec's ``bits`` and ``block_size`` are then the grid's)
    shares_a_grid: ClassVar[bool] = False

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


CODECS: ClassRegistry[UpdateCodec] = ClassRegistry("codecs", "codec", UpdateCodec)


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
