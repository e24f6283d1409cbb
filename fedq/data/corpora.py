"""``load_corpus(cfg.data)``: the one entry point for text.

Every corpus comes back as a :class:`~fedq.data.corpus.ParallelCorpus` in the
configured direction, trimmed to the configured sizes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fedq.data.corpus import CorpusError, ParallelCorpus
from fedq.data.iwslt import load_iwslt2017
from fedq.data.multi30k import load_multi30k
from fedq.data.settings import DataConfig, validate_data_config
from fedq.data.tedxml import load_ted_xml
from fedq.data.textdir import load_textdir


def load_corpus(cfg: DataConfig) -> ParallelCorpus:
    """Load ``cfg.name`` in the direction ``cfg.src`` → ``cfg.tgt`` and apply the size limits."""
    validate_data_config(cfg)
    corpus = _limit(_load(cfg), cfg.max_train_pairs, cfg.max_eval_pairs)
    for split in ("train", "valid", "test"):
        if not getattr(corpus, split):
            raise CorpusError(f"corpus {corpus.name} ({cfg.src}->{cfg.tgt}) has an empty {split} split")
    return corpus


def _load(cfg: DataConfig) -> ParallelCorpus:
    cache_dir = Path(cfg.cache_dir).expanduser()
    if cfg.name == "demo":
        from fedq.data.demo import build_demo_corpus

        train, valid, test = build_demo_corpus(cfg.demo_train_size, cfg.demo_eval_size, cfg.seed)
        if cfg.src == "en":
            train, valid, test = ([(en, de) for de, en in split] for split in (train, valid, test))
        return ParallelCorpus("demo", cfg.src, cfg.tgt, list(train), list(valid), list(test))
    if cfg.name == "textdir":
        return load_textdir(str(cfg.dir), cfg.src, cfg.tgt, test_split=cfg.test_split)  # data.dir: checked as given
    if cfg.name == "multi30k":
        return load_multi30k(cache_dir, cfg.src, cfg.tgt, test_split=cfg.test_split)
    if cfg.name == "ted":
        return load_ted_xml(str(cfg.dir), cfg.src, cfg.tgt, cfg.train_splits, cfg.valid_splits, cfg.test_splits)
    return load_iwslt2017(cache_dir, cfg.src, cfg.tgt, test_split=cfg.test_split)


def _limit(corpus: ParallelCorpus, max_train: int, max_eval: int) -> ParallelCorpus:
    """Keep the first ``max_train`` training and ``max_eval`` valid/test pairs (0 = all)."""
    train_end = max_train or None
    eval_end = max_eval or None
    talks = corpus.train_talks[:train_end] if corpus.train_talks is not None else None
    topics = corpus.train_topics[:train_end] if corpus.train_topics is not None else None
    return replace(
        corpus,
        train=corpus.train[:train_end],
        valid=corpus.valid[:eval_end],
        test=corpus.test[:eval_end],
        train_talks=talks,
        train_topics=topics,
    )
