"""Quantized drop-in layers: the only way quantization enters the model.

Each wraps the *same* parameter tensors as the layer it replaces (latent fp32
weights, fp32 bias) and fake-quantizes the weight on every forward.
"""

from __future__ import annotations

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
