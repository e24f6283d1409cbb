"""A joint SentencePiece vocabulary for both languages, trained on the training split and cached."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from fedq.data.corpus import ParallelCorpus
from fedq.errors import FedqError
from fedq.files import atomic_write

MAX_TRAINING_SENTENCES = 100_000  # a deterministic sample above this keeps training to seconds
TRAINER_SETTINGS: dict[str, Any] = {
    "model_type": "unigram",
    "character_coverage": 1.0,
    "pad_id": 0,
    "unk_id": 1,
    "bos_id": 2,
    "eos_id": 3,
    "hard_vocab_limit": False,  # a small corpus with a large requested vocabulary still trains
}


class TokenizerError(FedqError):
    """A tokenizer cannot be trained or loaded; the message is one line for the user."""


class SubwordTokenizer:
    pad_id = 0
    unk_id = 1
    bos_id = 2
    eos_id = 3

    def __init__(self, model_proto: bytes):
        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size: int = self._sp.vocab_size()
        self.fingerprint: str = hashlib.sha256(model_proto).hexdigest()  # tells vocabularies apart

    @property
    def proto(self) -> bytes:
        """The serialized SentencePiece model."""
        return self._proto

    def pieces(self) -> list[str]:
        """The vocabulary: piece strings in id order (what engines such as CTranslate2 take)."""
        return [self._sp.id_to_piece(i) for i in range(self.vocab_size)]

    def encode(self, text: str) -> list[int]:
        """Subword ids of ``text``, without bos/eos."""
        return self._sp.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Detokenized text up to the first eos; pad and bos are dropped."""
        pieces = []
        for i in map(int, ids):
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                pieces.append(i)
        return self._sp.decode(pieces)

    @classmethod
    def load(cls, path: str | Path) -> SubwordTokenizer:
        try:
            return cls(Path(path).read_bytes())
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"cannot load tokenizer {path}: {e}") from e

    def save(self, path: str | Path) -> None:
        atomic_write(path, self._proto)


def pieces_per_word(tokenizer: SubwordTokenizer, pairs: Sequence[tuple[str, str]], limit: int = 2000) -> float:
    """Subword pieces per whitespace word of the source side of (the first ``limit``) ``pairs``: what a
    tokenizer trained on other text costs on this one."""
    sources = [src for src, _ in pairs[:limit]]
    words = sum(len(src.split()) for src in sources)
    return sum(len(tokenizer.encode(src)) for src in sources) / max(words, 1)


def load_or_train_tokenizer(corpus: ParallelCorpus, vocab_size: int, cache_dir: str | Path) -> SubwordTokenizer:
    """The tokenizer for this corpus and size: from ``cache_dir/tokenizers`` if there, else trained now."""
    key = json.dumps(
        {"corpus": corpus.fingerprint(("train",)), "vocab_size": vocab_size, "max_sentences": MAX_TRAINING_SENTENCES,
         **TRAINER_SETTINGS},
        sort_keys=True,
    )
    path = Path(cache_dir).expanduser() / "tokenizers" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.model"
    if path.is_file():
        return SubwordTokenizer.load(path)
    tokenizer = SubwordTokenizer(train_sentencepiece(_training_sentences(corpus), vocab_size))
    tokenizer.save(path)
    return tokenizer


def train_sentencepiece(sentences: list[str], vocab_size: int) -> bytes:
    """Train a model on ``sentences`` in memory and return its serialized proto."""
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=vocab_size,
            num_threads=max(1, min(os.cpu_count() or 1, 8)),
            minloglevel=2,  # silence SentencePiece's progress log
            **TRAINER_SETTINGS,
        )
    except RuntimeError as e:
        raise TokenizerError(f"SentencePiece training failed (data.vocab_size={vocab_size}): {e}") from e
    return model.getvalue()


def _training_sentences(corpus: ParallelCorpus) -> list[str]:
    sentences = [s for pair in corpus.train for s in pair]
    if len(sentences) > MAX_TRAINING_SENTENCES:
        sentences = random.Random(0).sample(sentences, MAX_TRAINING_SENTENCES)
    return sentences
