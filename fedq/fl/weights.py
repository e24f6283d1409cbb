"""The model's weights as one flat float32 vector: the form they travel and are aggregated in.

The vector holds the model's floating-point state (latent QAT weights and
quantizer steps included) in state-dict order; for a model with adapters
(``fedq.model.adapters``), only the adapters' trained factors: the frozen base
never travels. It is the only flatten /
unflatten pair in fedq: codecs encode it, Flower averages it (as one array),
and clients load it back into their model.
"""

from __future__ import annotations

import numpy as np
import torch

from fedq.errors import FedqError
from fedq.model.adapters import B_NAME


def float_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors the vector holds, by name, in state-dict order (one state_dict call: it walks every module)."""
    state = model.state_dict()
    floats = {name: tensor for name, tensor in state.items() if tensor.is_floating_point()}
    return {name: tensor for name, tensor in floats.items() if name.endswith("." + B_NAME)} or floats


def model_to_vector(model: torch.nn.Module) -> np.ndarray:
    parts = [tensor.detach().float().cpu().reshape(-1) for tensor in float_state(model).values()]
    return torch.cat(parts).numpy().astype(np.float32, copy=False)


def vector_to_model(model: torch.nn.Module, vector: np.ndarray) -> None:
    tensors = list(float_state(model).values())
    total = sum(tensor.numel() for tensor in tensors)
    if vector.shape != (total,):
        raise FedqError(f"weight vector has {vector.size} values, the model has {total}")
    flat = torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float32))
    offset = 0
    with torch.no_grad():
        for tensor in tensors:
            tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()
