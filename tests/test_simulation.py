"""The federated run: a real Flower + Ray simulation end to end, and the server's payload checks."""

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import helpers
from fedq.cli import check_overrides
from fedq.comm import make_codec, payload_bytes
from fedq.comm.downlink import Downlink
from fedq.config import compose_config, validate_config
from fedq.errors import ConfigError, FedqError
from fedq.fl import protocol
from fedq.fl.protocol import TrainReply, TrainRequest
from fedq.fl.rounds import STAGES, Admission, Coordinator, RoundOutcome
from fedq.fl.strategies import STRATEGIES
from fedq.simulate import pool_size
from helpers import TINY, answering, reply, tiny_federation
from server.aggregation import FlowerAggregator

TINY_RUN = [
    *(o for o in helpers.TINY_RUN if not o.startswith("fl.rounds=")),
    "fl.rounds=3",
    "quant.bits=2",
    "comm.uplink.name=sign",
    "comm.downlink.name=uniform",
    "comm.downlink.bits=4",
]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[Path, str]:
    """One small Flower + Ray run that the end-to-end tests below read: its folder and its output. It is private
    (fl.dp): clipping and noise run in the ClientApps and the ServerApp's Flower strategy."""
    tmp = tmp_path_factory.mktemp("small-run")
    out = tmp / "run"
    result = subprocess.run(  # 2 CPUs a client on this 2-core machine: one node, sent both clients in one message
        [sys.executable, "-m", "fedq.simulate", *TINY_RUN, "fl.dp.clip=0.5", "fl.dp.noise_multiplier=0.05", "fl.num_cpus=2",
         f"data.cache_dir={tmp / 'cache'}", f"hydra.run.dir={out}"],
        capture_output=True, text=True, timeout=420,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout


@pytest.mark.e2e
def test_end_to_end_simulation_with_flower_and_ray(small_run):
    out, stdout = small_run
    assert "round 3/3" in stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert [row["round"] for row in rows] == [1, 2, 3]
    assert all(row["clients"] == 2 and row["rejected"] == 0 for row in rows)

    # Bytes: the sign codec sends 1 bit per value + one fp16 scale per 1024-value block.
    numel = rows[0]["fp32_uplink_bytes"] // (2 * 4)
    sign_payload = payload_bytes(make_codec("sign").encode(np.ones(numel, np.float32), np.random.default_rng(0)))
    assert sign_payload == (numel + 7) // 8 + 2 * (-(-numel // 1024))
    assert all(row["uplink_bytes"] == 2 * sign_payload for row in rows)
    assert summary["uplink_bytes"] == sum(row["uplink_bytes"] for row in rows)
    assert summary["downlink_bytes"] == sum(row["downlink_bytes"] for row in rows)
    assert summary["uplink_ratio"] == pytest.approx(summary["fp32_uplink_bytes"] / summary["uplink_bytes"])
    assert summary["uplink_ratio"] > 28
    assert rows[0]["valid_bleu"] is not None and rows[-1]["valid_bleu"] is None  # the last round is scored once, by finish
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())  # the final model is scored once, as shipped
    assert (summary["final_valid_bleu"], summary["final_test_bleu"]) == (meta["valid_bleu"], meta["test_bleu"])
    assert len((out / "checkpoint" / "test.hyp.txt").read_text().splitlines()) == 20  # every test sentence translated
    assert "tok:13a" in summary["bleu_signature"]
    assert (out / "bleu_vs_uplink.png").stat().st_size > 1000
    assert (out / "checkpoint" / "model.fedq").is_file()
    assert summary["train_loss_final"] == rows[-1]["train_loss"]
    assert 0 < rows[0]["epsilon"] < rows[1]["epsilon"] < rows[2]["epsilon"] == summary["epsilon"]  # DP, accounted
    for row in rows:  # where the round's time went: the clients' own timings came back through Flower
        stages = row["stage_seconds"]
        assert stages["exchange"] > stages["clients"] / 2 and stages["clients"] > stages["clients_train"] > 0
        assert set(stages) == set(STAGES) - {"secagg"} and row["wall_seconds"] > stages["exchange"]  # no fl.secagg
    assert f"ε {rows[2]['epsilon']:.3g}" in [line for line in stdout.splitlines() if line.startswith("round 3/3")][0]


