"""``lowrank``: truncated SVD of the linear layers, W ~ (U_r S_r)(V_r^T), as two thinner layers.

A layer of m outputs and n inputs becomes n -> r -> m, which pays only where
r (m + n) < m n. The rank keeps ``deploy.rank_ratio`` of the layer's parameters
(0.5: half), or, with ``deploy.energy``, the fewest singular values whose squares
keep that fraction of the layer's squared norm. ``deploy.finetune_steps`` then
trains the factorized model on the checkpoint's training corpus (Adam, lr 1e-4),
which the truncation usually needs. ``lowrank-int8`` stores and runs the
factorized layers in int8 as the ``int8`` variant does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fedq.data.batching import encode_pairs
from fedq.deploy.torch_files import int8_linear_layers, load_model, save_model
from fedq.deploy.variant import Source, TorchTranslator, Translator, Variant, VariantError
from fedq.engine import StepSettings, batch_stream, make_optimizer, train_steps, training_pairs
from fedq.model.transformer import Transformer
from fedq.task import load_task

FINETUNE_LR = 1e-4


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


def finetune(model: Transformer, source: Source, steps: int) -> None:
    """``steps`` Adam steps on the checkpoint's training corpus, with its batch size and loss."""
    cfg = source.cfg
    task = load_task(cfg)
    if task.tokenizer.fingerprint != source.tokenizer.fingerprint:
        raise VariantError("the checkpoint's training corpus no longer gives its tokenizer; lowrank cannot fine-tune")
    pairs = training_pairs(encode_pairs(task.corpus.train, task.tokenizer), cfg.data.max_len)
    settings = StepSettings(torch.device("cpu"), task.tokenizer.pad_id, cfg.train.label_smoothing, cfg.train.clip_norm)
    stream = batch_stream(pairs, cfg.data.max_tokens, task.tokenizer, seed=cfg.seed)
    train_steps(model, stream, make_optimizer(model, FINETUNE_LR, cfg.train.betas), steps, settings)
    model.eval()


class LowRank(Variant):
    name = "lowrank"
    int8 = False

    def __init__(self, rank_ratio: float = 0.5, energy: float = 0.0, finetune_steps: int = 0) -> None:
        self.rank_ratio, self.energy, self.finetune_steps = rank_ratio, energy, finetune_steps

    def build(self, source: Source, folder: Path) -> None:
        model = Transformer(source.model.shape)
        model.load_state_dict(source.model.state_dict())
        ranks = factorize(model, self.rank_ratio, self.energy)
        if not ranks:
            raise VariantError("no linear layer gets smaller at this rank: lower deploy.rank_ratio or deploy.energy")
        if self.finetune_steps:
            finetune(model, source, self.finetune_steps)
        save_model(model.eval(), folder, int8=self.int8, ranks=ranks)

    def load(self, folder: Path, source: Source) -> Translator:
        model, _ = load_model(folder)
        return TorchTranslator(int8_linear_layers(model) if self.int8 else model, source.tokenizer, source.decode)


class LowRankInt8(LowRank):
    name = "lowrank-int8"
    int8 = True
