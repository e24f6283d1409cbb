"""The clients' training data, prepared once and cached on disk: tokenizer + encoded shards.

Under Flower's deployment runtime every ClientApp call is a fresh process, so
whatever a client derives from the corpus (the corpus itself, the tokenizer,
the encoded and partitioned pairs) would be rebuilt every round. The first
process that needs them builds them and writes one file,
``data.cache_dir/shards/KEY.npz``; later processes read only that file.

KEY is computed without reading the corpus: from the settings that shape the
shards (``data.*``, ``partition.*``, ``clients``, ``seed``), the corpus files'
names, sizes and modification times, and for the built-in corpus the source of
its generator. A changed file or setting gives a new key, never stale shards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedq.config import FedqConfig
from fedq.data.batching import EncodedPair, encode_pairs
from fedq.data.partition import describe_partition, min_median_max, partition_indices, partition_labels
from fedq.data.tokenizer import SubwordTokenizer
from fedq.engine import within_length
from fedq.files import atomic_write
from fedq.task import TranslationTask, cache_dir, load_task

FORMAT = 2  # 2: with the number of talks per client


@dataclass
class ClientShards:
    """The tokenizer and, per client, the encoded training pairs it trains on."""

    tokenizer: SubwordTokenizer
    shards: list[list[EncodedPair]]
    talks_per_client: list[int] | None = None  # for a corpus with talks (TED): how many distinct talks each holds

    def describe(self) -> str:
        line = describe_partition(self.shards)
        if self.talks_per_client is not None:
            line += f", talks per client min/median/max = {min_median_max(self.talks_per_client)}"
        return line


def shards_key(cfg: FedqConfig) -> str:
    """The cache key of the shards ``cfg`` gives (see the module docstring)."""
    settings = {
        "format": FORMAT,
        "data": {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in ("max_tokens", "cache_dir")},
        "partition": dataclasses.asdict(cfg.partition),
        "clients": cfg.fl.clients,
        "seed": cfg.seed,
        "sources": _source_files(cfg),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:20]


def client_shards(cfg: FedqConfig, task: TranslationTask | None = None) -> ClientShards:
    """The shards of ``cfg``: from the disk cache, else built (from ``task`` if given) and cached."""
    path = cache_dir(cfg) / "shards" / f"{shards_key(cfg)}.npz"
    if path.is_file():
        try:
            return _read(path)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is rebuilt
    shards = build_shards(cfg, task or load_task(cfg))
    atomic_write(path, _encode(shards))
    return shards


def build_shards(cfg: FedqConfig, task: TranslationTask) -> ClientShards:
    """Encode the training split, keep the pairs within ``data.max_len`` and split them among the clients."""
    encoded = encode_pairs(task.corpus.train, task.tokenizer)
    kept = within_length(encoded, cfg.data.max_len)
    talks, topics = task.corpus.train_talks, task.corpus.train_topics
    p = cfg.partition
    labels = partition_labels(
        p.scheme, p.label, [talks[i] for i in kept] if talks is not None else None,
        [len(encoded[i][0]) for i in kept], p.length_buckets,
        [topics[i] for i in kept] if topics is not None else None,
    )
    split = partition_indices(len(kept), cfg.fl.clients, p.scheme, alpha=p.alpha, labels=labels, seed=cfg.seed)
    talks_per_client = [len({talks[kept[i]] for i in shard}) for shard in split] if talks is not None else None
    return ClientShards(task.tokenizer, [[encoded[kept[i]] for i in shard] for shard in split], talks_per_client)


def _source_files(cfg: FedqConfig) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of the files the corpus is read or generated from."""
    data = cfg.data
    if data.name == "demo":
        import fedq.data.demo as demo
        import fedq.data.demo_lexicon as lexicon

        roots = [Path(demo.__file__), Path(lexicon.__file__)]
    elif data.name in ("textdir", "ted"):
        roots = [Path(d).expanduser() for d in str(data.dir).split(os.pathsep) if d]
    else:
        roots = [cache_dir(cfg) / data.name]
    files = sorted(f for root in roots for f in ([root] if root.is_file() else root.rglob("*") if root.is_dir() else []) if f.is_file())
    return [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def _encode(data: ClientShards) -> bytes:
    pairs = [pair for shard in data.shards for pair in shard]
    lengths = np.array([[len(src), len(tgt)] for src, tgt in pairs], np.int32).reshape(-1, 2)
    tokens = np.fromiter((t for src, tgt in pairs for t in (*src, *tgt)), np.int32)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        tokenizer=np.frombuffer(data.tokenizer.proto, np.uint8),
        lengths=lengths,
        tokens=tokens,
        shard_sizes=np.array([len(shard) for shard in data.shards], np.int64),
        talks_per_client=np.array(data.talks_per_client if data.talks_per_client is not None else [], np.int64),
    )
    return buffer.getvalue()


def _read(path: Path) -> ClientShards:
    with np.load(path, allow_pickle=False) as archive:
        tokenizer = SubwordTokenizer(archive["tokenizer"].tobytes())
        lengths, tokens, sizes = archive["lengths"], archive["tokens"].tolist(), archive["shard_sizes"]
        talks = archive["talks_per_client"].tolist() or None
    pairs, offset = [], 0
    for src_len, tgt_len in lengths.tolist():
        pairs.append((tokens[offset : offset + src_len], tokens[offset + src_len : offset + src_len + tgt_len]))
        offset += src_len + tgt_len
    bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    return ClientShards(tokenizer, [pairs[a:b] for a, b in zip(bounds[:-1], bounds[1:])], talks)
