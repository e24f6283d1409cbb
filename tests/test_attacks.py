"""Attackers that see the round and defences that hold; late work that still counts (asynchronous rounds, over-selection)."""

from __future__ import annotations

import numpy as np
import pytest

from fedq.comm import make_codec
from fedq.config import compose_config, validate_config
from fedq.errors import FedqError
from fedq.fl.attacks import ATTACKS, alie_z
from fedq.fl.defences import (
    DEFENCES,
    RoundView,
    bucketing,
    centered_clipping,
    divide_and_conquer,
    nearest_neighbour_mixing,
)
from fedq.fl.federation import Federation
from fedq.fl.rounds import Coordinator
from helpers import TINY, reply
from server.aggregation import FlowerAggregator


def honest_and_alie(n_honest: int = 16, attackers: int = 4, size: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    honest = [1.0 + 0.5 * rng.standard_normal(size).astype(np.float32) for _ in range(n_honest)]
    return honest, ATTACKS.make("alie").collude(honest, attackers, compose_config([]).fl)


def test_alie_sends_the_honest_mean_minus_z_standard_deviations():
    honest, sent = honest_and_alie()
    stacked = np.stack(honest).astype(np.float64)
    z = alie_z(20, 4)
    assert z == pytest.approx(0.3853, abs=1e-3)  # Baruch et al.: s = floor(20/2 + 1) - 4 = 7, z = Phi^-1(13/20)
    np.testing.assert_allclose(sent, stacked.mean(0) - z * stacked.std(0), rtol=1e-5)
    ipm = ATTACKS.make("ipm").collude(honest, 4, compose_config(["fl.attack_eps=0.5"]).fl)
    np.testing.assert_allclose(ipm, -0.5 * stacked.mean(0), rtol=1e-5)


def test_centered_clipping_and_nnm_stay_near_the_honest_mean_where_the_mean_does_not():
    rng = np.random.default_rng(3)
    honest = [1.0 + 0.3 * rng.standard_normal(64).astype(np.float32) for _ in range(8)]
    target = np.mean(honest, axis=0)
    attackers = [np.full(64, -20.0, np.float32)] * 2  # a large coordinated push
    updates = honest + attackers
    plain = np.mean(updates, axis=0)
    clipped = centered_clipping(updates, np.zeros(64, np.float32), tau=0.0, iterations=3)
    mixed = np.median(np.stack(nearest_neighbour_mixing(updates, byzantine=2)), axis=0)
    assert np.abs(plain - target).mean() > 3.0
    assert np.abs(clipped - target).mean() < 0.5 * np.abs(plain - target).mean()
    assert np.abs(mixed - target).mean() < 0.3


def test_alie_moves_trimmed_mean_and_median_more_than_nnm_with_the_median():
    honest, alie = honest_and_alie(n_honest=16, attackers=4, seed=1)
    target = np.mean(honest, axis=0)
    updates = honest + [alie] * 4
    median = np.median(np.stack(updates), axis=0)
    defended = np.median(np.stack(nearest_neighbour_mixing(updates, byzantine=4)), axis=0)
    assert np.linalg.norm(median - target) > np.linalg.norm(defended - target)


def test_bucketing_averages_shuffled_buckets_with_their_weights():
    updates = [np.full(4, float(i), np.float32) for i in range(6)]
    buckets, weights = bucketing(updates, [1.0] * 6, 2, np.random.default_rng(0))
    assert len(buckets) == 3 and weights == [2.0, 2.0, 2.0]
    assert all(float(b[0]) * 2 == int(float(b[0]) * 2) for b in buckets)  # each the mean of two of the updates
    np.testing.assert_allclose(np.mean(buckets, axis=0), np.mean(updates, axis=0))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["fl.mode=async"], "orders the arrivals on the virtual clock: set fl.devices"),
        (["fl.mode=async", "fl.devices=mixed", "fl.max_staleness=0"], "fl.max_staleness=0 must be >= 1"),
        (["fl.mode=async", "fl.devices=mixed", "fl.buffer_size=8", "fl.concurrency=4"], "is below fl.buffer_size=8"),
        (["fl.buffer_size=3"], "applies to fl.mode=async"),
        (["fl.overselect=0.3"], "set fl.devices"),
        (["fl.attack=alie", "fl.attackers=0.5"], "needs honest clients in every round"),
        (["fl.attack=alie", "fl.attackers=0.2", "fl.defence=nnm"], "raise fl.byzantine"),
        (["fl.defence=cclip", "fl.strategy=fedmedian"], "use it with fl.strategy=fedavg"),
        (["fl.defence=shield"], "fl.defence='shield' is unknown"),
    ],
)
def test_impossible_late_work_attack_and_defence_settings_are_one_line(overrides, message):
    with pytest.raises(FedqError, match=message):
        validate_config(compose_config(overrides))


