"""The one shape every corpus takes: train/valid/test lists of (source, target) strings."""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from fedq.errors import FedqError
from fedq.files import atomic_write

Pairs = list[tuple[str, str]]


class CorpusError(FedqError):
    """A corpus cannot be found, downloaded or read; the message is one line for the user."""


@dataclass(frozen=True)
class ParallelCorpus:
    name: str
    src_lang: str
    tgt_lang: str
    train: Pairs
    valid: Pairs
    test: Pairs
    train_talks: Optional[list[str]] = None  # talk id per training pair (IWSLT), for natural partitions
    train_topics: Optional[list[str]] = None  # topic per training pair (TED keywords), for topic partitions

    def fingerprint(self, splits: tuple[str, ...] = ("train", "valid", "test")) -> str:
        """Stable hash of the languages and every string of ``splits`` (talk ids with train), for cache keys.

        The tokenizer's cache key uses the training split alone, which is all it is
        trained on, so that limiting the valid/test sets does not retrain it.
        """
        h = hashlib.sha256()
        _update(h, [self.src_lang, self.tgt_lang])
        for name in splits:
            split = getattr(self, name)
            _update(h, [f"{name}:{len(split)}"])
            for src, tgt in split:
                _update(h, (src, tgt))
        if "train" in splits:
            _update(h, ["talks"] + list(self.train_talks or []))
            _update(h, ["topics"] + list(self.train_topics or []))
        return h.hexdigest()


def _update(h: Any, strings: Iterable[str]) -> None:
    # Length-prefixed, so that no two different string sequences hash alike.
    for s in strings:
        data = s.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)


def download(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Fetch ``url`` into ``dest`` atomically (no half-written caches).

    Raises OSError (urllib's errors included) for the caller to turn into a CorpusError.
    """
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data = response.read()
    atomic_write(dest, data)
