"""User-level differential privacy (fl.dp): clipping that acts on what is sent, the round's noise from Flower's central-DP
wrapper, and epsilon from Opacus's accountant in every row."""

from __future__ import annotations

import json

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from fedq.config import compose_config, validate_config
from fedq.errors import ConfigError
from fedq.fl.client import LocalExchange
from fedq.fl.client_state import ClientStore
from fedq.fl.federation import Federation
from fedq.fl.privacy import ClipNorm, epsilon, noise_multiplier, noise_split
from fedq.fl.run import run_federation
from helpers import TINY
from server.aggregation import FlowerAggregator


@pytest.mark.parametrize(("clients", "per_round", "rounds", "z", "delta"), [
    (1000, 100, 50, 1.0, 0.0), (20, 5, 20, 0.5, 1e-5), (10000, 200, 300, 1.2, 0.0)])
def test_epsilon_is_the_accountants_own_for_the_sampled_gaussian_mechanism(clients, per_round, rounds, z, delta):
    fl = compose_config([f"clients={clients}", f"fl.clients_per_round={per_round}", f"fl.rounds={rounds}",
                         "fl.dp.clip=1", f"fl.dp.noise_multiplier={z}", f"fl.dp.delta={delta}"]).fl
    rdp = compute_rdp(q=per_round / clients, noise_multiplier=z, steps=rounds, orders=RDPAccountant.DEFAULT_ALPHAS)
    expected, _ = get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta or 1 / clients)
    assert epsilon(fl, rounds) == pytest.approx(expected, rel=1e-9)
    assert epsilon(fl, rounds // 2) < epsilon(fl, rounds)  # spent round by round


def test_a_target_epsilon_chooses_the_noise_that_spends_it_over_the_planned_rounds():
    fl = compose_config(["clients=1000", "fl.clients_per_round=100", "fl.rounds=40", "fl.dp.clip=0.5",
                         "fl.dp.target_epsilon=4"]).fl
    z = noise_multiplier(fl)
    assert 0.99 * 4 < epsilon(fl, 40, z) <= 4.0
    assert epsilon(fl, 40, 0.98 * z) > 4.0  # no more noise than the target needs


@pytest.mark.parametrize(("overrides", "message"), [
    (["fl.dp.noise_multiplier=1"], "without clipping bounds nothing: set fl.dp.clip"),
    (["fl.dp.clip=1", "fl.dp.noise_multiplier=1", "fl.dp.target_epsilon=3"], "not both"),
    (["fl.dp.clip=1", "fl.dp.noise_multiplier=1", "fl.strategy=fedmedian"], "use fl.strategy=fedavg with no fl.defence"),
    (["fl.dp.clip=1", "fl.dp.noise_multiplier=1", "fl.defence=cclip"], "not fl.strategy=fedavg, fl.defence=cclip"),
    (["fl.dp.clip=1", "fl.dp.target_epsilon=1e-7", "clients=20", "fl.clients_per_round=20", "fl.rounds=1000"],
     "nothing would be learned"),
    (["fl.dp.clip=-1"], "fl.dp.clip=-1.0 must be >= 0"),
    (["fl.dp.clip=1", "fl.dp.noise_multiplier=1", "fl.dp.delta=1"], "must be below 1"),
    (["fl.dp.clip=1", "fl.dp.noise_multiplier=1", "comm.uplink.name=mask"],
     "comm.uplink.name=mask\\) has the server fill the rest"),
])
def test_privacy_settings_that_cannot_hold_their_guarantee_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config(overrides))


def test_the_server_clips_each_decoded_update_weighs_them_equally_and_adds_seeded_noise_of_z_c_over_m():
    clip, z, m = 2.0, 1.5, 4
    start = np.zeros(20000, np.float32)
    updates = [np.full(20000, 0.1 * (i + 1), np.float32) for i in range(m)]  # norms 14.1 ... 56.6, all above 2
    tokens = [1.0, 10.0, 100.0, 1000.0]  # ignored: every client weighs the same
    clipped = np.mean([u * clip / np.linalg.norm(u) for u in updates], axis=0)
    quiet = FlowerAggregator(compose_config(["clients=8", f"fl.clients_per_round={m}", f"fl.dp.clip={clip}"]))
    np.testing.assert_allclose(quiet(1, start, updates, tokens), clipped, rtol=1e-5)  # clipping alone adds nothing
    cfg = compose_config(["clients=8", f"fl.clients_per_round={m}", f"fl.dp.clip={clip}", f"fl.dp.noise_multiplier={z}"])
    noisy = FlowerAggregator(cfg)(1, start, updates, tokens)
    assert np.std(noisy - clipped) == pytest.approx(z * clip / m, rel=0.03)
    np.testing.assert_array_equal(noisy, FlowerAggregator(cfg)(1, start, updates, tokens))  # seeded by (seed, round)
    assert not np.array_equal(noisy, FlowerAggregator(cfg)(2, start, updates, tokens))


