"""The ``quant.*`` settings: methods, bit widths and scopes, what ``auto`` means, and their checks.

Kept apart from the quantizers (which need torch) so that a config can be
checked, and a saved one named, without building a model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from fedq.errors import FedqError

UNIFORM_METHODS = ("lsq", "seq", "maxabs", "percentile")
METHODS = UNIFORM_METHODS + ("binary", "ternary")
AUTO = "auto"
AUTO_METHOD_BY_BITS = {1: "binary", 2: "seq"}  # any other bit width: lsq
UNIFORM_BITS = (8, 4, 3, 2)
SCOPES = ("attention", "linear", "attention+embedding", "all")
ACT_BITS = range(2, 9)
OFF_BITS = 32


@dataclass
class QuantConfig:
    bits: int = 32  # 32 = off; 8/4/3/2 uniform; 1 binary
    method: str = "auto"  # auto (binary at 1 bit, seq at 2, else lsq) | lsq | seq | maxabs | percentile | binary | ternary
    scope: str = "linear"  # attention | linear | attention+embedding | all
    act_bits: Optional[int] = None  # e.g. 8 to fake-quantize linear-layer inputs
    percentile: float = 99.9


class QuantConfigError(FedqError):
    """A ``quant.*`` setting that fedq cannot run."""


def resolve_method(cfg: QuantConfig) -> str:
    """The method a config means: ``auto`` picks by bit width; ``lsq`` at 1 bit is binary.

    ``auto`` is seq at 2 bits because seq beat lsq there in every comparison we
    ran (README: centralized demo, federated Multi30k); at 3 to 8 bits no run
    has shown a difference, so it stays the plain LSQ grid.
    """
    if cfg.method == AUTO:
        return AUTO_METHOD_BY_BITS.get(cfg.bits, "lsq")
    if cfg.bits == 1 and cfg.method == "lsq":
        return "binary"
    return cfg.method


def with_resolved_method(cfg: QuantConfig) -> QuantConfig:
    """``cfg`` (a QuantConfig) with ``auto`` replaced by the method it means, for saving.

    A checkpoint must name the grid its weights were trained on: lsq and seq have
    the same parameters, so a checkpoint saying ``auto`` would load silently into
    the wrong grid if ``auto`` ever came to mean something else.
    """
    if cfg.method != AUTO or cfg.bits == OFF_BITS:
        return cfg
    return dataclasses.replace(cfg, method=resolve_method(cfg))


def validate_quant_config(cfg: QuantConfig) -> None:
    """Raise QuantConfigError (one line) unless ``cfg`` (a QuantConfig) is runnable."""
    method = resolve_method(cfg)
    if method not in METHODS:
        raise QuantConfigError(f"quant.method={method!r} is unknown; choose one of {', '.join((AUTO,) + METHODS)}")
    if cfg.scope not in SCOPES:
        raise QuantConfigError(f"quant.scope={cfg.scope!r} is unknown; choose one of {', '.join(SCOPES)}")
    if cfg.act_bits is not None and cfg.act_bits not in ACT_BITS:
        raise QuantConfigError(f"quant.act_bits={cfg.act_bits} is not supported; use 2..8, or null for fp32 activations")
    if method == "percentile" and not 0.0 < cfg.percentile <= 100.0:
        raise QuantConfigError(f"quant.percentile={cfg.percentile} must be in (0, 100]")
    bits = cfg.bits
    if bits == OFF_BITS:
        return
    if bits not in UNIFORM_BITS + (1,):
        raise QuantConfigError(
            f"quant.bits={bits} is not supported; allowed: lsq/seq/maxabs/percentile 8, 4, 3, 2; "
            "binary 1; ternary 2; 32 = off"
        )
    if method == "binary" and bits != 1:
        raise QuantConfigError(f"quant.method=binary needs quant.bits=1 (got {bits})")
    if method == "ternary" and bits != 2:
        raise QuantConfigError(f"quant.method=ternary stores 2-bit codes (3 levels): set quant.bits=2 (got {bits})")
    if method in UNIFORM_METHODS and bits == 1:
        raise QuantConfigError(f"quant.bits=1 is binary: set quant.method=binary ({method} needs 2..8 bits)")


def bits_per_weight(method: str, bits: int) -> float:
    """Information per weight: b for uniform/binary, log2(3) for ternary."""
    return math.log2(3) if method == "ternary" else float(bits)
