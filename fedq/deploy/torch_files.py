"""How the PyTorch variants store a model: safetensors (fp32, or int8 codes with per-row scales) + JSON.

``model.json`` holds the network's shape and, for a factorized model, the rank of
every factorized layer, so that the model can be rebuilt before its weights are
loaded. No pickle: every tensor is in safetensors.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from fedq.deploy.factorized import factorize_to_ranks
from fedq.deploy.variant import VariantError
from fedq.files import atomic_write
from fedq.model.transformer import Transformer

WEIGHTS = "weights.safetensors"
MODEL = "model.json"
INT8_SUFFIX = ".int8"  # a linear layer's weight stored as int8 codes ...
SCALE_SUFFIX = ".scale"  # ... and one fp32 scale per output row


def save_model(model: Transformer, folder: Path, int8: bool = False, ranks: dict[str, int] | None = None) -> None:
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    if int8:
        linear_weights = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
        for name in linear_weights:
            weight = state.pop(name).float()
            scale = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
            state[name + INT8_SUFFIX] = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
            state[name + SCALE_SUFFIX] = scale
    atomic_write(folder / WEIGHTS, save(state))
    atomic_write(folder / MODEL, json.dumps({"shape": model.shape_dict(), "ranks": ranks or {}, "int8": int8}, indent=2))


def load_model(folder: Path) -> tuple[Transformer, dict]:
    """The model as stored (int8 layers dequantized to fp32), and its description."""
    description = json.loads((folder / MODEL).read_text())
    model = Transformer.from_shape_dict(description["shape"])
    factorize_to_ranks(model, description["ranks"])
    state = load_file(str(folder / WEIGHTS))
    for name in [n for n in state if n.endswith(INT8_SUFFIX)]:
        base = name.removesuffix(INT8_SUFFIX)
        state[base] = state.pop(name).float() * state.pop(base + SCALE_SUFFIX)[:, None]
    model.load_state_dict(state, strict=True)
    return model.eval(), description


def int8_linear_layers(model: torch.nn.Module, engine: str = "fbgemm") -> torch.nn.Module:
    """Dynamic int8 (activations quantized per call, int8 weights, int8 matmuls) on every nn.Linear.

    ``fbgemm``: ``torch.ao.quantization.quantize_dynamic`` with per-channel weights. It is
    deprecated in favour of torchao, but measured faster here at batch 1 (tiny and small
    models: torchao's ``Int8DynamicActivationInt8WeightConfig`` was 4-8x slower than fp32
    in eager mode, fbgemm 1.3x faster on ``model=small``), so it is used behind this guard:
    its deprecation warnings are silenced, and a torch without it is one clear error.
    ``torchao``: ``quantize_`` with ``Int8DynamicActivationInt8WeightConfig``.
    """
    if engine == "torchao":
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            quantize_,
        )

        quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, _: isinstance(m, torch.nn.Linear))
        return model
    quantization = getattr(torch.ao, "quantization", None)
    if quantization is None or not hasattr(quantization, "quantize_dynamic"):
        raise VariantError(f"this torch {torch.__version__} has no torch.ao.quantization.quantize_dynamic; use variant "
                           "int8-torchao")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantization.quantize_dynamic(
            model, {torch.nn.Linear: quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8
        )
