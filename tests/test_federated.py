"""One federated round without Flower: what a client sends and what it keeps."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fedq.comm import payload_bytes
from fedq.comm.downlink import Broadcaster, Downlink
from fedq.comm.settings import default_uplink_bits
from fedq.config import compose_config, overrides_from_run_config
from fedq.data import load_corpus
from fedq.data.batching import encode_pairs
from fedq.engine import inverse_sqrt_schedule, steps_per_epoch, within_length
from fedq.fl.client import client_lr_schedule, client_round, federation_for
from fedq.fl.federation import Federation
from fedq.fl.server import RoundReporter, RoundTraffic
from fedq.fl.shards import client_shards, shards_key
from fedq.fl.weights import model_to_vector, vector_to_model
from fedq.scoring import BleuResult

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


def first_message(federation: Federation, vector: np.ndarray) -> Downlink:
    """What the server sends a client in its first round (the whole model, as the downlink scheme sends it)."""
    return Broadcaster(federation.downlink, federation.seeded).message_for(0, vector, 1)


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
    federation = Federation(
        compose_config(TINY + [cache, "quant.bits=2", "comm.uplink.name=sign", "comm.downlink.name=fp32"])
    )
    global_vector = federation.initial_vector()
    downlink = first_message(federation, global_vector)
    result = client_round(federation, 1, 1, downlink, residual=None)

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
    downlink = first_message(federation, federation.initial_vector())
    result = client_round(federation, 0, 1, downlink, residual=None)
    assert result.residual is None
    assert federation.uplink.name == "uniform" and default_uplink_bits(federation.cfg) == 4


def test_shards_cover_the_training_set_once(cache):
    federation = Federation(compose_config(TINY + [cache, "partition=dirichlet"]))
    pairs = sorted(pair for shard in federation.data.shards for pair in shard)
    assert pairs == sorted(encode_pairs(federation.task.corpus.train, federation.tokenizer))
    assert len(federation.data.shards) == 4


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


def test_local_epochs_train_whole_passes_over_the_shard(cache):
    federation = Federation(compose_config(TINY + [cache, "fl.local_epochs=2"]))
    shard = federation.data.shards[0]
    tok = federation.tokenizer
    per_epoch = steps_per_epoch(shard, federation.cfg.data.max_tokens, tok)
    downlink = first_message(federation, federation.initial_vector())
    result = client_round(federation, 0, 1, downlink, residual=None)
    assert result.metrics["steps"] == 2 * per_epoch != federation.cfg.fl.local_steps


def test_local_optimizer_setting_is_the_optimizer_the_client_steps_with(cache):
    updates = {}
    for kind in ("adam", "sgd"):
        federation = Federation(compose_config(TINY + [cache, f"fl.local_optimizer={kind}", "comm.uplink.name=fp32"]))
        start = federation.initial_vector()
        downlink = first_message(federation, start)
        result = client_round(federation, 0, 1, downlink, residual=None)
        updates[kind] = federation.uplink.decode(result.arrays, federation.numel)
    # Adam's first steps move every weight by about lr; momentum SGD's by lr * gradient, far less here.
    assert np.abs(updates["sgd"]).max() < 0.5 * np.abs(updates["adam"]).max()


@pytest.mark.parametrize("cpus", [1, 2])
def test_a_simulated_client_gets_fl_num_cpus_threads(cache, cpus):
    federation_for(compose_config(TINY + [cache, f"fl.num_cpus={cpus}", f"seed={10 + cpus}"]))
    assert torch.get_num_threads() == cpus


def test_shards_hold_only_pairs_within_max_len_and_every_such_pair_once(cache):
    federation = Federation(compose_config(TINY + [cache, "data.max_len=9"]))
    encoded = encode_pairs(federation.task.corpus.train, federation.tokenizer)
    kept = [encoded[i] for i in within_length(encoded, 9)]
    assert 0 < len(kept) < len(encoded)  # the setting really filters this corpus
    assert sorted(pair for shard in federation.data.shards for pair in shard) == sorted(kept)
    assert all(shard for shard in federation.data.shards)


TED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not (TED / "iwslt2017-devsets").is_dir(), reason="the shared IWSLT 2017 TED sets are not here")
def test_shards_of_ted_talks_count_the_talks_each_client_holds_and_keep_them_in_the_cache(tmp_path):
    ted = ["data=ted", f"data.dir={TED / 'iwslt2017-devsets'}{os.pathsep}{TED / 'iwslt2017-test'}", "data.vocab_size=1000",
           f"data.cache_dir={tmp_path}", "clients=20"]
    natural = client_shards(compose_config(ted + ["partition=natural"]))
    iid = client_shards(compose_config(ted))
    talks = len(set(load_corpus(compose_config(ted).data).train_talks))
    assert sum(natural.talks_per_client) == talks  # each talk on exactly one client
    assert min(iid.talks_per_client) > max(natural.talks_per_client)
    assert "talks per client min/median/max" in natural.describe()
    assert client_shards(compose_config(ted + ["partition=natural"])).talks_per_client == natural.talks_per_client


def test_clients_read_their_shards_from_the_disk_cache_and_a_changed_input_gets_new_ones(cache, monkeypatch, tmp_path):
    import fedq.fl.shards as shards_module

    cfg = compose_config(TINY + [cache])
    built = client_shards(cfg)
    monkeypatch.setattr(shards_module, "load_task", lambda cfg: pytest.fail("read the corpus again"))
    again = client_shards(cfg)  # a fresh process in the deployment runtime does exactly this
    assert again.shards == built.shards and again.tokenizer.fingerprint == built.tokenizer.fingerprint
    assert shards_key(compose_config(TINY + [cache, "seed=2"])) != shards_key(cfg)
    assert shards_key(compose_config(TINY + [cache, "partition=dirichlet"])) != shards_key(cfg)

    folder = tmp_path / "corpus"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        for lang in ("de", "en"):
            (folder / f"{split}.{lang}").write_text("a b\n")
    textdir = compose_config([cache, "data=textdir", f"data.dir={folder}", "clients=1"])
    before = shards_key(textdir)
    (folder / "train.de").write_text("a b c\n")
    assert shards_key(textdir) != before


def test_the_final_model_is_scored_once_after_the_last_round(cache, tmp_path, monkeypatch):
    cfg = compose_config(TINY + [cache, "fl.rounds=3", "fl.eval_every=1", "data.max_eval_pairs=4"])
    federation = Federation(cfg)
    reporter = RoundReporter(cfg, federation, tmp_path)
    calls = []
    monkeypatch.setattr(reporter.scorer, "valid_bleu", lambda vector: calls.append("valid") or BleuResult(1.0, "sig", 4))
    monkeypatch.setattr(reporter.scorer, "final", lambda vector, meta: calls.append("final") or {
        "valid_bleu": 2.0, "test_bleu": 3.0, "bleu_signature": "sig", "deployed_size": {}, "checkpoint": "c",
        "deployed_file": "f"})
    vector = federation.initial_vector()
    reporter.start(vector)
    for r in (1, 2, 3):
        reporter.end_round(r, vector, RoundTraffic(clients=2, uplink_bytes=10, fp32_uplink_bytes=40, train_loss=1.0))
    summary = reporter.finish(vector)
    assert calls == ["valid", "valid", "valid", "final"]  # rounds 0, 1, 2 scored; round 3 by finish only
    assert summary["final_valid_bleu"] == 2.0 and summary["rounds"] == 3
