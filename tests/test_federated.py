"""One federated round without Flower: what a client sends and what it keeps."""

import numpy as np
import pytest
import torch

from fedq.comm import payload_bytes
from fedq.compose import compose_config, overrides_from_run_config
from fedq.federated import Federation, client_lr_schedule, default_uplink_bits, model_to_vector, vector_to_model
from fedq.training import inverse_sqrt_schedule

TINY = [
    "clients=4",
    "fl.clients_per_round=2",
    "fl.local_steps=2",
    "data.demo_train_size=400",
    "data.demo_eval_size=10",
    "data.vocab_size=200",
    "model.d_model=32",
    "model.ffn_dim=64",
    "device=cpu",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return f"data.cache_dir={tmp_path_factory.mktemp('cache')}"


def test_weight_vector_round_trip(cache):
    federation = Federation(compose_config(TINY + [cache, "quant.bits=4"]))
    vector = model_to_vector(federation.model)
    assert vector.dtype == np.float32 and vector.size == federation.numel
    vector_to_model(federation.model, vector + 1.0)
    np.testing.assert_array_equal(model_to_vector(federation.model), vector + 1.0)
    with pytest.raises(ValueError, match="values"):
        vector_to_model(federation.model, vector[:-1])


def test_client_round_sends_a_compressed_update_and_keeps_the_sign_residual(cache):
    federation = Federation(compose_config(TINY + [cache, "quant.bits=2", "comm.uplink.name=sign"]))
    global_vector = federation.initial_vector()
    downlink = federation.downlink.encode(global_vector, np.random.default_rng(0))
    result = federation.client_round(1, 1, downlink, residual=None)

    assert result.metrics["payload-bytes"] == payload_bytes(result.arrays)
    assert payload_bytes(result.arrays) * 28 < global_vector.nbytes
    assert result.metrics["num-tokens"] > 0 and result.metrics["steps"] == 2
    # Error feedback: what was sent plus what is kept is the whole update.
    sent = federation.uplink.decode(result.arrays, federation.numel)
    update = model_to_vector(federation.model) - global_vector
    np.testing.assert_allclose(sent + result.residual, update, atol=1e-6)
    assert np.abs(result.residual).max() > 0


def test_unbiased_uplink_keeps_no_residual(cache):
    federation = Federation(compose_config(TINY + [cache, "quant.bits=4"]))
    downlink = federation.downlink.encode(federation.initial_vector(), np.random.default_rng(0))
    result = federation.client_round(0, 1, downlink, residual=None)
    assert result.residual is None
    assert federation.uplink.name == "uniform" and default_uplink_bits(federation.cfg) == 4


def test_shards_cover_the_training_set_once(cache):
    federation = Federation(compose_config(TINY + [cache, "partition=dirichlet"]))
    indices = sorted(i for shard in federation.shards for i in shard)
    assert indices == list(range(len(federation.task.corpus.train)))
    assert len(federation.shards) == 4


def test_flower_run_config_maps_onto_hydra_settings():
    overrides = overrides_from_run_config(
        {"num-server-rounds": 7, "quant-bits": 4, "overrides": "model=small comm.uplink.name='sign'"}
    )
    assert overrides == ["fl.rounds=7", "quant.bits=4", "model=small", "comm.uplink.name=sign"]
    cfg = compose_config(overrides)
    assert (cfg.fl.rounds, cfg.quant.bits, cfg.model.d_model, cfg.comm.uplink.name) == (7, 4, 256, "sign")


def _lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


def test_client_lr_follows_the_centralized_schedule_over_global_steps():
    cfg = compose_config(["fl.local_steps=40", "fl.warmup_steps=200", "fl.local_lr=2e-3"])

    def optimizer():
        return torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.fl.local_lr)

    central = _lrs(inverse_sqrt_schedule(optimizer(), 200), 5 * 40)
    federated = [lr for r in range(1, 6) for lr in _lrs(client_lr_schedule(optimizer(), cfg, r, 40), 40)]
    np.testing.assert_allclose(federated, central)
    assert max(federated) == pytest.approx(2e-3) and federated[-1] == pytest.approx(2e-3)  # peak at step 200
    assert federated[40] > federated[39]  # round 2 goes on warming up, it does not restart
