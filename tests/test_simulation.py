"""The federated run: a real Flower + Ray simulation end to end, and the server's payload checks."""

import json
import subprocess
import sys

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedq.comm import make_codec, payload_bytes
from fedq.config import compose_config, validate_config
from fedq.fl.client import FINGERPRINT_KEY
from fedq.fl.federation import Federation
from server.server_app import make_strategy
from server.strategy import CompressedFedAdam, CompressedFedAvg, record_vector

TINY_RUN = [
    "clients=3",
    "fl.clients_per_round=2",
    "fl.rounds=2",
    "fl.local_steps=2",
    "fl.eval_every=1",
    "data.demo_train_size=600",
    "data.demo_eval_size=20",
    "data.vocab_size=300",
    "model.d_model=32",
    "model.ffn_dim=64",
    "quant.bits=2",
    "comm.uplink.name=sign",
    "comm.downlink.name=fp16",
]


def test_end_to_end_simulation_with_flower_and_ray(tmp_path):
    out = tmp_path / "run"
    cache = tmp_path / "cache"
    result = subprocess.run(
        [sys.executable, "-m", "fedq.simulate", *TINY_RUN, f"data.cache_dir={cache}", f"hydra.run.dir={out}"],
        capture_output=True, text=True, timeout=420,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "round 2/2" in result.stdout

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert [row["round"] for row in rows] == [1, 2]
    assert all(row["clients"] == 2 and row["rejected"] == 0 for row in rows)

    # Bytes: the sign codec sends 1 bit per value + one fp16 scale per 1024-value block.
    numel = rows[0]["fp32_uplink_bytes"] // (2 * 4)
    sign_payload = payload_bytes(make_codec("sign").encode(np.ones(numel, np.float32), np.random.default_rng(0)))
    assert sign_payload == (numel + 7) // 8 + 2 * (-(-numel // 1024))
    assert all(row["uplink_bytes"] == 2 * sign_payload for row in rows)
    assert all(row["downlink_bytes"] == 2 * 2 * numel for row in rows)  # fp16 weights to 2 clients
    assert summary["uplink_bytes"] == sum(row["uplink_bytes"] for row in rows)
    assert summary["downlink_bytes"] == sum(row["downlink_bytes"] for row in rows)
    assert summary["uplink_ratio"] == pytest.approx(summary["fp32_uplink_bytes"] / summary["uplink_bytes"])
    assert summary["uplink_ratio"] > 28
    assert rows[0]["valid_bleu"] is not None and rows[-1]["valid_bleu"] is None  # the last round is scored once, by finish
    assert 0 <= summary["final_valid_bleu"] <= 100 and 0 <= summary["final_test_bleu"] <= 100
    assert "tok:13a" in summary["bleu_signature"]
    assert (out / "bleu_vs_uplink.png").stat().st_size > 1000
    assert (out / "checkpoint" / "model.fedq").is_file()
    assert summary["train_loss_final"] == rows[-1]["train_loss"]


def test_compressed_downlink_sends_every_sampled_client_one_delta_and_counts_it(tmp_path):
    """Each sampled client gets one 4-bit delta: against the seeded model the first time, then against what it holds."""
    out = tmp_path / "run"
    overrides = [o for o in TINY_RUN if not o.startswith(("comm.", "fl.rounds"))] + [
        "fl.rounds=4", "comm.downlink.name=uniform", "comm.downlink.bits=4", f"data.cache_dir={tmp_path / 'cache'}",
    ]
    result = subprocess.run([sys.executable, "-m", "fedq.simulate", *overrides, f"hydra.run.dir={out}"],
                            capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    numel = rows[0]["fp32_downlink_bytes"] // (2 * 4)
    delta = payload_bytes(make_codec("uniform", bits=4).encode(np.zeros(numel, np.float32), np.random.default_rng(0)))
    # 2 clients per round; the first round's deltas (against the seeded model) are accepted by the clients only if
    # they built the same seeded model as the server (its digest travels with them)
    assert [row["downlink_bytes"] for row in rows] == [2 * delta] * 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["downlink_ratio"] > 7 and summary["total_ratio"] > 1.5
    assert "total" in [line for line in result.stdout.splitlines() if line.startswith("round 4/4")][0]


@pytest.fixture()
def server_identity():
    """Messages built outside a running Flower app need the process's task identity."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


def reply(request: Message, arrays: list[np.ndarray], tokens: float, fingerprint: int = 7, loss: float = 1.0) -> Message:
    metrics = MetricRecord(
        {"num-examples": 1.0, "num-tokens": tokens, "train-loss": loss, "train-seconds": tokens / 100,
         "encode-seconds": 0.01, FINGERPRINT_KEY: fingerprint}
    )
    return Message(content=RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=request)


def train_request() -> Message:
    return Message(content=RecordDict({"config": ConfigRecord({})}), dst_node_id=1, message_type="train")


def fedavg(codec, n: int, **kwargs) -> CompressedFedAvg:
    strategy = CompressedFedAvg(uplink=codec, downlink=make_codec("fp32"), weighted_by_key="num-tokens",
                                tokenizer_fingerprint=7, **kwargs)
    strategy.global_vector = np.linspace(-1, 1, n).astype(np.float32)
    return strategy


def test_server_rejects_a_malformed_payload_and_averages_the_rest(server_identity):
    codec = make_codec("uniform", bits=8)
    strategy = fedavg(codec, 4 * 256 + 3)
    n = strategy.global_vector.size
    request = train_request()

    good = np.full(n, 0.5, np.float32)
    good_payload = codec.encode(good, np.random.default_rng(0))
    truncated = [good_payload[0][:-3]] + good_payload[1:]
    replies = [reply(request, good_payload, 10.0), reply(request, truncated, 1000.0)]

    arrays, _ = strategy.aggregate_train(1, replies)
    assert strategy.last_round.rejected == 1 and strategy.last_round.clients == 1
    # Only the good update is applied (the bad one, heavily weighted, would dominate).
    np.testing.assert_allclose(record_vector(arrays), strategy.global_vector + 0.5, atol=0.01)
    assert strategy.last_round.uplink_bytes == payload_bytes(good_payload) + payload_bytes(truncated)


def test_server_refuses_a_client_with_another_tokenizer(server_identity):
    codec = make_codec("fp32")
    strategy = fedavg(codec, 16)
    request = train_request()
    replies = [reply(request, codec.encode(np.ones(16, np.float32), None), 10.0),
               reply(request, codec.encode(np.full(16, 9.0, np.float32), None), 10.0, fingerprint=0xABC)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert strategy.last_round.rejected == 1
    assert "fingerprint 000000000000abc" in strategy.last_round.rejections[0]
    assert "server's (000000000000007)" in strategy.last_round.rejections[0]
    np.testing.assert_allclose(record_vector(arrays), strategy.global_vector + 1.0)


def test_round_metrics_are_flowers_aggregate_loss_weighted_by_tokens_times_of_the_slowest(server_identity):
    codec = make_codec("fp32")
    strategy = fedavg(codec, 8)
    request = train_request()
    update = codec.encode(np.zeros(8, np.float32), None)
    _, metrics = strategy.aggregate_train(1, [reply(request, update, 100.0, loss=2.0), reply(request, update, 300.0, loss=4.0)])
    assert strategy.last_round.train_loss == pytest.approx((2 * 100 + 4 * 300) / 400)
    assert strategy.last_round.client_train_seconds == pytest.approx(3.0)  # the slower client's
    assert metrics["num-tokens"] == 400.0 and FINGERPRINT_KEY not in metrics


@pytest.mark.parametrize("server_lr", [1.0, 0.5])
def test_fedavg_server_lr_scales_the_step_of_the_global_model(server_identity, server_lr):
    codec = make_codec("fp32")
    strategy = fedavg(codec, 8, server_lr=server_lr)
    update = np.linspace(0, 2, 8).astype(np.float32)
    arrays, _ = strategy.aggregate_train(1, [reply(train_request(), codec.encode(update, None), 5.0)])
    np.testing.assert_allclose(record_vector(arrays) - strategy.global_vector, server_lr * update, atol=1e-6)


def test_a_fedq_config_reaches_the_strategy(server_identity, tmp_path):
    cfg = compose_config(TINY_RUN + [f"data.cache_dir={tmp_path}", "fl.server_lr=0.5", "fl.local_lr=3e-3"])
    federation = Federation(cfg)
    strategy = make_strategy(cfg, federation)
    assert isinstance(strategy, CompressedFedAvg) and strategy.server_lr == 0.5
    adam = make_strategy(compose_config(TINY_RUN + [f"data.cache_dir={tmp_path}", "fl.strategy=fedadam", "fl.server_lr=0.02"]), federation)
    assert isinstance(adam, CompressedFedAdam) and adam.eta == 0.02 and adam.server_lr == 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["clients=4", "fl.clients_per_round=5"], "more than clients=4"),
        (["comm.uplink.name=gzip"], "gzip"),
        (["comm.uplink.name=uniform", "comm.uplink.bits=16"], "16"),
        (["comm.downlink.name=gzip"], "comm.downlink.name='gzip' is unknown"),
        (["fl.warmup_steps=-1"], "warmup_steps"),
    ],
)
def test_bad_federation_settings_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate_config(compose_config(overrides))


def test_bad_federation_setting_is_one_line_on_the_command_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fedq.simulate", "clients=2", "fl.clients_per_round=3", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: fl.clients_per_round=3 is more than clients=2"]



def test_fedadam_server_optimizer_steps_along_the_decoded_update(server_identity):
    codec = make_codec("fp32")
    strategy = CompressedFedAdam(uplink=codec, downlink=codec, weighted_by_key="num-tokens", eta=0.1, beta_1=0.9, beta_2=0.99)
    strategy.global_vector = np.zeros(8, np.float32)
    strategy.current_arrays = {"weights": np.zeros(8, np.float32)}  # what FedOpt.configure_train records
    update = np.linspace(-1, 1, 8).astype(np.float32)
    arrays, _ = strategy.aggregate_train(1, [reply(train_request(), codec.encode(update, None), 5.0)])
    step = record_vector(arrays)
    assert np.all(np.sign(step[update != 0]) == np.sign(update[update != 0]))
    assert np.abs(step).max() <= 0.1 * 1.01  # Adam's step is bounded by eta


def test_an_update_that_decodes_to_nan_is_rejected_and_never_applied(server_identity):
    codec = make_codec("fp32")
    strategy = fedavg(codec, 8)
    bad = np.ones(8, np.float32)
    bad[3] = np.nan
    good = codec.encode(np.full(8, 0.25, np.float32), None)
    arrays, _ = strategy.aggregate_train(1, [reply(train_request(), [bad], 1000.0), reply(train_request(), good, 1.0)])
    assert strategy.last_round.rejected == 1 and "NaN" in strategy.last_round.rejections[0]
    np.testing.assert_allclose(record_vector(arrays), strategy.global_vector + 0.25)
