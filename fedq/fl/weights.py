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


def float_state_names(model: torch.nn.Module) -> list[str]:
    """The names of the tensors the vector holds, in state-dict order."""
    names = [name for name, tensor in model.state_dict().items() if tensor.is_floating_point()]
    return [name for name in names if name.endswith("." + B_NAME)] or names


def model_to_vector(model: torch.nn.Module) -> np.ndarray:
    state = model.state_dict()
    parts = [state[name].detach().float().cpu().reshape(-1) for name in float_state_names(model)]
    return torch.cat(parts).numpy().astype(np.float32, copy=False)


def vector_to_model(model: torch.nn.Module, vector: np.ndarray) -> None:
    state = model.state_dict()
    names = float_state_names(model)
    total = sum(state[name].numel() for name in names)
    if vector.shape != (total,):
        raise FedqError(f"weight vector has {vector.size} values, the model has {total}")
    flat = torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float32))
    offset = 0
    with torch.no_grad():
        for name in names:
            tensor = state[name]
            tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()
