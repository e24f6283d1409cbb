"""Low-rank adapters over a frozen base (FFA-LoRA): what trains and travels when ``adapter.rank`` > 0.

Every linear layer (plain, QAT or deployed) gets ``lora_a`` (rank x in: drawn from the run's seed and
the layer's name, never trained, a buffer) and ``lora_b`` (out x rank: zeros at the start, trained);
its output gains ``scale * B (A x)`` with ``scale = alpha / rank``. Every other tensor is frozen: the
base keeps its pre-trained low-bit codes. Because A is fixed and the same on every client, the
clients' average of ``B_k A`` is ``(average of B_k) A``, so FedAvg of the B factors is exact FedAvg of
the low-rank updates (Sun et al., 2024, "Improving LoRA in privacy-preserving federated learning");
averaging A and B separately, as plain LoRA would, is not the average of their products.

The adapters stay beside the base through training and in the packed file (fp32); loading a packed
file merges them into the dequantized weights (:func:`merge_adapters`), so every engine downstream
sees a plain model.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from fedq.errors import ConfigError

A_NAME, B_NAME = "lora_a", "lora_b"


@dataclass
class AdapterConfig:
    """``adapter.*``: rank 0 trains and sends the whole model; rank r trains and sends only the adapters."""

    rank: int = 0
    alpha: float = 32.0  # the adapter path's scale is alpha / rank


def validate_adapter_config(cfg: AdapterConfig, widths: tuple[int, ...]) -> None:
    """``widths``: the input and output widths of the model's linear layers."""
    if cfg.rank < 0:
        raise ConfigError(f"adapter.rank={cfg.rank} must be >= 0 (0 = no adapters: the whole model trains)")
    if cfg.rank > min(widths):
        raise ConfigError(f"adapter.rank={cfg.rank} is larger than the narrowest linear layer ({min(widths)} wide): "
                          "a low-rank adapter needs rank <= min(in, out)")
    if cfg.alpha <= 0:
        raise ConfigError(f"adapter.alpha={cfg.alpha} must be > 0")


def _frozen_factor(seed: int, name: str, rank: int, width: int) -> torch.Tensor:
    """A: Gaussian with variance 1/width, the same in every process for this seed and layer."""
    generator = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little"))
    return torch.randn(rank, width, generator=generator) / math.sqrt(width)


def _adapter_path(module: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
    """(``module``: a linear layer that ``attach`` gave lora_a, lora_b and lora_scale.)"""
    return output + module.lora_scale * F.linear(F.linear(inputs[0], module.lora_a), module.lora_b)


def add_adapters(model: nn.Module, cfg: AdapterConfig, seed: int) -> nn.Module:
    """Freeze ``model`` and give each linear layer an adapter, in place (rank 0: unchanged)."""
    if cfg.rank == 0:
        return model
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear):
            device = module.weight.device
            attach(module, _frozen_factor(seed, name, cfg.rank, module.in_features).to(device),
                   torch.zeros(module.out_features, cfg.rank, device=device), cfg.alpha / cfg.rank)
    return model


def attach(linear: Any, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
    """Give a linear layer the adapter path ``scale * b (a x)`` (a frozen, b trained)."""
    linear.register_buffer(A_NAME, a)
    linear.lora_b = nn.Parameter(b)
    linear.lora_scale = scale
    linear.register_forward_hook(_adapter_path)


def adapter_scale(model: nn.Module) -> float | None:
    """The adapters' scale, or None for a model without adapters."""
    return next((float(cast(Any, m).lora_scale) for m in model.modules() if hasattr(m, B_NAME)), None)


def merge_adapters(model: nn.Module, state: dict[str, torch.Tensor], scale: float) -> None:
    """Add ``scale * B A`` of the adapters in ``state`` (``X.lora_a``, ``X.lora_b``) to the weights of ``model``'s
    layers ``X``: the plain model that computes what the base with its adapters computed."""
    with torch.no_grad():
        for key in [k for k in state if k.endswith("." + A_NAME)]:
            layer = key.removesuffix("." + A_NAME)
            weight = cast(nn.Linear, model.get_submodule(layer)).weight
            weight += scale * (state[f"{layer}.{B_NAME}"].to(weight) @ state[key].to(weight))
