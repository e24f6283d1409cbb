"""Defences that measure the updates against something: FLTrust (the server's own update on its root set) and FLAME
(the majority cluster of cosine distances, clipped to the median norm)."""

from __future__ import annotations

import numpy as np
import pytest

from fedq.comm import make_codec
from fedq.config import compose_config, validate_config
from fedq.errors import ConfigError, FedqError
from fedq.fl import protocol
from fedq.fl.defences import DEFENCES, RoundView, flame_aggregate, flame_majority, fltrust
from fedq.fl.federation import Federation
from fedq.fl.root import RootTrainer
from fedq.fl.rounds import Coordinator
from fedq.fl.shards import carve_root
from helpers import TINY, reply
from server.aggregation import FlowerAggregator


def test_fltrust_weighs_each_update_by_its_clipped_cosine_and_rescales_it_to_the_servers_norm():
    reference = np.array([3.0, 4.0, 0.0], np.float32)  # norm 5
    updates = [np.array([6.0, 8.0, 0.0], np.float32),  # cosine 1, norm 10 -> rescaled to the reference
               np.array([0.0, 1.0, 1.0], np.float32),  # cosine 0.8 / sqrt(2)
               np.array([-3.0, -4.0, 0.0], np.float32)]  # cosine -1: no trust
    aggregate, trust = fltrust(updates, reference)
    cosine = 4.0 / 5.0 / np.sqrt(2.0)
    np.testing.assert_allclose(trust, [1.0, cosine, 0.0], rtol=1e-6)
    second = np.array([0.0, 1.0, 1.0]) * 5.0 / np.sqrt(2.0)
    np.testing.assert_allclose(aggregate, (reference + cosine * second) / (1.0 + cosine), rtol=1e-5)
    none, zero = fltrust([-updates[0]], reference)  # nothing trusted: no step at all
    assert not none.any() and zero.tolist() == [0.0]


def test_flame_keeps_the_majority_cluster_and_clips_it_to_the_median_norm():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=2000)
    honest = [(mean + 0.3 * rng.normal(size=2000)) * scale for scale in (1.0, 1.0, 1.2, 0.9, 3.0, 1.1, 1.0, 0.8)]
    attackers = [-mean, -mean]  # sign flip and IPM send against the honest direction
    updates = [u.astype(np.float32) for u in honest[:2] + attackers + honest[2:]]
    admitted = flame_majority(updates)
    # the attackers are out; HDBSCAN may leave honest updates at the cluster's edge out too (FLAME's price)
    assert admitted[2:4] == [False, False] and sum(admitted) >= len(updates) // 2 + 1
    norms = np.linalg.norm(np.stack(updates).astype(np.float64), axis=1)
    bound = np.median(norms)
    clipped = [u * min(1.0, bound / n) for u, n, a in zip(updates, norms, admitted) if a]
    aggregate = flame_aggregate(updates, admitted, 0.0, np.random.default_rng(1))
    np.testing.assert_allclose(aggregate, np.mean(clipped, axis=0), rtol=1e-4, atol=1e-6)
    noisy = flame_aggregate(updates, admitted, 0.01, np.random.default_rng(1))  # fl.flame_noise: lambda x the bound
    assert np.std(noisy - aggregate) == pytest.approx(0.01 * bound, rel=0.1)


def test_flame_in_a_round_says_which_updates_it_weighed():
    cfg = compose_config(["fl.defence=flame", "fl.flame_noise=0.5"])
    rng = np.random.default_rng(2)
    mean = rng.normal(size=500)
    updates = [(mean + 0.2 * rng.normal(size=500)).astype(np.float32) for _ in range(5)] + [(-mean).astype(np.float32)]
    view = RoundView(cfg.fl, 1, 3, np.zeros(500, np.float32))
    (first,), weights = DEFENCES.make("flame")(updates, [1.0] * 6, view)
    (again,), _ = DEFENCES.make("flame")(updates, [1.0] * 6, RoundView(cfg.fl, 1, 3, np.zeros(500, np.float32)))
    assert view.admitted is not None and not view.admitted[5] and sum(view.admitted) >= 4 and weights == [1.0]
    np.testing.assert_array_equal(first, again)  # the round's seed draws the noise
    bound = float(np.median(np.linalg.norm(np.stack(updates), axis=1)))
    assert np.std(first - flame_aggregate(updates, view.admitted, 0.0, rng)) == pytest.approx(0.5 * bound, rel=0.1)


def test_flame_without_noise_hands_the_admitted_clipped_updates_to_the_strategy():
    cfg = compose_config(["fl.defence=flame", "fl.strategy=fedmedian"])
    validate_config(cfg)  # a median of what FLAME admits: allowed without noise
    rng = np.random.default_rng(2)
    mean = rng.normal(size=500)
    updates = [(mean + 0.2 * rng.normal(size=500)).astype(np.float32) * s for s in (1, 1, 1, 4, 1)]
    updates.append((-mean).astype(np.float32))
    view = RoundView(cfg.fl, 1, 3, np.zeros(500, np.float32))
    kept, weights = DEFENCES.make("flame")(updates, [5.0, 1.0, 1.0, 1.0, 1.0, 1.0], view)
    assert view.admitted is not None and not view.admitted[5] and len(kept) == sum(view.admitted)
    assert weights == [1.0] * len(kept)  # equal weights, as in the paper
    bound = float(np.median(np.linalg.norm(np.stack(updates), axis=1)))
    assert max(np.linalg.norm(u) for u in kept) == pytest.approx(bound, rel=1e-5)  # the long one clipped to the median
    np.testing.assert_allclose(np.mean(kept, axis=0), flame_aggregate(updates, view.admitted, 0.0, rng), rtol=1e-5)
    with pytest.raises(FedqError, match="fl.defence=flame is itself the robust mean: use it with fl.strategy=fedavg"):
        validate_config(compose_config(["fl.defence=flame", "fl.strategy=fedmedian", "fl.flame_noise=0.1"]))


