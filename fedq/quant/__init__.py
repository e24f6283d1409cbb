"""Quantization-aware training: quantizers (STE), quantized layers, swapping by scope, packing, deployed file."""

from fedq.quant.deployed import DeployedFormatError, DeployedSize, load_deployed, save_deployed
from fedq.quant.layers import ActQuantLinear, QuantLinear, QuantTiedEmbedding
from fedq.quant.packing import codes_nbytes, pack_codes, unpack_codes
from fedq.quant.quantizers import (
    ActQuantizer,
    QuantConfigError,
    WeightQuantizer,
    bits_per_weight,
    make_weight_quantizer,
    resolve_method,
    validate_quant_config,
    with_resolved_method,
)
from fedq.quant.swap import describe_quantization, quant_summary, quantize_model, quantized_modules

__all__ = [
    "ActQuantLinear",
    "ActQuantizer",
    "DeployedFormatError",
    "DeployedSize",
    "QuantConfigError",
    "QuantLinear",
    "QuantTiedEmbedding",
    "WeightQuantizer",
    "bits_per_weight",
    "describe_quantization",
    "load_deployed",
    "make_weight_quantizer",
    "codes_nbytes",
    "pack_codes",
    "quant_summary",
    "quantize_model",
    "quantized_modules",
    "resolve_method",
    "save_deployed",
    "unpack_codes",
    "validate_quant_config",
    "with_resolved_method",
]
