"""The translation task every entry point builds: device, seeds, corpus, tokenizer, model.

``load_task`` gives the corpus in the configured direction with its cached
SentencePiece tokenizer; ``build_model`` gives the Transformer of
``cfg.model`` over that vocabulary with ``cfg.quant``'s QAT layers.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from fedq.checkpoint import TOKENIZER, CheckpointError, check_weights_fit, load_weights_into, read_checkpoint
from fedq.config import FedqConfig
from fedq.data.corpora import load_corpus
from fedq.data.corpus import ParallelCorpus
from fedq.data.tokenizer import SubwordTokenizer, load_or_train_tokenizer, pieces_per_word
from fedq.errors import ConfigError
from fedq.files import FileWriteError
from fedq.model.adapters import B_NAME, add_adapters
from fedq.model.transformer import Transformer
from fedq.quant import quantize_model

log = logging.getLogger(__name__)


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


def build_model(cfg: FedqConfig, tokenizer: SubwordTokenizer, init_from: str | None = None) -> Transformer:
    """The Transformer of ``cfg.model`` with the QAT layers of ``cfg.quant`` swapped in, and the adapters of
    ``cfg.adapter`` (which freeze everything else).

    ``init_from`` (a checkpoint) gives the starting weights: they are loaded before the QAT layers are swapped
    in, so a quantizer the checkpoint has no state for starts from them; quantizer state of the same setting
    (learned steps) and adapters of the same rank are loaded after, so a QAT checkpoint starts as the model its
    packed file holds.
    """
    model = Transformer(cfg.model, tokenizer.vocab_size, tokenizer.pad_id)
    source = read_checkpoint(init_from) if init_from else None
    if source is not None:
        if source.tokenizer.fingerprint != tokenizer.fingerprint:
            raise CheckpointError(
                f"init_from={init_from} was trained with tokenizer {source.tokenizer.fingerprint[:12]} "
                f"({source.tokenizer.vocab_size} pieces), this run's is {tokenizer.fingerprint[:12]} "
                f"({tokenizer.vocab_size} pieces); use data.tokenizer={source.folder / TOKENIZER}"
            )
        state = source.state_dict()
        skipped = load_weights_into(model, state, f"init_from={init_from}")
    model = cast(Transformer, add_adapters(quantize_model(model, cfg.quant), cfg.adapter, cfg.seed))
    if source is not None:
        own = model.state_dict()
        carried = {key: state[key] for key in skipped if key in own and own[key].shape == state[key].shape}
        if lost := [key for key in skipped if key.endswith("." + B_NAME) and key not in carried]:
            raise CheckpointError(f"init_from={init_from} holds adapters of another rank ({lost[0]}: "
                                  f"{tuple(state[lost[0]].shape)}) "
                                  f"than adapter.rank={cfg.adapter.rank}; continue with the rank they were trained with")
        model.load_state_dict(carried, strict=False)
        unused = len(skipped) - len(carried)
        log.info(f"initialised from {source.folder}" + (f" ({unused} tensors not used)" if unused else ""))
    return model


def check_init_from(cfg: FedqConfig) -> None:
    """``init_from`` read, and its weights' shapes checked against ``cfg.model`` (built on the meta device, with the
    checkpoint's vocabulary, which the run must share), before any corpus, tokenizer or Ray work."""
    source = read_checkpoint(str(cfg.init_from))
    with torch.device("meta"):
        model = Transformer(cfg.model, source.tokenizer.vocab_size, source.tokenizer.pad_id)
    check_weights_fit(model.state_dict(), source.state_dict(), f"init_from={cfg.init_from}")


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
            f"{len(c.test)} test pairs; vocabulary {self.tokenizer.vocab_size} "
            f"({pieces_per_word(self.tokenizer, c.train):.2f} pieces per source word on the training split)"
        )


def load_task(cfg: FedqConfig) -> TranslationTask:
    """The corpus and its tokenizer; a cache that cannot be written names the setting to change."""
    try:
        corpus = load_corpus(cfg.data)
        if cfg.data.tokenizer:
            tokenizer = SubwordTokenizer.load(Path(cfg.data.tokenizer).expanduser())
        else:
            tokenizer = load_or_train_tokenizer(corpus, cfg.data.vocab_size, cache_dir(cfg))
    except FileWriteError as err:
        raise FileWriteError(f"data.cache_dir={cfg.data.cache_dir}: {err}") from None
    if not cfg.data.tokenizer and tokenizer.vocab_size < cfg.data.vocab_size:
        log.info(f"note: the tokenizer has {tokenizer.vocab_size:,} pieces, fewer than data.vocab_size={cfg.data.vocab_size:,}: "
                 "the training split gives no more")
    return TranslationTask(corpus, tokenizer)