def test_an_asynchronous_round_applies_a_late_update_with_its_staleness_weight_and_counts_its_bytes_once(tmp_path):
    from fedq.fl import protocol
    from fedq.fl.buffered import BufferedCoordinator

    fleet = tmp_path / "fleet.yaml"  # always online: the arrivals below are the whole story
    fleet.write_text("profiles:\n  always: {train_gflops: 10, up_mbps: 10, down_mbps: 10, availability: 1.0}\n"
                     "mix: {always: 1.0}\n")
    cfg = compose_config([*TINY, f"data.cache_dir={tmp_path}", "clients=4", f"fl.devices={fleet}", "fl.mode=async",
                          "fl.buffer_size=2", "fl.concurrency=4", "comm.uplink.name=fp32"])
    validate_config(cfg)
    federation = Federation(cfg)
    server = BufferedCoordinator(federation, FlowerAggregator(cfg))
    codec, fingerprint = make_codec("fp32"), protocol.fingerprint_number(federation.tokenizer.fingerprint)
    seconds = {0: 5.0, 1: 12.0, 2: 7.0, 3: 400.0}  # client 3 is a slow board
    update = {p: np.full(federation.numel, float(p + 1), np.float32) for p in range(4)}

    def exchange(requests):
        return [reply(r.partition, codec.encode(update[r.partition], None), 10.0, fingerprint, sim=seconds[r.partition])
                for r in requests]

    start = federation.initial_vector()
    after_1, first = server.run_round(1, start, exchange)  # all four start; 0 (5 s) and 2 (7 s) arrive
    np.testing.assert_allclose(after_1 - start, (1.0 + 3.0) / 2, rtol=1e-5)
    after_2, second = server.run_round(2, after_1, exchange)  # 0 and 2 start again; 0 (at 12 s) and 1 (12 s) arrive
    # client 1 trained from the model of round 0: staleness 1, its update scaled by 1/sqrt(2)
    np.testing.assert_allclose(after_2 - after_1, (1.0 + 2.0 / np.sqrt(2.0)) / 2, rtol=1e-5)
    assert (first.sampled, second.sampled) == (4, 2) and first.clients == second.clients == 2
    assert first.uplink_bytes == second.uplink_bytes == 2 * 4 * federation.numel  # counted when it arrives, once
    assert first.downlink_bytes > 0 and second.sim_seconds == pytest.approx(12.0 - 7.0)
    assert sorted(f.reply.partition for f in server.in_flight) == [2, 3]


