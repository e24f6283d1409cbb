"""Weight and activation fake-quantizers with straight-through gradients.

Every weight quantizer works per output channel (one scale per row of a
``[out, in]`` weight) and offers three views of the same numbers:

- ``forward(w)``: the fake-quantized weight, differentiable (STE);
- ``codes_and_scales(w)``: int8 codes and fp16 per-row scales (the deployed form);
- ``dequantize(codes, scales)``: back to floats.

``forward(w)`` equals ``dequantize(*codes_and_scales(w))`` bit for bit: the
scale used in the forward pass is already rounded to fp16, and the STE is
written so that its forward value is exactly ``code * scale``. So a model
loaded from the packed file computes the same logits as the QAT model.

Methods and their bit widths (``quant.bits`` / ``quant.method``):

- ``lsq`` / ``maxabs`` / ``percentile``: symmetric uniform, codes in
  [-2^(b-1), 2^(b-1)-1], b in {8, 4, 3, 2}. ``maxabs`` and ``percentile`` map
  the row's max (or percentile) of |w| to 2^(b-1)-1, so they use 2^b - 1 levels;
  a learned LSQ step can use all 2^b.
- ``seq``: a learned step like ``lsq`` on balanced levels (c + 1/2)·step, the
  same codes c: ±1/2, ±3/2 at 2 bits, no zero level and no lone extra
  negative level. ParetoQ (Liu et al., 2025) calls this grid "stretched elastic
  quant" and finds it better than integer grids at 2 bits.
- ``binary``: sign(w)·alpha, alpha = mean|w_row|, bits=1. ``quant.bits=1`` with
  ``lsq`` resolves to ``binary``.
- ``ternary``: {-alpha, 0, +alpha} (TWN), log2(3) ≈ 1.58 bits of information,
  stored as 2-bit codes, so it requires ``quant.bits=2``.
- ``auto`` (the default): the method that measured best at the bit width:
  ``binary`` at 1 bit, ``seq`` at 2 bits, ``lsq`` at 3, 4 and 8 bits.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from fedq.quant.settings import bits_per_weight, resolve_method

FP16_TINY = 2.0**-14  # smallest normal fp16: scales below it would lose precision or vanish
FP16_MAX = 65504.0
BINARY_CLIP = 1.0  # binary STE: no gradient where |w| > 1 (BinaryConnect's hardtanh)
TERNARY_THRESHOLD = 0.7  # TWN: weights with |w| <= 0.7·mean|w_row| become 0


def _fp16_exact(scale: torch.Tensor) -> torch.Tensor:
    """``scale`` rounded to fp16 in value, gradient passing straight through.

    The difference of a float and its fp16 rounding is exact (they are within a
    factor of two), so the result equals ``scale.half().float()`` exactly.
    """
    scale = scale.clamp(FP16_TINY, FP16_MAX)
    return scale + (scale.half().float() - scale).detach()


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) in value (exactly: round(x) - x is exact), identity gradient."""
    return x + (torch.round(x) - x).detach()


