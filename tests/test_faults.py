"""Edge devices that fail: the virtual clock, dropouts, stragglers, crashes, poisoned updates, robust aggregation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fedq.comm import make_codec
from fedq.config import compose_config, validate_config
from fedq.errors import FedqError
from fedq.fl.attacks import ATTACKS
from fedq.fl.faults import CRASH_ERROR, DROPOUT_ERROR, Faults, attackers
from fedq.fl.federation import Federation
from fedq.fl.fleet import DeviceProfile, fleet, training_flops
from fedq.fl.protocol import Reply
from fedq.fl.rounds import Admission, RoundOutcome
from fedq.fl.settings import FLConfig
from helpers import reply
from server.aggregation import FlowerAggregator

PHONE = DeviceProfile("phone", train_gflops=5.0, up_mbps=8.0, down_mbps=40.0, availability=0.5)


def admission(codec=None, n: int = 64, **fl: object) -> tuple[Admission, np.ndarray]:
    settings = FLConfig(**fl)  # type: ignore[arg-type]
    return Admission(settings, codec or make_codec("fp32"), 7, Faults(settings, seed=1)), np.zeros(n, np.float32)


def admit(replies: list[Reply], **fl: object) -> tuple[list, RoundOutcome]:
    checks, vector = admission(**fl)
    outcome = RoundOutcome()
    return checks.admit(replies, vector, np.zeros_like(vector), outcome), outcome


def aggregate(strategy: str, replies: list[Reply], *overrides: str) -> np.ndarray:
    admitted, _ = admit(replies)
    aggregator = FlowerAggregator(compose_config([f"fl.strategy={strategy}", *overrides]))
    return aggregator(1, np.zeros(64, np.float32), [a.update for a in admitted], [a.metrics["num-tokens"] for a in admitted])


def send(partition: int, update: np.ndarray, sim: float | None = None, tokens: float = 10.0) -> Reply:
    return reply(partition, [update], tokens, 7, sim=sim)


def test_virtual_clock_of_a_round_is_download_plus_training_plus_upload():
    # 5 MB down at 40 Mbit/s = 1 s; 6 x 1M parameters x 5,000 tokens = 30 GFLOP at 5 GFLOP/s = 6 s; 1 MB up at 8 Mbit/s = 1 s
    assert PHONE.round_seconds(5e6, training_flops(1_000_000, 5_000), 1e6) == pytest.approx(1.0 + 6.0 + 1.0)
    assert training_flops(1_000_000, 5_000, frozen=1_000_000) == pytest.approx(4 / 6 * training_flops(1_000_000, 5_000))


def test_the_round_waits_for_the_slowest_client_it_accepts_or_until_the_deadline():
    honest = np.ones(64, np.float32)

    def round_with(*replies):
        return admit(list(replies), devices="midrange-4g", round_deadline=30.0)[1]

    assert round_with(send(0, honest, 12.0), send(1, honest, 21.5)).sim_seconds == pytest.approx(21.5)
    late = round_with(send(0, honest, 12.0), send(1, honest, 45.0))  # one straggler past the deadline
    assert late.sim_seconds == pytest.approx(30.0) and late.rejected == 1 and late.clients == 1
    assert "late" in late.rejections[0]
    dropout = round_with(send(0, honest, 12.0), Reply(1, error=DROPOUT_ERROR))  # no reply comes: the server waits
    assert dropout.sim_seconds == pytest.approx(30.0) and dropout.dropped == {"dropout": 1}
    crash = round_with(send(0, honest, 12.0), Reply(1, error=CRASH_ERROR))  # a crash: its error comes back at once
    assert crash.sim_seconds == pytest.approx(12.0) and crash.dropped == {"crashed": 1}


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (lambda n: [np.full(n, np.nan, np.float32)], "NaN"),
        (lambda n: [np.ones(n + 5, np.float32)], "entries, expected"),
        (lambda n: [np.ones(n, np.float32)[:-1]], "entries, expected"),
        (lambda n: [np.ones(n, np.float16)], "expected 1-D float32"),
        (lambda n: [np.full(n, 100.0, np.float32)], "above fl.max_update_norm=10"),
    ],
)
def test_a_bad_update_is_rejected_and_never_reaches_the_aggregate(bad, reason):
    admitted, outcome = admit([reply(0, bad(64), 1000.0, 7)], max_update_norm=10.0)
    assert not admitted and outcome.rejected == 1 and reason in outcome.rejections[0]
    admitted, outcome = admit([reply(0, bad(64), 1000.0, 7), send(1, np.full(64, 0.5, np.float32))], max_update_norm=10.0)
    assert [a.partition for a in admitted] == [1]
    np.testing.assert_array_equal(admitted[0].update, np.full(64, 0.5, np.float32))


def test_an_update_far_above_the_rounds_median_norm_is_rejected():
    updates = [np.full(64, v, np.float32) for v in (0.9, 1.0, 1.1, 50.0)]
    admitted, outcome = admit([send(p, u) for p, u in enumerate(updates)], max_update_norm_ratio=3.0)
    assert outcome.rejected == 1 and "client 3" in outcome.rejections[0] and "median" in outcome.rejections[0]
    assert [a.partition for a in admitted] == [0, 1, 2]


def test_robust_aggregation_bounds_a_sign_flip_attacker_where_averaging_is_pulled_away():
    rng = np.random.default_rng(0)
    honest = [np.ones(64, np.float32) + 0.05 * rng.standard_normal(64).astype(np.float32) for _ in range(5)]
    attacker = ATTACKS.make("sign_flip").alone(20.0 * np.ones(64, np.float32), rng)  # a large flipped update
    replies = [send(p, u) for p, u in enumerate(honest)] + [send(5, attacker)]
    mean = aggregate("fedavg", replies)
    median = aggregate("fedmedian", replies)
    krum = aggregate("krum", replies, "fl.byzantine=1", "fl.clients_per_round=6")
    assert mean.mean() < -2.0  # plain averaging follows the attacker
    for robust in (median, krum):
        assert np.abs(robust - 1.0).max() < 0.2


def test_attacks_and_fleets_are_what_they_say():
    update = np.linspace(-1, 1, 101).astype(np.float32)
    rng = np.random.default_rng(1)
    np.testing.assert_array_equal(ATTACKS.make("sign_flip").alone(update, rng), -update)
    noise = ATTACKS.make("scaled_noise").alone(update, rng)
    assert np.linalg.norm(noise) == pytest.approx(10 * np.linalg.norm(update), rel=1e-4)
    shifted = ATTACKS.make("std_shift").alone(update, rng)
    assert np.abs(shifted - update).max() == pytest.approx(update.std(), rel=1e-5)
    assert len(attackers(0.2, 20, seed=1)) == 4 and attackers(0.2, 20, seed=1) == attackers(0.2, 20, seed=1)
    profiles, index = fleet("mixed", 20, seed=1)
    assert [profile.name for profile in profiles] == ["flagship-wifi", "midrange-4g", "board-slow-link"]
    assert np.bincount(index).tolist() == [6, 10, 4]


def test_a_fleet_file_with_its_own_profiles(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text("profiles:\n  tablet: {train_gflops: 10, up_mbps: 20, down_mbps: 80, availability: 0.95}\n"
                    "mix: {tablet: 0.5, midrange-4g: 0.5}\n")
    profiles, index = fleet(str(path), 4, seed=0)
    assert sorted(profiles[i].name for i in index) == ["midrange-4g", "midrange-4g", "tablet", "tablet"]
    validate_config(compose_config([f"fl.devices={path}"]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["fl.min_replies=6"], "fl.min_replies=6 must be between 1 and the 5 clients per round"),
        (["fl.dropout_rate=1.0"], r"fl.dropout_rate=1.0 must be in \[0, 1\)"),
        (["fl.devices=satellite"], "fl.devices=.satellite. is unknown; choose a fleet \\(mixed\\), a device profile \\(flagship-wifi, midrange-4g, board-slow-link\\), module:NAME"),
        (["fl.round_deadline=10"], "needs a virtual clock"),
        (["fl.attack=backdoor", "fl.attackers=0.1"], "fl.attack='backdoor' is unknown"),
        (["fl.attack=sign_flip"], "set both"),
        (["fl.strategy=bulyan", "fl.byzantine=1"], "needs at least 4f\\+3 = 7 clients per round"),
        (["fl.strategy=krum", "fl.attack=sign_flip", "fl.attackers=0.2"], "raise fl.byzantine"),
        (["fl.strategy=fedmedian", "fl.attack=sign_flip", "fl.attackers=0.5"], "fewer than half|must be in"),
        (["fl.strategy=fedtrimmedavg", "fl.trim_beta=0.1", "fl.attack=sign_flip", "fl.attackers=0.2"], "raise fl.trim_beta"),
    ],
)
def test_impossible_fault_settings_are_one_line(overrides, message):
    with pytest.raises(FedqError, match=message):
        validate_config(compose_config(overrides))


def test_a_deadline_no_device_can_meet_is_refused_before_the_run(tmp_path):
    cfg = compose_config(["fl.devices=board-slow-link", "fl.round_deadline=0.5", "data.demo_train_size=300",
                          "data.demo_eval_size=10", "data.vocab_size=200", f"data.cache_dir={tmp_path}"])
    with pytest.raises(FedqError, match="no device of fl.devices=board-slow-link can even download"):
        Federation(cfg).check_deadline()


@pytest.mark.e2e
def test_a_run_with_dropouts_crashes_stragglers_and_an_attacker_completes_and_counts_them(tmp_path):
    """Through Flower + Ray, with FLTrust: the ServerApp trains on its root set and counts the attacker it admitted."""
    run = tmp_path / "run"
    overrides = [
        "clients=8", "fl.clients_per_round=6", "fl.rounds=3", "fl.local_steps=3", "fl.eval_every=0",
        "data.demo_train_size=800", "data.demo_eval_size=10", "data.vocab_size=200", "model.d_model=32",
        "model.ffn_dim=64", f"data.cache_dir={tmp_path / 'cache'}", "fl.devices=mixed", "fl.round_deadline=4",
        "fl.dropout_rate=0.3", "fl.crash_rate=0.1", "fl.attack=sign_flip", "fl.attackers=0.125",
        "fl.defence=fltrust", "fl.root_pairs=40", "fl.max_update_norm_ratio=10", "seed=3", f"hydra.run.dir={run}",
    ]
    result = subprocess.run([sys.executable, "-m", "fedq.simulate", *overrides], capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    for row in rows:
        assert row["clients"] + sum(row["dropped"].values()) + row["rejected"] == row["sampled"]
        assert row["sim_seconds"] is not None and row["sim_seconds"] <= 4.0 + 1e-9
        assert row["server_train_seconds"] > 0  # FLTrust's server trained on its root set in the ServerApp
        assert row["attackers_admitted"] is not None or row["attackers"] == 0
    assert summary["dropped_clients"].get("dropout", 0) > 0
    assert summary["sim_seconds"] == pytest.approx(sum(row["sim_seconds"] for row in rows))
    assert "dropout" in result.stdout and "simulated fleet time (mixed)" in result.stdout
