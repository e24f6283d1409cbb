from collections import Counter

import numpy as np
import pytest

from fedq.data.partition import (
    PartitionError,
    length_bucket_labels,
    min_median_max,
    partition_indices,
)


def assert_disjoint_cover(shards, num_items):
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(num_items))


def label_skew(shards, labels):
    """Mean over clients of the share of the client's most common label."""
    return float(np.mean([Counter(labels[i] for i in s).most_common(1)[0][1] / len(s) for s in shards]))


def test_iid_is_a_shuffled_equal_split():
    shards = partition_indices(103, 10, "iid", seed=3)
    assert_disjoint_cover(shards, 103)
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert shards[0] != list(range(len(shards[0])))  # shuffled, not contiguous
    assert shards == partition_indices(103, 10, "iid", seed=3)
    assert shards != partition_indices(103, 10, "iid", seed=4)


def test_natural_keeps_each_label_on_one_client_and_balances():
    rng = np.random.default_rng(0)
    labels = [f"talk{t}" for t in rng.integers(0, 40, 2000)]
    shards = partition_indices(len(labels), 8, "natural", labels=labels)
    assert_disjoint_cover(shards, len(labels))
    owner = {}
    for client, shard in enumerate(shards):
        for i in shard:
            assert owner.setdefault(labels[i], client) == client
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= max(Counter(labels).values())


def test_natural_greedy_largest_first():
    labels = ["a"] * 5 + ["b"] * 4 + ["c"] * 3 + ["d"] * 2
    shards = partition_indices(len(labels), 2, "natural", labels=labels)
    assert sorted(len(s) for s in shards) == [7, 7]  # a+d and b+c


def test_dirichlet_skew_depends_on_alpha():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 8, 8000).tolist()
    skewed = partition_indices(len(labels), 10, "dirichlet", alpha=0.1, labels=labels, seed=1)
    uniform = partition_indices(len(labels), 10, "dirichlet", alpha=1000.0, labels=labels, seed=1)
    for shards in (skewed, uniform):
        assert_disjoint_cover(shards, len(labels))
    assert label_skew(skewed, labels) > 0.5
    assert label_skew(uniform, labels) < 0.2  # 8 labels: 0.125 when perfectly mixed
    assert skewed == partition_indices(len(labels), 10, "dirichlet", alpha=0.1, labels=labels, seed=1)


def test_dirichlet_gives_every_client_an_item():
    labels = [0] * 30
    for seed in range(20):
        shards = partition_indices(30, 30, "dirichlet", alpha=0.01, labels=labels, seed=seed)
        assert_disjoint_cover(shards, 30)
        assert min(len(s) for s in shards) >= 1


def test_length_buckets_are_quantiles():
    lengths = list(range(1, 101))
    buckets = length_bucket_labels(lengths, 4)
    assert Counter(buckets) == {0: 25, 1: 25, 2: 25, 3: 25}
    assert buckets == sorted(buckets)
    assert length_bucket_labels([5, 5, 5], 3) == [2, 2, 2]  # ties share one bucket
    assert length_bucket_labels([], 3) == []


def test_min_median_max_of_per_client_counts():
    assert min_median_max([2, 3, 7, 1]) == "1/2.5/7"


def test_natural_shares_a_label_among_clients_when_there_are_more_clients_than_labels():
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    shards = partition_indices(len(labels), 7, "natural", labels=labels)
    assert sorted(i for shard in shards for i in shard) == list(range(100))  # every item once
    holders = Counter(labels[shard[0]] for shard in shards)
    assert holders == {"a": 4, "b": 2, "c": 1}  # in proportion to the labels' sizes
    for shard in shards:  # a client holds part of one label, contiguous
        assert len({labels[i] for i in shard}) == 1 and shard == list(range(shard[0], shard[-1] + 1))


def test_shard_size_gives_every_client_that_many_items():
    shards = partition_indices(1000, 30, "iid", seed=3, shard_size=20)
    assert [len(shard) for shard in shards] == [20] * 30 and len({i for shard in shards for i in shard}) == 600
    natural = partition_indices(100, 2, "natural", labels=[0] * 70 + [1] * 30, shard_size=25)
    assert [len(shard) for shard in natural] == [25, 25]


@pytest.mark.parametrize(
    "args,kwargs,message",
    [
        ((10, 0, "iid"), {}, "at least 1 client"),
        ((3, 5, "iid"), {}, "cannot split 3 items among 5 clients"),
        ((10, 2, "random"), {}, "unknown partition scheme 'random'; choose one of iid, dirichlet, natural"),
        ((10, 2, "iid"), {"labels": [0] * 9}, "got 9 labels for 10 items"),
        ((10, 2, "dirichlet"), {}, "needs labels"),
        ((10, 2, "dirichlet"), {"labels": [0] * 10, "alpha": 0.0}, "alpha > 0"),
        ((10, 4, "iid"), {"shard_size": 3}, "cannot split 10 items among 4 x partition.shard_size=3"),
    ],
)
def test_errors(args, kwargs, message):
    with pytest.raises(PartitionError, match=message):
        partition_indices(*args, **kwargs)
    with pytest.raises(PartitionError, match="buckets must be >= 1"):
        length_bucket_labels([1, 2], 0)
