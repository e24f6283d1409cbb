"""Update codecs: ``encode(vector) -> arrays`` and ``decode(arrays) -> vector``.

A client flattens its update (local - global, all float tensors) into one float32
vector and encodes it; the arrays returned by ``encode`` are exactly what goes on
the wire, so ``payload_bytes(arrays)`` is the honest byte count. Everything the
decoder needs apart from ``numel`` (the model size, known to both sides) travels
inside those arrays, and ``decode`` rejects any payload that does not match.

Bit packing is LSB-first (see ``fedq.bitpack``).

Every codec is one entry of ``CODECS`` (``fedq.registry``: a researcher's own is
``comm.uplink.name=module:Class``), a frozen dataclass whose fields are its
settings, and says what the rest of fedq needs to know about it as class
attributes, so that no other module tests a codec's name: ``biased`` (the client
keeps an error-feedback residual), ``stochastic`` (it rounds with a dither, which
may be correlated across a round's clients), ``reads_reference`` (a payload
carries part of the values and the server reads the rest as its own last step:
no downlink, no coordinate-wise aggregation) and ``whole_values`` (every value as
a float: the downlink sends the whole model with it rather than deltas).

The package: ``base`` (the interface and the registry), ``blocks`` (what the
codecs share), and one module per family: ``floats``, ``rounding``, ``sign``,
``sparse``. Importing the package registers every built-in codec.
"""

from fedq.comm.codecs.base import (
    CODECS,
    ServerUpdate,
    Stratum,
    UpdateCodec,
    codec_class,
    codec_settings,
    make_codec,
    payload_bytes,
)
from fedq.comm.codecs.floats import Fp16Codec, Fp32Codec
from fedq.comm.codecs.rounding import GridCodec, UniformCodec
from fedq.comm.codecs.sign import SignCodec
from fedq.comm.codecs.sparse import MaskCodec, TopKCodec

__all__ = [
    "CODECS", "ServerUpdate", "Stratum", "UpdateCodec", "codec_class", "codec_settings", "make_codec", "payload_bytes",
    "Fp16Codec", "Fp32Codec", "GridCodec", "UniformCodec", "SignCodec", "MaskCodec", "TopKCodec",
]
