"""Building blocks every entry point shares: device, data, tokenizer, model."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedq.config import FedqConfig, ModelConfig
from fedq.data import load_corpus
from fedq.data.corpus import ParallelCorpus
from fedq.data.tokenizer import SubwordTokenizer, load_or_train_tokenizer
from fedq.model.transformer import Transformer, TransformerShape
from fedq.quant import quantize_model


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device=cuda was asked for but torch sees no CUDA device (use device=auto or cpu)")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"unknown device '{name}' (use auto, cpu or cuda)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def model_shape(model_cfg: ModelConfig, tokenizer: SubwordTokenizer) -> TransformerShape:
    return TransformerShape(
        vocab_size=tokenizer.vocab_size,
        d_model=model_cfg.d_model,
        n_heads=model_cfg.n_heads,
        ffn_dim=model_cfg.ffn_dim,
        enc_layers=model_cfg.enc_layers,
        dec_layers=model_cfg.dec_layers,
        dropout=model_cfg.dropout,
        max_positions=model_cfg.max_positions,
        pad_id=tokenizer.pad_id,
    )


def build_model(cfg: FedqConfig, tokenizer: SubwordTokenizer) -> Transformer:
    """The Transformer of ``cfg.model`` with the QAT layers of ``cfg.quant`` swapped in."""
    model = Transformer(model_shape(cfg.model, tokenizer))
    return quantize_model(model, cfg.quant)


def cache_dir(cfg: FedqConfig) -> Path:
    return Path(os.path.expanduser(cfg.data.cache_dir))


@dataclass
class TranslationTask:
    """A corpus in one direction with its tokenizer."""

    corpus: ParallelCorpus
    tokenizer: SubwordTokenizer

    def describe(self) -> str:
        c = self.corpus
        return (
            f"corpus {c.name} {c.src_lang}->{c.tgt_lang}: {len(c.train)} train / {len(c.valid)} valid / "
            f"{len(c.test)} test pairs; vocabulary {self.tokenizer.vocab_size}"
        )


def load_task(cfg: FedqConfig) -> TranslationTask:
    corpus = load_corpus(cfg.data)
    tokenizer = load_or_train_tokenizer(corpus, cfg.data.vocab_size, cache_dir(cfg))
    return TranslationTask(corpus, tokenizer)
