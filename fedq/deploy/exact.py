"""A trained weight grid as integers times a per-row scale: what integer kernels can run bit for bit.

Every grid fedq trains is an integer k times a per-row scale t, exactly:

- ``lsq``/``maxabs``/``percentile`` and ``ternary``: k = c, t = s;
- ``seq`` (levels (c + ½)·s): k = 2c + 1, t = s/2 (2 bits: k in {-3, -1, 1, 3});
- ``binary`` ((2c + 1)·s): k = 2c + 1 in {-1, 1}, t = s.

A kernel of signed b-bit integers holds the grid when every k fits; the narrowest
width of those a kernel offers is chosen. ``fedq.deploy.onnx_nbits`` and
``fedq.deploy.ctranslate`` (``ct2-codes``) feed their engines these integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedq.deploy.variant import Source, VariantError
from fedq.quant.deployed import PackedTensor, read_deployed_tensors
from fedq.quant.quantizers import QUANTIZERS


@dataclass
class IntegerWeight:
    """``values`` (int, ``[out, in]``) times ``scales`` (fp32, ``[out]``) is the QAT weight; ``bits``: the
    kernel width chosen."""

    bits: int
    values: np.ndarray
    scales: np.ndarray


def grid_integers(method: str, bits: int) -> tuple[int, np.ndarray]:
    """(m, k): the multiplier m (1 or 2) that makes every level of the grid an integer k = m·level/scale, over
    all its codes (k indexed by code + 2^(bits-1)); a grid with no such m is refused."""
    codes = torch.arange(-(1 << (bits - 1)), 1 << (bits - 1), dtype=torch.int8)[None]
    levels = QUANTIZERS[method].dequantize(codes, torch.ones(1, dtype=torch.float16))[0].numpy().astype(np.float64)
    for multiplier in (1, 2):
        if np.array_equal(multiplier * levels, np.round(multiplier * levels)):
            return multiplier, np.round(multiplier * levels).astype(np.int64)
    raise VariantError(f"the {bits}-bit {method} grid has levels that are not integer or half-integer multiples of its scale")


def integer_weight(name: str, weight: PackedTensor, widths: tuple[int, ...], engine: str) -> IntegerWeight:
    """``weight``'s trained codes as integers of the narrowest of ``widths`` that holds its grid; refused with one
    line naming the grid when none does, and checked: integers times scales equal the QAT weight bit for bit."""
    multiplier, levels = grid_integers(weight.method, weight.bits)
    bits = next((b for b in widths if -(1 << (b - 1)) <= levels.min() and levels.max() < 1 << (b - 1)), None)
    if bits is None:
        raise VariantError(f"{name}: the {weight.bits}-bit {weight.method} grid needs integers {levels.min()}..{levels.max()}, "
                           f"beyond {engine}'s {max(widths)}-bit codes")
    values = levels[weight.codes.astype(np.int64) + (1 << (weight.bits - 1))]
    scales = weight.scales.astype(np.float32) / np.float32(multiplier)
    if not np.array_equal(values.astype(np.float32) * scales[:, None], weight.dequantize().numpy()):
        raise VariantError(f"{name}: the {weight.bits}-bit {weight.method} weights are not exact as integers times fp32 scales "
                           "(a scale too small to halve)")
    return IntegerWeight(bits, values, scales)


def packed_weights(source: Source, variant: str, instead: str) -> dict[str, PackedTensor]:
    """The quantized weights of the checkpoint's packed file, as stored; a checkpoint without any is refused for
    ``variant`` with one line naming the variant to use ``instead``."""
    path = source.checkpoint.deployed_path
    header, tensors = read_deployed_tensors(path.read_bytes(), path)
    if "adapter_scale" in header:
        raise VariantError(f"variant {variant} runs the codes as trained; this checkpoint adds fp32 adapters to them "
                           f"(use {instead}, which runs the merged weights)")
    packed = {name: t for name, t in tensors.items() if isinstance(t, PackedTensor)}
    if not packed:
        raise VariantError(f"variant {variant} runs a QAT model's codes; this checkpoint has no quantized weights (use "
                           f"{instead})")
    return packed