@pytest.mark.e2e
def test_compressed_downlink_sends_every_sampled_client_one_delta_and_counts_it(small_run):
    """Each sampled client gets one 4-bit delta: against the seeded model the first time, then against what it holds."""
    out, stdout = small_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    numel = rows[0]["fp32_downlink_bytes"] // (2 * 4)
    delta = payload_bytes(make_codec("uniform", bits=4).encode(np.zeros(numel, np.float32), np.random.default_rng(0)))
    # 2 clients per round; the first round's deltas (against the seeded model) are accepted by the clients only if
    # they built the same seeded model as the server (its digest travels with them)
    assert [row["downlink_bytes"] for row in rows] == [2 * delta] * 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["downlink_ratio"] > 7 and summary["total_ratio"] > 7
    assert "total" in [line for line in stdout.splitlines() if line.startswith("round 3/3")][0]


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    return tiny_federation(f"data.cache_dir={tmp_path_factory.mktemp('cache')}", "comm.uplink.name=fp32")


def coordinator(federation, *overrides: str) -> Coordinator:
    cfg = compose_config([*TINY, *overrides, f"data.cache_dir={federation.cfg.data.cache_dir}", "comm.uplink.name=fp32"])
    federation = copy.copy(federation)  # the module's federation stays as the fixture made it
    federation.cfg = cfg
    return Coordinator(federation, FlowerAggregator(cfg))


def fingerprint(federation) -> int:
    return protocol.fingerprint_number(federation.tokenizer.fingerprint)


def test_one_message_carries_several_clients_and_a_downlink_they_share_once():
    shared, own = Downlink([np.arange(4, dtype=np.uint8)], "delta", 0, "abc"), Downlink([np.ones(3, np.float32)], "delta", 2)
    requests = [TrainRequest(5, 3, shared, True, 0, 3), TrainRequest(9, 3, own, True, 1, 3, 0.5), TrainRequest(7, 3, shared, True, 2, 3)]
    arrays, configs = protocol.pack_requests(requests)
    assert len(arrays) == 2 and len(configs) == 3  # the shared downlink travels once
    unpacked = protocol.unpack_requests(arrays, configs)
    assert [(r.partition, r.slot, r.clip_norm, r.downlink.base_round) for r in unpacked] == [(5, 0, 0.0, 0), (9, 1, 0.5, 2), (7, 2, 0.0, 0)]
    assert unpacked[0].downlink.arrays[0] is unpacked[2].downlink.arrays[0] and unpacked[0].downlink.base_digest == "abc"
    with pytest.raises(protocol.ProtocolError, match="without its config or downlink record 1"):
        protocol.unpack_requests({"arrays.0": arrays["arrays.0"]}, configs)

    update = TrainReply([np.zeros(2, np.float32)], {protocol.NUM_TOKENS: 3.0, protocol.FINGERPRINT: 2**59 + 1})
    arrays, metrics, errors = protocol.pack_replies([update, "dropout: simulated", update])
    back = protocol.unpack_replies(3, arrays, metrics, errors)
    assert back[1] == "dropout: simulated" and back[2].metrics[protocol.FINGERPRINT] == 2**59 + 1  # an int, not rounded
    assert protocol.unpack_replies(4, arrays, metrics, errors)[3].startswith("crashed: the reply carries no update")


@pytest.mark.parametrize(("overrides", "cpus", "gpus", "nodes"), [
    (["fl.clients_per_round=10"], 2, 0, 2),  # as many as Ray runs at once
    (["fl.clients_per_round=3"], 16, 0, 3),  # never more than a round's clients
    (["fl.clients_per_round=10", "fl.num_cpus=3"], 16, 0, 5),
    (["fl.clients_per_round=10", "fl.num_gpus=0.5"], 16, 1, 2),  # the GPU shares bound it
])
def test_the_simulations_pool_has_a_node_per_client_ray_runs_at_once(overrides, cpus, gpus, nodes):
    assert pool_size(compose_config(["clients=20", *overrides]), cpus, gpus) == nodes