def always_online(tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("profiles:\n  always: {train_gflops: 10, up_mbps: 10, down_mbps: 10, availability: 1.0}\n"
                     "mix: {always: 1.0}\n")
    return fleet


def round_with(tmp_path, seconds, updates, *overrides):
    from fedq.fl import protocol

    cfg = compose_config([*TINY, f"data.cache_dir={tmp_path}", f"fl.devices={always_online(tmp_path)}",
                          "comm.uplink.name=fp32", *overrides])
    validate_config(cfg)
    federation = Federation(cfg)
    server = Coordinator(federation, FlowerAggregator(cfg))
    fingerprint = protocol.fingerprint_number(federation.tokenizer.fingerprint)
    codec = make_codec("fp32")

    def exchange(requests):
        return [reply(r.partition, codec.encode(np.full(federation.numel, updates[r.partition], np.float32), None), 10.0,
                      fingerprint, sim=seconds[r.partition]) for r in requests]

    start = federation.initial_vector()
    new, outcome = server.run_round(1, start, exchange)
    return new - start, outcome, federation


def test_over_selection_closes_the_round_at_the_target_arrival_and_counts_what_was_sent(tmp_path):
    seconds = {0: 30.0, 1: 10.0, 2: 500.0, 3: 20.0}
    step, outcome, federation = round_with(tmp_path, seconds, {p: p + 1.0 for p in range(4)},
                                           "clients=4", "fl.clients_per_round=2", "fl.overselect=1.0")
    assert outcome.sampled == 4 and outcome.clients == 2 and outcome.dropped == {"not needed": 2}
    np.testing.assert_allclose(step, (2.0 + 4.0) / 2, rtol=1e-5)  # the two fastest: clients 1 (10 s) and 3 (20 s)
    assert outcome.sim_seconds == pytest.approx(20.0)  # closed at the second arrival, not the board's 500 s
    assert outcome.uplink_bytes == 2 * 4 * federation.numel and outcome.downlink_bytes > 0


def test_colluding_attackers_send_alie_of_the_rounds_honest_updates(tmp_path, monkeypatch):
    from fedq.fl import faults

    monkeypatch.setattr(faults, "attackers", lambda fraction, clients, seed: {3})
    updates = {0: 1.0, 1: 2.0, 2: 3.0, 3: 100.0}  # what client 3 trained honestly is never sent
    step, outcome, _ = round_with(tmp_path, {p: 1.0 for p in range(4)}, updates, "clients=4", "fl.clients_per_round=4",
                                  "fl.attack=alie", "fl.attackers=0.25", "fl.attack_z=1.5")
    honest = np.array([1.0, 2.0, 3.0])
    alie = honest.mean() - 1.5 * honest.std()
    np.testing.assert_allclose(step, (honest.sum() + alie) / 4, rtol=1e-5)


def test_divide_and_conquer_removes_the_updates_along_the_attack_direction():
    """Honest updates spread around a mean; attackers shifted along one direction (sign flip, IPM: the negated mean)
    stand out on the top singular direction and are the ones removed, on a subset of the coordinates too."""
    rng = np.random.default_rng(0)
    mean = rng.normal(size=5000).astype(np.float32)
    honest = [mean + 0.5 * rng.normal(size=5000).astype(np.float32) for _ in range(8)]
    for attack in (-mean, -0.5 * mean, mean + 3.0):
        updates = honest[:3] + [attack.astype(np.float32)] * 2 + honest[3:]  # attackers at 3 and 4
        for dims in (5000, 500):
            kept = divide_and_conquer(updates, 2, 1, dims, np.random.default_rng(1))
            assert kept == [0, 1, 2, 5, 6, 7, 8, 9], (attack[:3], dims)
    seeded = [divide_and_conquer(honest, 2, 3, 100, np.random.default_rng(2)) for _ in range(2)]
    assert seeded[0] == seeded[1]  # the round's seed: the same draws, the same kept set
    assert len(divide_and_conquer(honest, 2, 3, 100, np.random.default_rng(2))) <= 6  # each draw removes its own 2


@pytest.mark.parametrize(("overrides", "message"), [
    (["fl.defence=dnc"], "set fl.byzantine >= 1"),
    (["fl.defence=dnc", "fl.byzantine=1", "fl.attack=alie", "fl.attackers=0.4", "fl.clients_per_round=5"],
     "fl.defence=dnc removes 1: raise fl.byzantine"),
    (["fl.defence=dnc", "fl.byzantine=2", "fl.dnc_filter=1.5", "fl.clients_per_round=3"],
     "removes 3 updates a round .* as many as the round's 3 clients"),
    (["fl.dnc_dims=100"], "fl.dnc_dims=100 is not used by this run"),
])
def test_divide_and_conquer_that_cannot_run_is_one_line(overrides, message):
    with pytest.raises(FedqError, match=message):
        validate_config(compose_config(overrides))


def test_a_round_with_divide_and_conquer_drops_its_colluding_attackers(tmp_path):
    cfg = compose_config([*TINY, f"data.cache_dir={tmp_path}", "clients=10", "fl.clients_per_round=10",
                          "fl.defence=dnc", "fl.byzantine=1", "fl.attack=ipm", "fl.attackers=0.1", "comm.uplink.name=fp32"])
    validate_config(cfg)
    defence = DEFENCES.make("dnc")
    honest = [np.full(64, 0.1, np.float32) + np.float32(0.01) * np.arange(64, dtype=np.float32) * i for i in range(9)]
    attacker = ATTACKS.make("ipm").collude(honest, 1, cfg.fl)
    kept, weights = defence([*honest, attacker], [1.0] * 10, RoundView(cfg.fl, cfg.seed, 1, np.zeros(64, np.float32)))
    assert len(kept) == 9 and not any(np.array_equal(update, attacker) for update in kept) and weights == [1.0] * 9


@pytest.mark.parametrize(("settings", "admitted", "removed"), [
    (["fl.defence=dnc", "fl.byzantine=1"], 0, 0),  # it chose: the attacker out, every honest client in
    ([], 1, 0),  # no defence: every update reaches the mean
    (["fl.defence=nnm", "fl.byzantine=1"], None, None),  # it mixes updates: nobody is kept or removed as such
    (["fl.strategy=fedmedian"], None, None),  # the strategy chooses again, per coordinate: not counted
    (["fl.defence=dnc", "fl.byzantine=1", "fl.strategy=fedmedian"], 0, 0),  # what a filter removed never reaches it
])
def test_a_round_counts_the_attackers_its_defence_admitted_and_the_honest_clients_it_removed(
        tmp_path, monkeypatch, settings, admitted, removed):
    from fedq.fl import faults

    monkeypatch.setattr(faults, "attackers", lambda fraction, clients, seed: {3})
    _, outcome, _ = round_with(tmp_path, {p: 1.0 for p in range(4)}, {0: 1.0, 1: 2.0, 2: 3.0, 3: 2.0}, "clients=4",
                               "fl.clients_per_round=4", "fl.attack=ipm", "fl.attackers=0.25", *settings)
    assert (outcome.attackers, outcome.attackers_admitted, outcome.honest_removed) == (1, admitted, removed)


@pytest.mark.parametrize("name", ["min_max", "min_sum"])
def test_min_max_and_min_sum_move_as_far_as_the_honest_spread_allows_and_no_further(name):
    rng = np.random.default_rng(3)
    honest = [rng.normal(size=400).astype(np.float32) + 1.0 for _ in range(6)]
    fl = compose_config(["fl.attack=" + name]).fl
    malicious = ATTACKS.make(name).collude(honest, 2, fl).astype(np.float64)
    stacked = np.stack(honest).astype(np.float64)
    mean, direction = stacked.mean(axis=0), -stacked.std(axis=0)
    gamma = float((malicious - mean) @ direction / (direction @ direction))
    np.testing.assert_allclose(malicious, mean + gamma * direction, atol=1e-4)  # along -std from the honest mean
    honest_pairs = np.square(stacked[:, None, :] - stacked[None, :, :]).sum(axis=2)

    def distances(gamma: float) -> np.ndarray:
        return np.square(stacked - (mean + gamma * direction)).sum(axis=1)

    if name == "min_max":
        assert distances(gamma).max() <= honest_pairs.max() * (1 + 1e-6) < distances(1.01 * gamma).max()
    else:
        assert distances(gamma).sum() <= honest_pairs.sum(axis=1).max() * (1 + 1e-6) < distances(1.01 * gamma).sum()
    assert gamma > 1.0  # it moves the mean by more than one honest standard deviation per value


def test_the_dnc_settings_reach_the_defence(monkeypatch):
    from fedq.fl import defences

    seen = []
    monkeypatch.setattr(defences, "divide_and_conquer",
                        lambda updates, removed, iterations, dims, rng: seen.append((removed, iterations, dims)) or [0, 1])
    cfg = compose_config(["fl.defence=dnc", "fl.byzantine=2", "fl.dnc_filter=1.5", "fl.dnc_iterations=4",
                          "fl.dnc_dims=123"])
    updates = [np.full(8, float(i), np.float32) for i in range(5)]
    kept, weights = DEFENCES.make("dnc")(updates, [1.0, 2.0, 3.0, 4.0, 5.0], RoundView(cfg.fl, 1, 1, np.zeros(8, np.float32)))
    assert seen == [(3, 4, 123)] and kept == updates[:2] and weights == [1.0, 2.0]  # ceil(1.5 x 2) removed
