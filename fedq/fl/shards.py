"""The clients' training data, prepared once and cached on disk; a client reads only its own shard.

Every process that plays clients (a Ray actor, a SuperNode's fresh ClientApp
process) needs the tokenizer and the encoded pairs of the clients it plays,
never the corpus itself. The first process that needs them builds them and
writes one folder, ``data.cache_dir/shards/KEY/``:

    tokenizer.model   the SentencePiece model
    tokens.npy        every pair's source then target ids (int32), client after client
    pairs.npy         per pair: its first token and its source length (int64, [pairs, 2])
    clients.npy       per client: its first pair ([clients + 1], int64)
    talks.npy         per client: how many distinct talks it holds (corpora with talks)
    held.npy          the training-split indices of the pairs held out from training (partition.holdout),
                      client after client: each client's last ones, scored as its own text
    held_clients.npy  per client: its first held-out pair ([clients + 1], int64)
    root.npy          the training-split indices of the server's root set (``fl.root_pairs``, FLTrust): pairs
                      drawn before the clients' split, so that no client holds them
    done.json         written last: the folder is complete

Later processes memory-map the arrays and read a client's shard when it is
sampled, so a fleet of any size costs a process what its clients cost.

KEY is computed without reading the corpus: from the settings that shape the
shards (``data.*``, ``partition.*``, ``clients``, ``seed``), the corpus files'
names, sizes and modification times, and for the built-in corpus the source of
its generator (and ``fl.root_pairs`` where set). A changed file or setting gives a new key, never stale shards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedq.config import FedqConfig
from fedq.data.batching import EncodedPair, encode_pairs
from fedq.data.partition import min_median_max, partition_indices, partition_labels
from fedq.data.tokenizer import SubwordTokenizer
from fedq.engine import budget_note, within_length
from fedq.errors import ConfigError
from fedq.files import atomic_write
from fedq.fl.defences import root_pairs
from fedq.task import TranslationTask, cache_dir, load_task

log = logging.getLogger(__name__)

FORMAT = 5  # 3: a folder of memory-mapped arrays, one shard read at a time; 4: held-out pairs; 5: the root set
ARRAYS = ("tokens", "pairs", "clients", "talks", "held", "held_clients", "root")


@dataclass
class ClientShards:
    """The tokenizer and, per client, the encoded training pairs it trains on (read on demand)."""

    tokenizer: SubwordTokenizer
    tokens: np.ndarray
    pairs: np.ndarray
    clients: np.ndarray
    talks_per_client: np.ndarray | None = None  # for a corpus with talks (TED): how many distinct talks each holds
    held: np.ndarray | None = None  # training-split indices held out from training, client after client
    held_clients: np.ndarray | None = None  # per client: its first entry of ``held``
    root: np.ndarray | None = None  # training-split indices of the server's root set (fl.root_pairs), in no shard

    def __len__(self) -> int:
        return len(self.clients) - 1

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.clients)

    def shard(self, client: int) -> list[EncodedPair]:
        """The encoded pairs of one client."""
        first, last = int(self.clients[client]), int(self.clients[client + 1])
        if first == last:
            return []
        starts = self.pairs[first:last, 0]
        sources = self.pairs[first:last, 1]
        end = int(self.pairs[last, 0]) if last < len(self.pairs) else len(self.tokens)
        ids = np.asarray(self.tokens[int(starts[0]) : end]).tolist()
        bounds = [int(s) - int(starts[0]) for s in starts] + [end - int(starts[0])]
        return [(ids[a : a + int(n)], ids[a + int(n) : b]) for a, n, b in zip(bounds[:-1], sources, bounds[1:])]

    def held_out(self, client: int) -> list[int]:
        """The training-split indices of the pairs ``client`` holds but does not train on (its own test text)."""
        if self.held is None or self.held_clients is None:
            return []
        return np.asarray(self.held[int(self.held_clients[client]) : int(self.held_clients[client + 1])]).tolist()

    def describe(self) -> str:
        line = f"{len(self)} clients, {int(self.sizes.sum())} pairs, shard size min/median/max = {min_median_max(self.sizes)}"
        if self.talks_per_client is not None:
            line += f", talks per client min/median/max = {min_median_max(self.talks_per_client)}"
        if self.held_clients is not None and self.held_clients[-1]:
            line += f", held out per client min/median/max = {min_median_max(np.diff(self.held_clients))}"
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
    if root_pairs(cfg.fl):
        settings["root_pairs"] = root_pairs(cfg.fl)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:20]


def client_shards(cfg: FedqConfig, task: TranslationTask | None = None) -> ClientShards:
    """The shards of ``cfg``: memory-mapped from the disk cache, else built (from ``task`` if given) and cached."""
    folder = cache_dir(cfg) / "shards" / shards_key(cfg)
    if (folder / "done.json").is_file():
        try:
            return _read(folder)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt
    built = build_shards(cfg, task or load_task(cfg))
    _write(folder, built)
    return _read(folder)


def build_shards(cfg: FedqConfig, task: TranslationTask) -> ClientShards:
    """Encode the training split, keep the pairs within ``data.max_len`` and split them among the clients."""
    encoded = encode_pairs(task.corpus.train, task.tokenizer)
    kept, root = carve_root(within_length(encoded, cfg.data.max_len), root_pairs(cfg.fl), cfg.fl.clients, cfg.seed)
    if note := budget_note([encoded[i] for i in kept], cfg.data.max_tokens):
        log.info(note)
    talks, topics = task.corpus.train_talks, task.corpus.train_topics
    p = cfg.partition
    labels = partition_labels(
        p.scheme, p.label, [talks[i] for i in kept] if talks is not None else None,
        [len(encoded[i][0]) for i in kept], p.length_buckets,
        [topics[i] for i in kept] if topics is not None else None,
    )
    split = partition_indices(len(kept), cfg.fl.clients, p.scheme, alpha=p.alpha, labels=labels, seed=cfg.seed,
                              shard_size=p.shard_size)
    talks_per_client = np.array([len({talks[kept[i]] for i in shard}) for shard in split]) if talks is not None else None
    held = [shard[len(shard) - held_count(len(shard), p.holdout):] for shard in split]
    split = [shard[: len(shard) - len(out)] for shard, out in zip(split, held)]
    ordered = [encoded[kept[i]] for shard in split for i in shard]
    lengths = np.array([[len(src), len(tgt)] for src, tgt in ordered], np.int64).reshape(-1, 2)
    starts = np.concatenate([[0], np.cumsum(lengths.sum(axis=1))[:-1]]) if len(ordered) else np.zeros(0, np.int64)
    tokens = np.fromiter((t for src, tgt in ordered for t in (*src, *tgt)), np.int32, count=int(lengths.sum()))
    clients = np.concatenate([[0], np.cumsum([len(shard) for shard in split])]).astype(np.int64)
    held_indices = np.array([kept[i] for out in held for i in out], np.int64)
    held_clients = np.concatenate([[0], np.cumsum([len(out) for out in held])]).astype(np.int64)
    return ClientShards(task.tokenizer, tokens, np.stack([starts, lengths[:, 0]], axis=1), clients, talks_per_client,
                        held_indices, held_clients, np.array(root, np.int64) if root else None)


def carve_root(kept: list[int], pairs: int, clients: int, seed: int) -> tuple[list[int], list[int]]:
    """(the training-split indices left for the clients, the server's root set): ``pairs`` of ``kept`` drawn with a
    seeded generator, before the clients' split, so that no client holds them."""
    if not pairs:
        return kept, []
    if pairs > len(kept) - clients:
        raise ConfigError(f"fl.root_pairs={pairs} leaves {len(kept) - pairs} training pairs for clients={clients}: "
                          f"lower fl.root_pairs (the training split has {len(kept)} usable pairs)")
    drawn = np.zeros(len(kept), bool)
    drawn[np.random.default_rng([seed, 0x2007]).choice(len(kept), size=pairs, replace=False)] = True
    return [i for i, d in zip(kept, drawn) if not d], [i for i, d in zip(kept, drawn) if d]


def held_count(size: int, holdout: float) -> int:
    """How many of a client's ``size`` pairs ``partition.holdout`` keeps from training: at least one when it is
    set, never all of them."""
    return min(size - 1, max(1, round(holdout * size))) if holdout > 0 and size > 1 else 0


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
    roots += [Path(data.tokenizer).expanduser()] if data.tokenizer else []
    found = ([root] if root.is_file() else root.rglob("*") if root.is_dir() else [] for root in roots)
    files = sorted(f for paths in found for f in paths if f.is_file())
    return [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _write(folder: Path, data: ClientShards) -> None:
    atomic_write(folder / "tokenizer.model", data.tokenizer.proto)
    talks = data.talks_per_client if data.talks_per_client is not None else np.zeros(0, np.int64)
    held = data.held if data.held is not None else np.zeros(0, np.int64)
    held_clients = data.held_clients if data.held_clients is not None else np.zeros(len(data) + 1, np.int64)
    root = data.root if data.root is not None else np.zeros(0, np.int64)
    for name, array in zip(ARRAYS, (data.tokens, data.pairs, data.clients, talks, held, held_clients, root)):
        atomic_write(folder / f"{name}.npy", _npy(np.asarray(array)))
    atomic_write(folder / "done.json", json.dumps({"format": FORMAT, "clients": len(data), "pairs": int(len(data.pairs))}))


def _read(folder: Path) -> ClientShards:
    tokenizer = SubwordTokenizer((folder / "tokenizer.model").read_bytes())
    arrays = (np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in ARRAYS)
    tokens, pairs, clients, talks, held, held_clients, root = arrays
    if json.loads((folder / "done.json").read_text()).get("clients") != len(clients) - 1:
        raise ValueError(f"{folder} does not match its done.json")
    return ClientShards(tokenizer, tokens, pairs, np.asarray(clients), np.asarray(talks) if talks.size else None,
                        held, np.asarray(held_clients), np.asarray(root) if root.size else None)