def test_server_rejects_a_malformed_payload_and_averages_the_rest(federation):
    codec = make_codec("uniform", bits=8)
    admission = Admission(federation.cfg.fl, codec, 7, federation.faults)
    n = 4 * 256 + 3
    good = codec.encode(np.full(n, 0.5, np.float32), np.random.default_rng(0))
    truncated = [good[0][:-3]] + good[1:]
    outcome = RoundOutcome()
    admitted = admission.admit([reply(0, good, 10.0, 7), reply(1, truncated, 1000.0, 7)], np.zeros(n, np.float32),
                               np.zeros(n, np.float32), outcome)
    assert outcome.rejected == 1 and outcome.clients == 1 and [a.partition for a in admitted] == [0]
    assert "client 1: uniform payload: codes has" in outcome.rejections[0]
    np.testing.assert_allclose(admitted[0].update, 0.5, atol=0.01)  # only the good update is kept
    assert outcome.uplink_bytes == payload_bytes(good) + payload_bytes(truncated)  # every byte received counts


def test_server_refuses_a_client_with_another_tokenizer(federation):
    codec = make_codec("fp32")
    admission = Admission(federation.cfg.fl, codec, 7, federation.faults)
    outcome = RoundOutcome()
    admitted = admission.admit([reply(0, codec.encode(np.ones(16, np.float32), None), 10.0, 7),
                                reply(1, codec.encode(np.full(16, 9.0, np.float32), None), 10.0, 0xABC)],
                               np.zeros(16, np.float32), np.zeros(16, np.float32), outcome)
    assert outcome.rejected == 1 and [a.partition for a in admitted] == [0]
    assert "fingerprint 000000000000abc" in outcome.rejections[0] and "server's (000000000000007)" in outcome.rejections[0]


def test_round_metrics_are_the_loss_weighted_by_tokens_and_the_times_of_the_slowest(federation):
    codec = make_codec("fp32")
    outcome = RoundOutcome()
    update = codec.encode(np.zeros(8, np.float32), None)
    Admission(federation.cfg.fl, codec, 7, federation.faults).admit(
        [reply(0, update, 100.0, 7, loss=2.0), reply(1, update, 300.0, 7, loss=4.0)], np.zeros(8, np.float32),
        np.zeros(8, np.float32), outcome)
    assert outcome.train_loss == pytest.approx((2 * 100 + 4 * 300) / 400)
    assert outcome.client_train_seconds == pytest.approx(3.0)  # the slower client's


@pytest.mark.parametrize("server_lr", [1.0, 0.5])
def test_a_round_steps_the_global_model_by_server_lr_times_the_token_weighted_mean(federation, server_lr):
    server = coordinator(federation, f"fl.server_lr={server_lr}")
    start = federation.initial_vector()
    updates = {p: np.full(start.size, float(p + 1), np.float32) for p in range(4)}
    tokens = {p: 10.0 * (p + 1) for p in range(4)}
    new, outcome = server.run_round(3, start, answering(updates, make_codec("fp32"), fingerprint(federation), tokens))
    chosen = server.sample(3)
    mean = sum(tokens[p] * (p + 1) for p in chosen) / sum(tokens[p] for p in chosen)
    np.testing.assert_allclose(new - start, server_lr * mean, rtol=1e-5)
    assert outcome.clients == 2 and outcome.sampled == 2
    assert outcome.downlink_bytes == sum(server.broadcaster.message_for(p, start, 3).nbytes for p in chosen)


def test_an_unreachable_client_is_not_sampled_until_the_exchange_sees_it_again(federation):
    server = coordinator(federation, "fl.clients_per_round=4")
    start = federation.initial_vector()
    updates = {p: np.full(start.size, 0.1, np.float32) for p in range(4)}
    updates[2] = "unreachable: node 77: sent no reply within 5s"
    exchange = answering(updates, make_codec("fp32"), fingerprint(federation))
    back: set[int] = set()
    exchange.back_online = lambda partitions: partitions & back
    _, first = server.run_round(1, start, exchange)
    assert first.dropped == {"unreachable": 1} and first.failures == ["client 2: unreachable: node 77: sent no reply within 5s"]
    assert server.sample(2) == [0, 1, 3]  # not sampled while unreachable
    updates[2] = np.full(start.size, 0.1, np.float32)
    _, second = server.run_round(2, start, exchange)
    assert second.sampled == 3 and server.unreachable == {2}
    back.add(2)  # its node connected again
    _, third = server.run_round(3, start, exchange)
    assert third.sampled == 4 and third.clients == 4 and not server.unreachable


