"""Linear layers as two thinner ones: the truncated SVD of a layer, and the layout of a saved factorized model."""

from __future__ import annotations

import torch
from torch import nn

from fedq.deploy.variant import VariantError
from fedq.model.transformer import Transformer


class FactorizedLinear(nn.Module):
    """``up(down(x))``: an nn.Linear of rank r, stored as its two factors."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def choose_rank(weight: torch.Tensor, singular: torch.Tensor, rank_ratio: float, energy: float) -> int | None:
    """The rank for this layer, or None where factorizing would not make it smaller."""
    out_features, in_features = weight.shape
    if energy > 0:
        kept = torch.cumsum(singular.double() ** 2, 0) / (singular.double() ** 2).sum()
        rank = int(torch.searchsorted(kept, torch.tensor(energy, dtype=torch.float64)).item()) + 1
    else:
        rank = int(rank_ratio * out_features * in_features / (out_features + in_features))
    rank = max(1, min(rank, len(singular)))
    return rank if rank * (out_features + in_features) < out_features * in_features else None


def factorize(model: Transformer, rank_ratio: float, energy: float) -> dict[str, int]:
    """Replace the linear layers where a truncated SVD makes them smaller; return {layer: rank}."""
    ranks = {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        u, s, vh = torch.linalg.svd(module.weight.detach().double(), full_matrices=False)
        rank = choose_rank(module.weight, s, rank_ratio, energy)
        if rank is None:
            continue
        factored = FactorizedLinear(module.in_features, module.out_features, rank, module.bias is not None)
        with torch.no_grad():
            factored.up.weight.copy_((u[:, :rank] * s[:rank]).float())
            factored.down.weight.copy_(vh[:rank].float())
            if module.bias is not None:
                factored.up.bias.copy_(module.bias)
        _replace(model, name, factored)
        ranks[name] = rank
    return ranks


def factorize_to_ranks(model: Transformer, ranks: dict[str, int]) -> None:
    """The factorized layout of a saved model (weights are loaded afterwards)."""
    for name, rank in ranks.items():
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            raise VariantError(f"saved low-rank layer {name} is not a linear layer of this model")
        _replace(model, name, FactorizedLinear(linear.in_features, linear.out_features, rank, linear.bias is not None))


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)
