"""Which codec each direction uses, from the run's config (``comm.uplink``, ``comm.downlink``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedq.comm.codecs import UpdateCodec, make_codec
from fedq.comm.errors import CodecError

if TYPE_CHECKING:
    from fedq.config import CodecConfig, FedqConfig

DOWNLINK_CODECS = ("fp32", "fp16", "uniform", "sign", "topk")  # fp32/fp16: whole model; others: deltas (fedq.comm.downlink)


def default_uplink_bits(cfg: FedqConfig) -> int:
    """comm.uplink.bits defaults to quant.bits; 8 when QAT is off, 2 for binary QAT."""
    bits = cfg.quant.bits
    if bits >= 32:
        return 8
    return max(2, bits)


def _codec(codec_cfg: CodecConfig, default_bits: int, direction: str) -> UpdateCodec:
    bits = codec_cfg.bits if codec_cfg.bits is not None else default_bits
    try:
        return make_codec(codec_cfg.name, bits=bits, block_size=codec_cfg.block_size, density=codec_cfg.density)
    except CodecError as err:
        raise CodecError(f"comm.{direction}: {err}") from None


def uplink_codec(cfg: FedqConfig) -> UpdateCodec:
    return _codec(cfg.comm.uplink, default_uplink_bits(cfg), "uplink")


def downlink_codec(cfg: FedqConfig) -> UpdateCodec:
    """The whole model at fp32/fp16, or the codec of the deltas against what each client holds
    (``comm.downlink.bits`` defaults to 8 for uniform, 4 for top-k values)."""
    if cfg.comm.downlink.name not in DOWNLINK_CODECS:
        raise CodecError(f"comm.downlink.name={cfg.comm.downlink.name!r} is unknown; choose one of {', '.join(DOWNLINK_CODECS)}")
    default = {"uniform": 8, "topk": 4}.get(cfg.comm.downlink.name, 16)
    return _codec(cfg.comm.downlink, default, "downlink")
