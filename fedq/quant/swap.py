"""Swap a model's layers for quantized ones by scope, in place (torchao's ``quantize_`` idea).

Scopes: ``attention`` = linear layers under a module named ``*attn`` (Q, K, V and
output projections of self- and cross-attention); ``linear`` = every nn.Linear;
``attention+embedding`` and ``all`` add the tied embedding (and so the output
projection, which shares it).
"""

from __future__ import annotations

from typing import Any, cast

from torch import nn

from fedq.model.adapters import A_NAME, B_NAME, attach
from fedq.model.transformer import TiedEmbedding
from fedq.quant.layers import QUANT_LAYERS, FrozenCodesLinear, QuantLinear, QuantTiedEmbedding
from fedq.quant.quantizers import ActQuantizer, make_weight_quantizer
from fedq.quant.settings import OFF_BITS, QuantConfig, validate_quant_config


def _is_attention(name: str) -> bool:
    parent = name.rpartition(".")[0]
    return parent.endswith("attn")


def _selected(name: str, module: nn.Module, scope: str) -> bool:
    if isinstance(module, QUANT_LAYERS):
        raise ValueError(f"model is already quantized ({name} is a {type(module).__name__})")
    if isinstance(module, TiedEmbedding):
        return scope in ("attention+embedding", "all")
    if isinstance(module, nn.Linear):
        return scope in ("linear", "all") or _is_attention(name)
    return False


def quantize_model(model: nn.Module, cfg: QuantConfig) -> nn.Module:
    """Validate ``cfg`` (a QuantConfig) and swap the layers of its scope in place.

    The new layers hold the same weight/bias tensors, so build the optimizer
    afterwards. LSQ steps are new parameters initialised from the current
    weights: load fp32 weights before quantizing, QAT checkpoints after.
    ``bits=32`` leaves the model unchanged.
    """
    validate_quant_config(cfg)
    if cfg.bits == OFF_BITS:
        return model
    chosen = [(name, module) for name, module in model.named_modules() if name and _selected(name, module, cfg.scope)]
    for name, module in chosen:
        quantizer = make_weight_quantizer(cfg, module.weight)
        if isinstance(module, TiedEmbedding):
            new: nn.Module = QuantTiedEmbedding(module, quantizer)
        else:
            act = ActQuantizer(cfg.act_bits) if cfg.act_bits is not None else None
            new = QuantLinear(module, quantizer, act)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    return model


def hold_base_as_codes(model: nn.Module) -> nn.Module:
    """Replace each QAT linear layer that carries an adapter by its frozen codes (:class:`FrozenCodesLinear`), the
    adapter moved over, in place: what a device that trains only adapters holds. The model no longer packs or
    trains as a whole; it computes the same outputs."""
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantLinear) and hasattr(module, B_NAME):
            frozen = FrozenCodesLinear(module)
            adapted = cast(Any, module)  # attach gave it lora_a, lora_b and lora_scale
            attach(frozen, getattr(adapted, A_NAME), adapted.lora_b.data, adapted.lora_scale)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, frozen)
    return model


def quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> quantized layer (QuantLinear / QuantTiedEmbedding), in model order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, QUANT_LAYERS)}


def quant_summary(model: nn.Module) -> dict | None:
    """What the model's quantized layers amount to, as a QuantConfig-like dict (None if fp32)."""
    layers = quantized_modules(model)
    if not layers:
        return None
    quantizer = cast(Any, next(iter(layers.values()))).weight_quantizer
    embedding = any(isinstance(m, QuantTiedEmbedding) for m in layers.values())
    beyond_attention = any(isinstance(m, QuantLinear) and not _is_attention(n) for n, m in layers.items())
    scope = {(False, False): "attention", (False, True): "linear", (True, False): "attention+embedding"}.get(
        (embedding, beyond_attention), "all"
    )
    act = next((m.act_quantizer for m in layers.values() if getattr(m, "act_quantizer", None) is not None), None)
    return {
        "bits": quantizer.bits,
        "method": quantizer.method,
        "bits_per_weight": quantizer.bits_per_weight,
        "scope": scope,
        "act_bits": cast(Any, act).bits if act is not None else None,
    }


def describe_quantization(model: nn.Module) -> str:
    """One line, e.g. '2-bit lsq on 24 of 24 linear layers (1.2M weights), embedding fp32'."""
    summary = quant_summary(model)
    if summary is None:
        return "fp32 (no quantization)"
    if summary["method"] == "ternary":
        label = f"ternary ({summary['bits_per_weight']:.2f}-bit, 2-bit codes)"
    else:
        label = f"{summary['bits']}-bit {summary['method']}"
    layers = quantized_modules(model)
    linears = [m for m in layers.values() if isinstance(m, QuantLinear)]
    n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    weights = sum(m.weight.numel() for m in linears)
    text = f"{label} on {len(linears)} of {n_linear} linear layers ({weights / 1e6:.2f}M weights)"
    embedding = [m for m in layers.values() if isinstance(m, QuantTiedEmbedding)]
    text += f", embedding {label}" if embedding else ", embedding fp32"
    if summary["act_bits"] is not None:
        text += f", activations {summary['act_bits']}-bit"
    return text