def _grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` in value, gradient multiplied by ``factor`` (LSQ's step-size gradient scale)."""
    scaled = x * factor
    return scaled + (x - scaled).detach()


class _StraightThrough(torch.autograd.Function):
    """Forward value ``q`` (computed without grad); gradient to ``w`` where |w| <= clip."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, q: torch.Tensor, clip: float) -> torch.Tensor:
        ctx.save_for_backward(w)
        ctx.clip = clip
        return q

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (w,) = ctx.saved_tensors
        if math.isinf(ctx.clip):
            return grad, None, None
        return grad * (w.abs() <= ctx.clip), None, None


class WeightQuantizer(nn.Module):
    """Base class: per-output-channel fake quantization of a ``[out, in]`` weight."""

    method: str
    bits: int  # storage bits per code in the deployed file

    @property
    def bits_per_weight(self) -> float:
        return bits_per_weight(self.method, self.bits)

    def codes_and_scales(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """int8 codes ``[out, in]`` and fp16 scales ``[out]``."""
        raise NotImplementedError

    level_offset = 0.0  # a code c stands for (c + level_offset)·scale

    @classmethod
    def dequantize(cls, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return (codes.float() + cls.level_offset) * scales.float().unsqueeze(1)


class UniformQuantizer(WeightQuantizer):
    """Symmetric uniform b-bit quantizer; subclasses choose the per-row scale."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.qmax = 2 ** (bits - 1) - 1
        self.qmin = -(2 ** (bits - 1))

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        """Per-row scale ``[out, 1]``, fp32 holding an fp16 value."""
        raise NotImplementedError

    def _codes(self, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Integer-valued float codes in [qmin, qmax], rounding with a straight-through gradient."""
        return _round_ste((w / scale - self.level_offset).clamp(self.qmin, self.qmax))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = self.scale(w)
        return (self._codes(w, scale) + self.level_offset) * scale

    @torch.no_grad()
    def codes_and_scales(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.scale(w)
        return self._codes(w, scale).to(torch.int8), scale.squeeze(1).half()

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class LSQQuantizer(UniformQuantizer):
    """Learned step size (Esser et al., 2020): one trainable step per output channel.

    The step starts at the smaller of max|w|/qmax (no clipping) and LSQ's
    2·mean|w|/sqrt(qmax), so 8-bit layers start unclipped and low-bit layers
    start from LSQ's heuristic.
    """

    method = "lsq"

    def __init__(self, bits: int, weight: torch.Tensor) -> None:
        super().__init__(bits)
        with torch.no_grad():
            w = weight.detach().float()
            max_abs = w.abs().amax(dim=1, keepdim=True) / self.qmax
            lsq = 2 * w.abs().mean(dim=1, keepdim=True) / math.sqrt(self.qmax)
            self.step = nn.Parameter(torch.minimum(max_abs, lsq).clamp_min(FP16_TINY))
        self.grad_factor = 1.0 / math.sqrt(weight.shape[1] * self.qmax)

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        return _fp16_exact(_grad_scale(self.step, self.grad_factor))


class SEQQuantizer(LSQQuantizer):
    """LSQ on balanced levels (c + 1/2)·step: ±1/2, ±3/2 at 2 bits (ParetoQ's SEQ grid).

    An integer grid at 2 bits is {-2, -1, 0, 1}·step: one of its four levels is
    a lone negative outlier, so in practice it is close to ternary (-2 held 3.7%
    of a trained Multi30k model's weights, README). The balanced grid uses
    all four levels symmetrically. The step starts where the row's quantization
    error is smallest (a search over fractions of the step that clips nothing),
    so training starts from a good fit rather than from a heuristic.
    """

    method = "seq"
    level_offset = 0.5
    INIT_FACTORS = torch.linspace(0.02, 1.0, 50)  # step candidates, as fractions of the no-clip step

    def __init__(self, bits: int, weight: torch.Tensor) -> None:
        super().__init__(bits, weight)
        with torch.no_grad():
            self.step.copy_(self._least_error_step(weight.detach().float()))

    def _least_error_step(self, w: torch.Tensor) -> torch.Tensor:
        no_clip = (w.abs().amax(dim=1, keepdim=True) / (self.qmax + self.level_offset)).clamp_min(FP16_TINY)
        best_error = torch.full_like(no_clip, math.inf)
        best_step = no_clip.clone()
        for factor in self.INIT_FACTORS.tolist():
            step = no_clip * factor
            q = (self._codes(w, step) + self.level_offset) * step
            error = (q - w).pow(2).sum(dim=1, keepdim=True)
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            best_step = torch.where(better, step, best_step)
        return best_step.clamp_min(FP16_TINY)


class MaxAbsQuantizer(UniformQuantizer):
    """scale = max|w_row| / qmax, recomputed every forward (no gradient through it)."""

    method = "maxabs"

    def _row_range(self, w_abs: torch.Tensor) -> torch.Tensor:
        return w_abs.amax(dim=1, keepdim=True)

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        return _fp16_exact(self._row_range(w.detach().abs()) / self.qmax)


class PercentileQuantizer(MaxAbsQuantizer):
    """Like maxabs, with the ``percentile`` of |w_row| as its range: outliers clip."""

    method = "percentile"

    def __init__(self, bits: int, percentile: float) -> None:
        super().__init__(bits)
        self.percentile = percentile

    def _row_range(self, w_abs: torch.Tensor) -> torch.Tensor:
        return torch.quantile(w_abs, self.percentile / 100.0, dim=1, keepdim=True)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, percentile={self.percentile}"


class BinaryQuantizer(WeightQuantizer):
    """sign(w)·alpha per row, alpha = mean|w_row|; sign(0) = +1.

    Codes are 1-bit signed: -1 for a negative weight, 0 for +, dequantized as
    (2·code + 1)·alpha. Gradient: straight through where |w| <= 1 (hardtanh STE;
    the latent weights of this model are far below 1, so it only stops runaway
    weights), none through alpha.
    """

    method = "binary"
    bits = 1

    def _alpha(self, w: torch.Tensor) -> torch.Tensor:
        return _fp16_exact(w.detach().abs().mean(dim=1, keepdim=True))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        alpha = self._alpha(w)
        return _StraightThrough.apply(w, torch.where(w.detach() >= 0, alpha, -alpha), BINARY_CLIP)

    @torch.no_grad()
    def codes_and_scales(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = torch.where(w >= 0, 0, -1).to(torch.int8)
        return codes, self._alpha(w).squeeze(1).half()

    @classmethod
    def dequantize(cls, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return (2 * codes.float() + 1) * scales.float().unsqueeze(1)


class TernaryQuantizer(WeightQuantizer):
    """Ternary weight networks (Li & Liu, 2016): {-alpha, 0, +alpha} per row.

    Threshold 0.7·mean|w_row|; alpha = mean |w| of the weights above it.
    Identity STE. Codes -1/0/1 stored at 2 bits each.
    """

    method = "ternary"
    bits = 2

    def _codes_float(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w_abs = w.abs()
        keep = w_abs > TERNARY_THRESHOLD * w_abs.mean(dim=1, keepdim=True)
        kept = keep.sum(dim=1, keepdim=True).clamp_min(1)
        alpha = _fp16_exact((w_abs * keep).sum(dim=1, keepdim=True) / kept)
        return torch.sign(w) * keep, alpha

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        codes, alpha = self._codes_float(w.detach())
        return _StraightThrough.apply(w, codes * alpha, math.inf)

    @torch.no_grad()
    def codes_and_scales(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes, alpha = self._codes_float(w)
        return codes.to(torch.int8), alpha.squeeze(1).half()


QUANTIZERS: dict[str, type[WeightQuantizer]] = {
    "lsq": LSQQuantizer,
    "seq": SEQQuantizer,
    "maxabs": MaxAbsQuantizer,
    "percentile": PercentileQuantizer,
    "binary": BinaryQuantizer,
    "ternary": TernaryQuantizer,
}


def make_weight_quantizer(cfg: Any, weight: torch.Tensor) -> WeightQuantizer:
    """The weight quantizer of a validated config, initialised from ``weight`` where it learns."""
    method = resolve_method(cfg)
    if method in ("lsq", "seq"):
        return QUANTIZERS[method](cfg.bits, weight)
    if method == "percentile":
        return PercentileQuantizer(cfg.bits, cfg.percentile)
    if method == "maxabs":
        return MaxAbsQuantizer(cfg.bits)
    return QUANTIZERS[method]()


class ActQuantizer(nn.Module):
    """Dynamic per-tensor symmetric fake quantization of activations, identity STE.

    scale = max|x| / (2^(b-1) - 1) of the current tensor, rounded to fp16.
    """

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.qmax = 2 ** (bits - 1) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # in-place on temporaries: activations are large
            scale = _fp16_exact(x.abs().amax() / self.qmax)
            q = torch.div(x, scale).round_().clamp_(-self.qmax, self.qmax).mul_(scale)
        return _StraightThrough.apply(x, q, math.inf)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
