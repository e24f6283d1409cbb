"""The ``data.*`` and ``partition.*`` settings, the names they accept, and their checks.

Checked without reading a file, before any corpus, tokenizer or Ray work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from fedq.data.corpus import CorpusError
from fedq.data.partition import LABELS, SCHEMES, PartitionError, uses_talks

CORPORA = ("demo", "textdir", "multi30k", "iwslt2017", "ted")
CORPORA_WITH_TALKS = ("iwslt2017", "ted")  # corpora whose training pairs carry a talk id
CORPORA_WITH_TOPICS = ("ted",)  # ... and a topic
MIN_VOCAB = 8  # the four special pieces and a few more
_DE_EN = {"de", "en"}


@dataclass
class DataConfig:
    name: str = "demo"  # demo | textdir | multi30k | iwslt2017 | ted
    src: str = "de"
    tgt: str = "en"
    dir: Optional[str] = None  # textdir: folder with {split}.{lang}[.gz]; ted: folders of IWSLT XML (DIR:DIR)
    test_split: Optional[str] = None  # textdir: which test file (default: first test*)
    # ted: which official sets make each split
    train_splits: list[str] = field(default_factory=lambda: ["dev2010", "tst2010", "tst2011", "tst2012", "tst2013"])
    valid_splits: list[str] = field(default_factory=lambda: ["tst2014"])
    test_splits: list[str] = field(default_factory=lambda: ["tst2015", "tst2016", "tst2017"])
    cache_dir: str = "~/.cache/fedq"
    vocab_size: int = 2000  # pieces of the tokenizer trained on the training split (not used with data.tokenizer)
    tokenizer: Optional[str] = None  # a SentencePiece model to use instead (a pre-trained checkpoint's tokenizer.model)
    max_tokens: int = 4096  # token budget per batch (source + target tokens)
    max_len: int = 128  # pairs with a side longer than this (in subword tokens) are not trained on
    max_train_pairs: int = 0  # 0 = all; else keep the first N training pairs
    max_eval_pairs: int = 0  # 0 = all; else evaluate on the first N valid/test pairs
    demo_train_size: int = 24000
    demo_eval_size: int = 1000
    seed: int = 1


@dataclass
class EvalConfig:
    """``eval.*`` (fedq.evaluate): score a checkpoint on parallel files of your own instead of a corpus's splits."""

    src: Optional[str] = None  # a file of source sentences, one per line (plain or .gz)
    ref: Optional[str] = None  # the reference translations, line-aligned with src


@dataclass
class PartitionConfig:
    scheme: str = "iid"  # iid | dirichlet | natural
    alpha: float = 0.5
    label: str = "length"  # dirichlet label: length | talk | topic
    length_buckets: int = 8
    shard_size: int = 0  # pairs per client (iid: exactly; others: at most); 0 = the whole training split is shared out
    holdout: float = 0.0  # fraction of each client's pairs kept from training and scored as its own text (its last ones)


def validate_data_config(cfg: DataConfig) -> None:
    """The ``data.*`` settings (one CorpusError line)."""
    if cfg.name not in CORPORA:
        raise CorpusError(f"unknown corpus data.name={cfg.name!r}; choose one of: {', '.join(CORPORA)}")
    if cfg.src == cfg.tgt:
        raise CorpusError(f"data.src and data.tgt are both {cfg.src!r}; choose two languages")
    if cfg.name != "textdir" and {cfg.src, cfg.tgt} != _DE_EN:
        raise CorpusError(f"data={cfg.name} is German–English: use data.src=de data.tgt=en or the reverse")
    if cfg.name == "textdir" and not cfg.dir:
        raise CorpusError("data=textdir needs data.dir=PATH (a folder of {split}.{lang}[.gz] files)")
    if cfg.name == "ted" and not (cfg.dir and cfg.train_splits and cfg.valid_splits and cfg.test_splits):
        raise CorpusError("data=ted needs data.dir=DIR[:DIR...] and data.train_splits, valid_splits, test_splits")
    if cfg.max_train_pairs < 0 or cfg.max_eval_pairs < 0:
        raise CorpusError("data.max_train_pairs and data.max_eval_pairs must be >= 0 (0 = all)")
    if cfg.vocab_size < MIN_VOCAB:
        raise CorpusError(f"data.vocab_size={cfg.vocab_size} must be >= {MIN_VOCAB}")
    for name in ("max_tokens", "max_len", "demo_train_size", "demo_eval_size"):
        if getattr(cfg, name) < 1:
            raise CorpusError(f"data.{name}={getattr(cfg, name)} must be >= 1")
    if cfg.seed < 0:
        raise CorpusError(f"data.seed={cfg.seed} must be >= 0")


def validate_partition(cfg: PartitionConfig, corpus: str) -> None:
    """The ``partition.*`` settings, for a run on corpus ``corpus`` (one PartitionError line)."""
    if cfg.scheme not in SCHEMES:
        raise PartitionError(f"partition.scheme={cfg.scheme!r} is unknown; choose one of {', '.join(SCHEMES)}")
    if cfg.label not in LABELS:
        raise PartitionError(f"partition.label={cfg.label!r} is unknown; choose one of {', '.join(LABELS)}")
    if cfg.scheme == "dirichlet" and cfg.alpha <= 0:
        raise PartitionError(f"partition.alpha={cfg.alpha}: a Dirichlet partition needs alpha > 0")
    if cfg.length_buckets < 1:
        raise PartitionError(f"partition.length_buckets={cfg.length_buckets} must be >= 1")
    if cfg.shard_size < 0:
        raise PartitionError(f"partition.shard_size={cfg.shard_size} must be >= 0 (0 = share out the whole training split)")
    if not 0.0 <= cfg.holdout < 1.0:
        raise PartitionError(f"partition.holdout={cfg.holdout} must be in [0, 1) (a fraction of each client's pairs)")
    if uses_talks(cfg.scheme, cfg.label) and corpus not in CORPORA_WITH_TALKS:
        raise PartitionError(
            f"partition.scheme={cfg.scheme} partition.label={cfg.label} needs talk ids; corpus {corpus} has none "
            f"(use data={' or data='.join(CORPORA_WITH_TALKS)})"
        )
    if cfg.scheme == "dirichlet" and cfg.label == "topic" and corpus not in CORPORA_WITH_TOPICS:
        raise PartitionError(f"partition.label=topic needs talk topics; corpus {corpus} has none (use data=ted)")


def validate_eval_config(cfg: EvalConfig) -> None:
    if (cfg.src is None) != (cfg.ref is None):
        raise CorpusError("eval.src and eval.ref go together: give both files (sources and references) or neither")
