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

from fedq.data.batching import encode_pairs
from fedq.deploy.factorized import factorize
from fedq.deploy.settings import DeployConfig
from fedq.deploy.torch_files import int8_linear_layers, load_model, save_model
from fedq.deploy.variant import (
    Source,
    TorchTranslator,
    Translator,
    Variant,
    VariantError,
)
from fedq.engine import (
    StepSettings,
    batch_stream,
    make_optimizer,
    train_steps,
    training_pairs,
)
from fedq.model.transformer import Transformer
from fedq.task import load_task

FINETUNE_LR = 1e-4


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

    @classmethod
    def from_settings(cls, cfg: DeployConfig) -> LowRank:
        return cls(cfg.rank_ratio, cfg.energy, cfg.finetune_steps)

    def build(self, source: Source, folder: Path) -> None:
        model = Transformer.from_shape_dict(source.model.shape_dict())
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