def test_the_trust_filter_hands_the_trusted_updates_as_sent_to_the_strategy():
    cfg = compose_config(["fl.defence=trustfilter", "fl.strategy=fedmedian"])
    validate_config(cfg)
    rng = np.random.default_rng(4)
    reference = rng.normal(size=300).astype(np.float32)
    updates = [(reference * s + 0.5 * rng.normal(size=300)).astype(np.float32) for s in (1.0, 3.0, 0.5)]
    updates.insert(1, -reference)  # a sign-flipped update: cosine -1
    view = RoundView(cfg.fl, 1, 2, np.zeros(300, np.float32), root_update=reference)
    kept, weights = DEFENCES.make("trustfilter")(updates, [1.0, 2.0, 3.0, 4.0], view)
    assert [id(u) for u in kept] == [id(updates[i]) for i in (0, 2, 3)]  # the very arrays: not rescaled, counted
    assert weights == [1.0, 3.0, 4.0]
    (none,), _ = DEFENCES.make("trustfilter")([-reference], [1.0], view)
    assert not none.any()  # nothing trusted: no step, as FLTrust
    with pytest.raises(FedqError, match="fl.defence=trustfilter measures .* fl.root_pairs=0 leaves it none"):
        validate_config(compose_config(["fl.defence=trustfilter", "fl.root_pairs=0"]))


def test_the_root_set_is_drawn_before_the_clients_split_and_only_when_asked_for():
    kept = list(range(0, 300, 3))
    clients, root = carve_root(kept, 20, 4, seed=1)
    assert len(root) == 20 and not set(root) & set(clients) and sorted(root + clients) == kept
    assert carve_root(kept, 20, 4, seed=1) == (clients, root) and carve_root(kept, 20, 4, seed=2)[1] != root
    assert carve_root(kept, 0, 4, seed=1) == (kept, [])
    with pytest.raises(ConfigError, match="fl.root_pairs=97 leaves 3 training pairs for clients=4"):
        carve_root(kept, 97, 4, seed=1)


@pytest.mark.parametrize(("overrides", "message"), [
    (["fl.defence=fltrust", "fl.root_pairs=0"], "fl.root_pairs=0 leaves it none"),
    (["fl.root_pairs=100"], "fl.root_pairs=100 is not used by this run .* fl.defence=fltrust"),
    (["fl.defence=fltrust", "fl.root_pairs=50", "fl.strategy=fedmedian"], "fl.defence=fltrust is itself the robust mean"),
    (["fl.defence=flame", "fl.clients_per_round=2"], "fl.defence=flame clusters .* at least 3 a round, not 2"),
    (["fl.flame_noise=0.1"], "fl.flame_noise=0.1 is not used by this run"),
    (["fl.defence=fltrust", "fl.root_pairs=-1"], "fl.root_pairs=-1 must be >= 0"),
])
def test_trust_defences_that_cannot_run_are_one_line(overrides, message):
    with pytest.raises(FedqError, match=message):
        validate_config(compose_config(overrides))


def test_a_round_with_fltrust_trains_on_the_root_set_and_shuts_out_an_update_against_it(tmp_path, monkeypatch):
    """A real round: the server's update on its 30 root pairs (which no client holds) is the reference; an attacker
    that sends against it gets no trust and is counted as shut out, honest clients near it are admitted."""
    from fedq.fl import faults

    monkeypatch.setattr(faults, "attackers", lambda fraction, clients, seed: {3})
    settings = [*TINY, f"data.cache_dir={tmp_path}", "clients=4", "fl.clients_per_round=4", "comm.uplink.name=fp32",
                "fl.attack=sign_flip", "fl.attackers=0.25"]
    plain = Federation(validated(settings))
    cfg = validated([*settings, "fl.defence=fltrust", "fl.root_pairs=30"])
    federation = Federation(cfg)
    assert federation.data.root is not None and len(federation.data.root) == 30
    assert int(federation.data.sizes.sum()) == int(plain.data.sizes.sum()) - 30  # the root pairs left the shards
    start = federation.initial_vector()
    reference = RootTrainer(federation).update(1, start)
    assert np.linalg.norm(reference) > 0
    rng = np.random.default_rng(0)
    sent = {p: (reference * (1 + p) + 0.1 * np.abs(reference).mean() * rng.normal(size=reference.size)).astype(np.float32)
            for p in range(3)}
    sent[3] = -reference  # the attacker's
    codec, fingerprint = make_codec("fp32"), protocol.fingerprint_number(federation.tokenizer.fingerprint)

    def exchange(requests):
        return [reply(r.partition, codec.encode(sent[r.partition], None), 10.0, fingerprint) for r in requests]

    new, outcome = Coordinator(federation, FlowerAggregator(cfg)).run_round(1, start, exchange)
    aggregate, trust = fltrust([sent[p] for p in range(4)], reference)
    np.testing.assert_allclose(new - start, aggregate, rtol=1e-4, atol=1e-7)
    assert trust[3] == 0 and (outcome.attackers, outcome.attackers_admitted, outcome.honest_removed) == (1, 0, 0)
    assert outcome.server_train_seconds > 0


def validated(settings: list[str]):
    cfg = compose_config(settings)
    validate_config(cfg)
    return cfg