def test_a_client_whose_ray_worker_died_is_counted_with_its_reason_and_a_warning(federation, caplog):
    server = coordinator(federation, "fl.clients_per_round=3")
    start = federation.initial_vector()
    updates = {p: np.full(start.size, 0.1, np.float32) for p in range(4)}
    died = server.sample(1)[1]
    updates[died] = "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task."
    _, outcome = server.run_round(1, start, answering(updates, make_codec("fp32"), fingerprint(federation)))
    assert outcome.dropped == {"worker died": 1} and outcome.clients == 2
    assert outcome.failures == [f"client {died}: worker died (ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.)"]
    assert [(r.name, r.levelname) for r in caplog.records if "Flower does not replace a worker that died" in r.message] == [
        ("fedq.fl.rounds", "WARNING")]


def test_a_fedq_config_reaches_the_strategy(federation):
    assert type(coordinator(federation, "fl.server_lr=0.5").aggregator.strategy).__name__ == "FedAvg"
    adam = coordinator(federation, "fl.strategy=fedadam", "fl.server_lr=0.02", "fl.local_lr=3e-3")
    assert type(adam.aggregator.strategy).__name__ == "FedAdam" and adam.aggregator.strategy.eta == 0.02
    assert adam.server_lr == 1.0  # Adam's own step; fl.server_lr is its eta
    trimmed = coordinator(federation, "fl.strategy=fedtrimmedavg", "fl.trim_beta=0.3")
    assert trimmed.aggregator.strategy.beta == 0.3


def test_every_strategy_entry_builds_its_flower_strategy():
    from flwr.serverapp.strategy import Strategy as FlowerStrategy

    assert STRATEGIES.names() == ("fedavg", "fedavgm", "fedadam", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")
    for name in STRATEGIES.names():
        built = FlowerAggregator(compose_config([f"fl.strategy={name}", "fl.byzantine=1", "clients=20",
                                                 "fl.clients_per_round=10"])).strategy
        assert isinstance(built, FlowerStrategy) and type(built).__name__ == STRATEGIES.get(name).flower


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["clients=4", "fl.clients_per_round=5"], "more than clients=4"),
        (["comm.uplink.name=gzip"], "gzip"),
        (["comm.uplink.name=uniform", "comm.uplink.bits=16"], "16"),
        (["comm.downlink.name=gzip"], "comm.downlink: codec='gzip' is unknown"),
        (["fl.warmup_steps=-1"], "warmup_steps"),
        # settings a codec does not use are refused, never silently ignored
        (["comm=sign", "comm.uplink.bits=4"], "comm.uplink: codec sign does not use bits"),
        (["comm.uplink.density=0.05"], "comm.uplink: codec uniform does not use density"),
        (["comm.uplink.error_feedback=true"], "error_feedback applies to biased codecs"),
        (["comm=fp32", "comm.downlink.bits=4"], "comm.downlink: codec fp32 does not use bits"),
        (["comm.downlink.cache_mb=-1"], "cache_mb=-1"),
        (["comm.downlink.name=grid", "comm.downlink.step=4"], "comm.downlink.step=4 must be <= 2"),
        (["comm.downlink.name=mask"], "comm.downlink.name=mask: its unsent values are filled from the server's last step"),
        (["comm.uplink.name=mask", "fl.strategy=fedmedian"], "mask with fl.strategy=fedmedian: most updates hold"),
        (["comm.uplink.name=mask", "comm.uplink.density=0"], r"codec mask: density must be in \(0, 1\]"),
        (["model.max_positions=16"], "model.max_positions=16 cannot hold"),
        (["seed=-1"], "seed=-1 must be >= 0"),
    ],
)
def test_bad_federation_settings_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate_config(compose_config(overrides))