def test_a_private_run_clips_what_each_client_sends_and_states_epsilon_in_every_row(tmp_path):
    cfg = compose_config([*TINY, f"data.cache_dir={tmp_path / 'cache'}", "fl.rounds=3", "fl.eval_every=0",
                          "comm.uplink.name=fp32", "fl.dp.clip=0.003", "fl.dp.noise_multiplier=0.8"])
    validate_config(cfg)
    federation = Federation(cfg)
    local = LocalExchange(federation, ClientStore(None))
    sent = []

    def exchange(requests):
        replies = local(requests)
        sent.extend(float(np.linalg.norm(r.reply.arrays[0])) for r in replies if r.reply is not None)
        return replies

    run = tmp_path / "run"
    summary = run_federation(cfg, run, exchange, FlowerAggregator(cfg), federation=federation)
    assert len(sent) == 6 and max(sent) <= 0.003 * (1 + 1e-6) and min(sent) > 0.0029  # clipped before encoding (unclipped: 0.005-0.02)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epsilon"] for row in rows] == pytest.approx([epsilon(cfg.fl, r) for r in (1, 2, 3)])
    assert rows[0]["epsilon"] < rows[1]["epsilon"] < rows[2]["epsilon"] == summary["epsilon"]


def test_adaptive_clipping_moves_the_norm_towards_its_quantile_of_the_update_norms():
    """Andrew et al.: every update within the norm (b = 1 > target 0.5) shrinks it, every update clipped grows it. (Flower
    1.42's adaptive wrappers step by the clipped fraction: the second case would shrink too.)"""
    clip = ClipNorm(1.0, target_quantile=0.5, lr=0.2, count_stddev=0.0, cohort=4)
    clip.adapt([True] * 4, np.random.default_rng(0))
    assert clip.norm == pytest.approx(np.exp(-0.2 * 0.5))
    clip.adapt([False] * 4, np.random.default_rng(0))
    assert clip.norm == pytest.approx(1.0)
    fixed = ClipNorm(1.0)
    fixed.adapt([False] * 4, np.random.default_rng(0))
    assert fixed.norm == 1.0
    fl = compose_config(["clients=1000", "fl.clients_per_round=100", "fl.dp.clip=0.1", "fl.dp.noise_multiplier=1",
                         "fl.dp.target_quantile=0.5"]).fl
    updates_z, count_stddev = noise_split(fl)
    assert count_stddev == 5.0 and updates_z == pytest.approx((1 - (2 * 5.0) ** -2) ** -0.5)  # both spend what z=1 does


@pytest.mark.parametrize(("overrides", "message"), [
    (["fl.dp.target_quantile=0.5"], "starts from fl.dp.clip"),
    (["fl.dp.clip=1", "fl.dp.target_quantile=1.5"], "must be in \\[0, 1\\)"),
    (["fl.dp.clip=1", "fl.dp.noise_multiplier=1", "fl.dp.target_quantile=0.5", "clients=20", "fl.clients_per_round=5"],
     "with 5 clients a round cannot spend noise multiplier 1"),
    (["fl.dp.clip=1", "fl.dp.noise_multiplier=1", "fl.devices=mixed", "fl.mode=async"], "fl.mode=async"),
])
def test_adaptive_clipping_that_cannot_run_is_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config(overrides))


def test_an_adaptive_norm_travels_to_the_clients_grows_while_every_update_is_clipped_and_is_saved(tmp_path):
    cfg = compose_config([*TINY, f"data.cache_dir={tmp_path / 'cache'}", "fl.rounds=3", "fl.eval_every=0",
                          "comm.uplink.name=fp32", "fl.dp.clip=0.001", "fl.dp.target_quantile=0.5", "fl.dp.clip_lr=0.5"])
    validate_config(cfg)
    federation = Federation(cfg)
    local = LocalExchange(federation, ClientStore(None))
    norms, sent = [], []

    def exchange(requests):
        replies = local(requests)
        if all(r.reply is not None for r in replies):  # not the first try of a client that asks for a resync
            norms.append({r.clip_norm for r in requests})
            sent.append(max(float(np.linalg.norm(r.reply.arrays[0])) for r in replies))
        return replies

    aggregator = FlowerAggregator(cfg)
    run_federation(cfg, tmp_path / "run", exchange, aggregator, federation=federation)
    (first,), (second,), (third,) = norms
    assert first == 0.001 and second == pytest.approx(0.001 * np.exp(0.25)) and third == pytest.approx(second * np.exp(0.25))
    assert all(top <= norm * (1 + 1e-6) for top, (norm,) in zip(sent, norms))  # each round's own norm bound what was sent
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["clip_norm"] for row in rows] == pytest.approx([first, second, third])
    restored = FlowerAggregator(cfg)
    restored.restore_state_arrays(aggregator.state_arrays())
    assert restored.clip_norm == aggregator.clip_norm == pytest.approx(third * np.exp(0.25))
