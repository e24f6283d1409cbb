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
) -> list[list[int]]:
    """Disjoint shards (sorted item indices) covering ``range(num_items)``, one per client.

    - ``iid``: random, sizes differ by at most one.
    - ``dirichlet``: each label's items are split across clients by Dirichlet(alpha)
      proportions (small alpha = strong skew); every client gets at least one item.
    - ``natural``: each distinct label goes wholly to one client, largest first to the
      currently smallest client.
    """
    if num_clients < 1:
        raise PartitionError(f"partition needs at least 1 client, got {num_clients}")
    if num_items < num_clients:
        raise PartitionError(f"cannot split {num_items} items among {num_clients} clients")
    if labels is not None and len(labels) != num_items:
        raise PartitionError(f"got {len(labels)} labels for {num_items} items")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        shards = np.array_split(rng.permutation(num_items), num_clients)
    elif scheme == "dirichlet":
        if alpha <= 0:
            raise PartitionError(f"dirichlet partition needs alpha > 0, got {alpha}")
        shards = _dirichlet(_groups(scheme, labels), num_clients, alpha, rng)
    elif scheme == "natural":
        shards = _natural(_groups(scheme, labels), num_clients)
    else:
        raise PartitionError(f"unknown partition scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    return [sorted(int(i) for i in shard) for shard in shards]


def validate_partition(scheme: str, label: str, alpha: float, length_buckets: int, corpus: str) -> None:
    """The ``partition.*`` settings, checked before any data is read (one PartitionError line)."""
    from fedq.data import CORPORA_WITH_TALKS, CORPORA_WITH_TOPICS

    if scheme not in SCHEMES:
        raise PartitionError(f"partition.scheme={scheme!r} is unknown; choose one of {', '.join(SCHEMES)}")
    if label not in LABELS:
        raise PartitionError(f"partition.label={label!r} is unknown; choose one of {', '.join(LABELS)}")
    if scheme == "dirichlet" and alpha <= 0:
        raise PartitionError(f"partition.alpha={alpha}: a Dirichlet partition needs alpha > 0")
    if length_buckets < 1:
        raise PartitionError(f"partition.length_buckets={length_buckets} must be >= 1")
    if uses_talks(scheme, label) and corpus not in CORPORA_WITH_TALKS:
        raise PartitionError(
            f"partition.scheme={scheme} partition.label={label} needs talk ids; corpus {corpus} has none "
            f"(use data={' or data='.join(CORPORA_WITH_TALKS)})"
        )
    if scheme == "dirichlet" and label == "topic" and corpus not in CORPORA_WITH_TOPICS:
        raise PartitionError(f"partition.label=topic needs talk topics; corpus {corpus} has none (use data=ted)")


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


def min_median_max(values: Sequence[int]) -> str:
    """``min/median/max`` of per-client counts, as the log lines print them."""
    array = np.array(values)
    return f"{array.min()}/{np.median(array):g}/{array.max()}"


def describe_partition(shards: list[list[int]], labels: Sequence[Hashable] | None = None) -> str:
    """One line for logs: shard sizes, and labels per client when labels are given."""
    sizes = [len(s) for s in shards]
    line = f"{len(shards)} clients, {sum(sizes)} items, shard size min/median/max = {min_median_max(sizes)}"
    if labels is not None:
        distinct = [len({labels[i] for i in s}) for s in shards]
        line += f", distinct labels per client min/median/max = {min_median_max(distinct)}"
    return line


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
    if len(groups) < num_clients:
        raise PartitionError(
            "natural partition needs at least as many labels as clients: "
            f"{len(groups)} labels, {num_clients} clients"
        )
    shards: list[list[int]] = [[] for _ in range(num_clients)]
    smallest = [(0, client) for client in range(num_clients)]
    for group in sorted(groups, key=len, reverse=True):
        size, client = heapq.heappop(smallest)
        shards[client].extend(group)
        heapq.heappush(smallest, (size + len(group), client))
    return shards
