"""Quantization-aware training: quantizers (STE), quantized layers, swapping by scope, packing, deployed file.

``settings`` (the ``quant.*`` settings and their checks) imports no torch.
"""

from fedq.quant.deployed import (
    DeployedFormatError,
    DeployedSize,
    load_deployed,
    save_deployed,
)
from fedq.quant.layers import ActQuantLinear, QuantLinear, QuantTiedEmbedding
from fedq.quant.packing import codes_nbytes, pack_codes, unpack_codes
from fedq.quant.quantizers import ActQuantizer, WeightQuantizer, make_weight_quantizer
from fedq.quant.settings import (
    QuantConfig,
    QuantConfigError,
    bits_per_weight,
    resolve_method,
    validate_quant_config,
    with_resolved_method,
)
from fedq.quant.swap import (
    describe_quantization,
    quant_summary,
    quantize_model,
    quantized_modules,
)

__all__ = [
    "ActQuantLinear",
    "ActQuantizer",
    "DeployedFormatError",
    "DeployedSize",
    "QuantConfig",
    "QuantConfigError",
    "QuantLinear",
    "QuantTiedEmbedding",
    "WeightQuantizer",
    "bits_per_weight",
    "codes_nbytes",
    "describe_quantization",
    "load_deployed",
    "make_weight_quantizer",
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