@pytest.mark.parametrize("override", ["comm.downlink.error_feedback=false", "model.preset=iwslt", "+fl.roudns=2", "foo=1"])
def test_settings_fedq_does_not_have_are_one_line_whatever_their_prefix(override):
    with pytest.raises(FedqError, match="is not a fedq setting"):
        check_overrides([override])


@pytest.mark.e2e
def test_bad_federation_setting_is_one_line_on_the_command_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fedq.simulate", "clients=2", "fl.clients_per_round=3", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: fl.clients_per_round=3 is more than clients=2"]



def test_fedadam_server_optimizer_steps_along_the_decoded_update():
    aggregator = FlowerAggregator(compose_config(["fl.strategy=fedadam", "fl.server_lr=0.1"]))
    update = np.linspace(-1, 1, 8).astype(np.float32)
    step = aggregator(1, np.zeros(8, np.float32), [update], [5.0])
    assert np.all(np.sign(step[update != 0]) == np.sign(update[update != 0]))
    assert np.abs(step).max() <= 0.1 * 1.01  # Adam's step is bounded by eta
    saved = aggregator.state_arrays()
    assert sorted(saved) == ["m_t.weights", "v_t.weights"]
    again = FlowerAggregator(compose_config(["fl.strategy=fedadam", "fl.server_lr=0.1"]))
    again.restore_state_arrays(saved)
    np.testing.assert_array_equal(again(2, step, [update], [5.0]), aggregator(2, step, [update], [5.0]))


def test_fedavgm_steps_with_heavy_ball_momentum_and_resumes_it():
    settings = ["fl.strategy=fedavgm", "fl.server_lr=0.5", "fl.server_momentum=0.8"]
    aggregator = FlowerAggregator(compose_config(settings))
    first, second = np.linspace(-1, 1, 8).astype(np.float32), np.linspace(2, 0, 8).astype(np.float32)
    start = np.full(8, 3.0, np.float32)
    after_one = aggregator(1, start, [first], [5.0])
    np.testing.assert_allclose(after_one, start + 0.5 * first, rtol=1e-6)  # m = g: the first step is lr x update
    saved = aggregator.state_arrays()
    again = FlowerAggregator(compose_config(settings))
    again.restore_state_arrays(saved)
    expected = after_one + 0.5 * (second + 0.8 * first)  # m = 0.8 m + g
    np.testing.assert_allclose(aggregator(2, after_one, [second], [5.0]), expected, rtol=1e-5)
    np.testing.assert_allclose(again(2, after_one, [second], [5.0]), expected, rtol=1e-5)  # the momentum was saved
    fresh = FlowerAggregator(compose_config(settings))
    np.testing.assert_allclose(fresh(2, after_one, [second], [5.0]), after_one + 0.5 * second, rtol=1e-6)


@pytest.mark.parametrize("settings,error", [
    (["fl.server_momentum=0.9"], "fl.server_momentum=0.9 is not used by this run (fl.strategy=fedavg, fl.defence=none, "
                                 "fl.attack=none); it is a setting of fl.strategy=fedavgm"),
    (["fl.strategy=fedavgm", "fl.server_momentum=1.0"], "fl.server_momentum=1.0 must be in [0, 1)"),
])
def test_server_momentum_is_refused_where_it_does_not_apply(settings, error):
    with pytest.raises(ConfigError, match=re.escape(error)):
        validate_config(compose_config(settings))


def test_an_update_that_decodes_to_nan_is_rejected_and_never_applied(federation):
    codec = make_codec("fp32")
    bad = np.ones(8, np.float32)
    bad[3] = np.nan
    outcome = RoundOutcome()
    admitted = Admission(federation.cfg.fl, codec, 7, federation.faults).admit(
        [reply(0, [bad], 1000.0, 7), reply(1, codec.encode(np.full(8, 0.25, np.float32), None), 1.0, 7)],
        np.zeros(8, np.float32), np.zeros(8, np.float32), outcome)
    assert outcome.rejected == 1 and "NaN" in outcome.rejections[0] and [a.partition for a in admitted] == [1]
