"""The translation task every entry point builds: device, seeds, corpus, tokenizer, model.

``load_task`` gives the corpus in the configured direction with its cached
SentencePiece tokenizer; ``build_model`` gives the Transformer of
``cfg.model`` over that vocabulary with ``cfg.quant``'s QAT layers.
"""

from __future__ import annotations

import dataclasses
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
from fedq.errors import ConfigError
from fedq.model.transformer import Transformer, TransformerShape
from fedq.quant import quantize_model


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device=cuda was asked for but torch sees no CUDA device (use device=auto or cpu)")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"unknown device '{name}' (use auto, cpu or cuda)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def model_shape(model_cfg: ModelConfig, vocab_size: int, pad_id: int) -> TransformerShape:
    """The one way from ``cfg.model`` to the network's shape: every shape field is copied by name."""
    values = dataclasses.asdict(model_cfg)
    fields = {f.name for f in dataclasses.fields(TransformerShape)} - {"vocab_size", "pad_id"}
    return TransformerShape(vocab_size=vocab_size, pad_id=pad_id, **{name: values[name] for name in fields})


def build_model(cfg: FedqConfig, tokenizer: SubwordTokenizer) -> Transformer:
    """The Transformer of ``cfg.model`` with the QAT layers of ``cfg.quant`` swapped in."""
    model = Transformer(model_shape(cfg.model, tokenizer.vocab_size, tokenizer.pad_id))
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
