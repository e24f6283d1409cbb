"""The ``comm.*`` settings: which codec each direction uses, with which settings, and their checks.

Every codec setting is optional: left unset it is the codec's default (the
uplink's value bits follow ``quant.bits``; the downlink's are 4). A setting the
chosen codec does not use is refused with one line, never ignored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from fedq.comm.codecs import UpdateCodec, codec_class, codec_settings, make_codec
from fedq.comm.errors import CodecError

DOWNLINK_DEFAULT_BITS = 4
# A downlink delta carries what the last one could not (global - held), so its rounding error feeds back. The grid's
# stochastic-rounding error grows with its step; above 2 x the block RMS it outgrows the delta and grows every round
# (measured: step 2 settles at 1.4 x a round's change, 2.5 grows linearly, 4 geometrically).
DOWNLINK_GRID_STEP, DOWNLINK_GRID_MAX_STEP = 1.0, 2.0


@dataclass
class UplinkConfig:
    name: str = "uniform"  # an entry of fedq.comm.codecs.CODECS (fp32 fp16 uniform sign topk grid mask), or module:Class
    bits: Optional[int] = None  # value bits (uniform, topk, mask); None = quant.bits (8 when QAT is off, 2 for binary)
    block_size: Optional[int] = None  # values per scale (uniform, sign, topk, grid); None = 1024
    density: Optional[float] = None  # topk, mask: the fraction of values sent; None = 0.01 (topk), 0.15 (mask)
    step: Optional[float] = None  # grid (None = 4), mask (its values on a grid; None = uniform at bits): step in block RMS units
    entropy_coding: Optional[bool] = None  # uniform, mask: ANS-code the codes instead of packing them; None = off
    # mask: a value no client of the round sent moves by carry x what it moved last round; None = 1 (0: it stays)
    carry: Optional[float] = None
    error_feedback: Optional[bool] = None  # biased codecs (sign, topk): keep what was not sent for the next round; None = on
    # stochastic codecs (uniform, topk, grid): the clients of a round round with stratified dithers, so that their
    # rounding errors partly cancel in the average (correlated quantization, Suresh et al. 2022); each stays unbiased.
    # mask: the round's clients draw stratified masks, so that every value is sent by about density x clients of them
    correlated: bool = False


@dataclass
class DownlinkConfig:
    # fp32 and fp16 send the whole model; the other codecs deltas against what each client holds
    name: str = "uniform"
    bits: Optional[int] = None  # value bits of the deltas (uniform, topk); None = 4
    block_size: Optional[int] = None
    density: Optional[float] = None
    step: Optional[float] = None  # grid: None = 1, at most 2 (see DOWNLINK_GRID_MAX_STEP)
    entropy_coding: Optional[bool] = None
    # The server remembers, per client, the model that client holds (so that its next delta carries what the last
    # ones could not), up to this many MB in all; the least recently synced are forgotten first, and a client the
    # server holds nothing for is sent a delta against the seeded model. 0 = remember nothing.
    cache_mb: float = 1024.0


@dataclass
class CommConfig:
    uplink: UplinkConfig = field(default_factory=UplinkConfig)
    downlink: DownlinkConfig = field(default_factory=DownlinkConfig)


def default_uplink_bits(quant_bits: int) -> int:
    """comm.uplink.bits defaults to quant.bits; 8 when QAT is off, 2 for binary QAT."""
    return 8 if quant_bits >= 32 else max(2, quant_bits)


def _codec(direction: str, name: str, default_bits: int, **settings: object) -> UpdateCodec:
    try:
        if settings.get("bits") is None and codec_class(name).takes_default_bits(settings):
            settings["bits"] = default_bits
        return make_codec(name, **settings)
    except CodecError as err:
        raise CodecError(f"comm.{direction}: {err}") from None


def uplink_codec(comm: CommConfig, quant_bits: int) -> UpdateCodec:
    up = comm.uplink
    settings = {k: v for k, v in asdict(up).items() if k not in ("name", "error_feedback", "correlated")}
    codec = _codec("uplink", up.name, default_uplink_bits(quant_bits), **settings)
    if up.error_feedback is not None and not codec.biased:
        raise CodecError(f"comm.uplink.error_feedback applies to biased codecs (sign, topk), not to {up.name}")
    if up.correlated and not codec.stochastic:
        raise CodecError("comm.uplink.correlated applies to codecs that round stochastically or draw masks "
                         f"(uniform, topk, grid, mask), not to {up.name}")
    return codec


def uses_error_feedback(comm: CommConfig, codec: UpdateCodec) -> bool:
    return codec.biased and comm.uplink.error_feedback is not False


def downlink_codec(comm: CommConfig) -> UpdateCodec:
    """The whole model at fp32/fp16, or the codec of the deltas against what each client holds."""
    down = comm.downlink
    settings = {k: v for k, v in asdict(down).items() if k not in ("name", "cache_mb")}
    if down.cache_mb < 0:
        raise CodecError(f"comm.downlink.cache_mb={down.cache_mb:g} must be >= 0 (0: the server remembers no client)")
    try:
        reads_reference = codec_class(down.name).reads_reference
    except CodecError as err:
        raise CodecError(f"comm.downlink: {err}") from None
    if reads_reference:
        raise CodecError(f"comm.downlink.name={down.name}: its unsent values are filled from the server's last step, "
                         "which a client does not hold; use uniform, grid or topk deltas")
    if "step" in codec_settings(down.name):
        settings["step"] = DOWNLINK_GRID_STEP if down.step is None else down.step
        if settings["step"] > DOWNLINK_GRID_MAX_STEP:
            raise CodecError(f"comm.downlink.step={down.step:g} must be <= {DOWNLINK_GRID_MAX_STEP:g}: a delta's rounding error "
                             "is in the next delta, and above that it grows every round")
    return _codec("downlink", down.name, DOWNLINK_DEFAULT_BITS, **settings)


def validate_comm_config(comm: CommConfig, quant_bits: int) -> None:
    uplink_codec(comm, quant_bits)
    downlink_codec(comm)
