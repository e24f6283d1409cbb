"""Splitting a training set into client shards: IID, Dirichlet label skew, natural groups."""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Sequence

import numpy as np

from fedq.errors import FedqError

SCHEMES = ("iid", "dirichlet", "natural")
LABELS = ("length", "talk", "topic")


class PartitionError(FedqError):
    """A partition cannot be built from the given settings."""


def partition_indices(
    num_items: int,
    num_clients: int,
    scheme: str,
    *,
    alpha: float = 0.5,
    labels: Sequence[Hashable] | None = None,
    seed: int = 0,
    shard_size: int = 0,
) -> list[list[int]]:
    """Disjoint shards (sorted item indices), one per client, covering ``range(num_items)`` (or, with
    ``shard_size``, ``shard_size`` items per client).

    - ``iid``: random, sizes differ by at most one; with ``shard_size``, exactly that many each.
    - ``dirichlet``: each label's items are split across clients by Dirichlet(alpha)
      proportions (small alpha = strong skew); every client gets at least one item.
    - ``natural``: each distinct label goes wholly to one client, largest first to the
      currently smallest client; with more clients than labels, a label is shared by
      several clients instead (in proportion to its size), each holding a contiguous part.

    ``shard_size`` (> 0) keeps at most that many items per client (cross-device clients hold few).
    """
    if num_clients < 1:
        raise PartitionError(f"partition needs at least 1 client, got {num_clients}")
    if num_items < num_clients * max(1, shard_size if scheme == "iid" else 1):
        sized = shard_size and scheme == "iid"
        need = f"{num_clients} x partition.shard_size={shard_size}" if sized else f"{num_clients} clients"
        raise PartitionError(f"cannot split {num_items} items among {need}: use fewer clients or a larger corpus")
    if labels is not None and len(labels) != num_items:
        raise PartitionError(f"got {len(labels)} labels for {num_items} items")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        order = rng.permutation(num_items)
        shards: list[np.ndarray] | list[list[int]] = np.array_split(
            order[: num_clients * shard_size] if shard_size else order, num_clients)
    elif scheme == "dirichlet":
        if alpha <= 0:
            raise PartitionError(f"dirichlet partition needs alpha > 0, got {alpha}")
        shards = _dirichlet(_groups(scheme, labels), num_clients, alpha, rng)
    elif scheme == "natural":
        shards = _natural(_groups(scheme, labels), num_clients)
    else:
        raise PartitionError(f"unknown partition scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    return [sorted(int(i) for i in shard)[: shard_size or None] for shard in shards]


def uses_talks(scheme: str, label: str) -> bool:
    return scheme == "natural" or (scheme == "dirichlet" and label == "talk")


def partition_labels(
    scheme: str, label: str, talks: Sequence[str] | None, lengths: Sequence[int], length_buckets: int,
    topics: Sequence[str] | None = None,
) -> list | None:
    """The label of each item that ``scheme`` splits by: None (iid), talk ids, topics, or length buckets."""
    if scheme == "iid":
        return None
    if uses_talks(scheme, label):
        if talks is None:
            raise PartitionError(f"partition.scheme={scheme} partition.label={label} needs talk ids; this corpus has none")
        return list(talks)
    if label == "topic":
        if topics is None:
            raise PartitionError("partition.label=topic needs talk topics; this corpus has none")
        return list(topics)
    return length_bucket_labels(lengths, length_buckets)


def length_bucket_labels(lengths: Sequence[int], num_buckets: int) -> list[int]:
    """Label each item with its length quantile bucket 0..num_buckets-1 (ties share a bucket)."""
    if num_buckets < 1:
        raise PartitionError(f"length buckets must be >= 1, got {num_buckets}")
    values = np.asarray(lengths, np.float64)
    if values.size == 0:
        return []
    edges = np.quantile(values, np.linspace(0, 1, num_buckets + 1)[1:-1])
    return np.searchsorted(edges, values, side="right").tolist()


def min_median_max(values: Sequence[int] | np.ndarray) -> str:
    """``min/median/max`` of per-client counts, as the log lines print them."""
    array = np.array(values)
    return f"{array.min()}/{np.median(array):g}/{array.max()}"


def _groups(scheme: str, labels: Sequence[Hashable] | None) -> list[list[int]]:
    """Item indices per distinct label, in order of first appearance."""
    if labels is None:
        raise PartitionError(f"partition scheme {scheme!r} needs labels")
    groups: dict[Hashable, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, []).append(index)
    return list(groups.values())


def _dirichlet(
    groups: list[list[int]], num_clients: int, alpha: float, rng: np.random.Generator
) -> list[list[int]]:
    shards: list[list[int]] = [[] for _ in range(num_clients)]
    for group in groups:
        items = rng.permutation(group)
        proportions = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(items)).astype(int)
        for shard, part in zip(shards, np.split(items, cuts)):
            shard.extend(part.tolist())
    # An empty client gets a random item of the largest one (which then holds >= 2,
    # since num_items >= num_clients).
    for shard in shards:
        if not shard:
            largest = max(shards, key=len)
            shard.append(largest.pop(int(rng.integers(len(largest)))))
    return shards


def _natural(groups: list[list[int]], num_clients: int) -> list[list[int]]:
    if len(groups) < num_clients:  # each label is shared by clients in proportion to its size, in contiguous parts
        sizes = np.array([len(g) for g in groups], np.float64)
        extra = sizes / sizes.sum() * (num_clients - len(groups))
        parts = 1 + np.floor(extra).astype(int)
        remainders = np.round(extra - np.floor(extra), 9)  # rounded: 0.6 x 4 and 0.1 x 4 leave the same remainder
        for i in np.lexsort((-sizes, -remainders))[: num_clients - parts.sum()]:
            parts[i] += 1  # largest remainders first, the larger label on a tie
        if any(len(g) < k for g, k in zip(groups, parts)):
            raise PartitionError(f"cannot share {len(groups)} labels among {num_clients} clients without an empty one")
        return [part.tolist() for group, k in zip(groups, parts) for part in np.array_split(np.array(group), k)]
    shards: list[list[int]] = [[] for _ in range(num_clients)]
    smallest = [(0, client) for client in range(num_clients)]
    for group in sorted(groups, key=len, reverse=True):
        size, client = heapq.heappop(smallest)
        shards[client].extend(group)
        heapq.heappush(smallest, (size + len(group), client))
    return shards
