"""Update codecs for the uplink and downlink, and error feedback for the biased ones."""

from fedq.comm.codecs import (
    CODEC_NAMES,
    UpdateCodec,
    flatten_arrays,
    make_codec,
    payload_bytes,
    unflatten_vector,
)
from fedq.comm.error_feedback import encode_with_feedback
from fedq.comm.errors import CodecError

__all__ = [
    "CODEC_NAMES",
    "CodecError",
    "UpdateCodec",
    "encode_with_feedback",
    "flatten_arrays",
    "make_codec",
    "payload_bytes",
    "unflatten_vector",
]
