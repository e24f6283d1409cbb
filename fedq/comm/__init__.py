"""Update codecs for the uplink and downlink, and error feedback for the biased ones."""

from fedq.comm.codecs import CODECS, UpdateCodec, make_codec, payload_bytes
from fedq.comm.error_feedback import encode_with_feedback
from fedq.comm.errors import CodecError

__all__ = ["CODECS", "CodecError", "UpdateCodec", "encode_with_feedback", "make_codec", "payload_bytes"]
