"""Quantized drop-in layers: the only way quantization enters the model.

Each wraps the *same* parameter tensors as the layer it replaces (latent fp32
weights, fp32 bias) and fake-quantizes the weight on every forward, except
``FrozenCodesLinear``: a frozen layer held as its codes (a device that trains
only adapters).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedq.model.transformer import TiedEmbedding
from fedq.quant.quantizers import ActQuantizer, WeightQuantizer


class QuantLinear(nn.Linear):
    """nn.Linear whose forward uses the fake-quantized weight (bias stays fp32)."""

    def __init__(
        self, linear: nn.Linear, weight_quantizer: WeightQuantizer, act_quantizer: ActQuantizer | None = None
    ) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self.weight = linear.weight
        self.bias = linear.bias
        self.weight_quantizer = weight_quantizer
        self.act_quantizer = act_quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_quantizer is not None:
            x = self.act_quantizer(x)
        return F.linear(x, self.weight_quantizer(self.weight), self.bias)


class ActQuantLinear(nn.Linear):
    """A linear layer of the deployed model: weights already dequantized, inputs fake-quantized."""

    def __init__(self, linear: nn.Linear, act_quantizer: ActQuantizer) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self.weight = linear.weight
        self.bias = linear.bias
        self.act_quantizer = act_quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act_quantizer(x), self.weight, self.bias)


class _FromCodes(torch.autograd.Function):
    """``x W^T + b`` with W dequantized from its codes in the forward and again in the backward, so that no fp32
    copy of a frozen weight outlives the layer's own computation (bias and W take no gradient)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                dequantize: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(codes, scales)
        ctx.dequantize = dequantize
        return F.linear(x, dequantize(codes, scales).to(x.dtype), bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        codes, scales = ctx.saved_tensors
        return grad @ ctx.dequantize(codes, scales).to(grad.dtype), None, None, None, None


class FrozenCodesLinear(nn.Module):
    """A frozen QAT linear layer held as its int8 codes and fp16 scales, as the packed file stores them (the
    QLoRA idea: a device that only trains adapters keeps the base at its low-bit codes, not latent fp32)."""

    def __init__(self, layer: QuantLinear) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        codes, scales = layer.weight_quantizer.codes_and_scales(layer.weight.detach())
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scales)
        self.bias = layer.bias
        self.dequantize = type(layer.weight_quantizer).dequantize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FromCodes.apply(x, self.codes, self.scales, self.bias, self.dequantize)


class QuantTiedEmbedding(TiedEmbedding):
    """Tied embedding whose lookup and output projection use the fake-quantized table.

    Scales are per vocabulary row. The projection's input is not act-quantized.
    """

    def __init__(self, embedding: TiedEmbedding, weight_quantizer: WeightQuantizer) -> None:
        nn.Module.__init__(self)
        self.weight = embedding.weight
        self.scale = embedding.scale
        self.weight_quantizer = weight_quantizer

    def weight_in_use(self) -> torch.Tensor:
        return self.weight_quantizer(self.weight)


QUANT_LAYERS = (QuantLinear, QuantTiedEmbedding)
