"""One federated round without Flower: what a client sends and what it keeps."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fedq.comm import payload_bytes
from fedq.comm.downlink import Broadcaster
from fedq.config import compose_config, overrides_from_run_config
from fedq.data.batching import encode_pairs
from fedq.data.corpora import load_corpus
from fedq.engine import inverse_sqrt_schedule, steps_per_epoch, within_length
from fedq.fl.client import LocalExchange, client_federation, client_lr_schedule, client_round
from fedq.fl.client_state import ClientState, ClientStore
from fedq.fl.federation import Federation
from fedq.fl.protocol import TrainRequest
from fedq.fl.reporting import RoundReporter
from fedq.fl.rounds import CENTER, Coordinator, RoundOutcome
from fedq.fl.run import run_federation
from fedq.fl.shards import client_shards, shards_key
from fedq.fl.weights import model_to_vector, vector_to_model
from fedq.scoring import BleuResult
from helpers import TINY
from server.aggregation import FlowerAggregator



def first_request(federation: Federation, vector: np.ndarray, partition: int = 0) -> TrainRequest:
    """What the server sends a client in its first round (as the downlink scheme sends it)."""
    return TrainRequest(partition, 1, Broadcaster(federation.downlink, federation.seeded).message_for(partition, vector, 1))


def stored(store: ClientStore, partition: int) -> ClientState:
    return store.load(partition, 1)


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


def test_client_round_sends_a_compressed_update_and_keeps_the_sign_residual_on_disk(cache, tmp_path):
    federation = Federation(
        compose_config(TINY + [cache, "quant.bits=2", "comm.uplink.name=sign", "comm.downlink.name=fp32"])
    )
    global_vector = federation.initial_vector()
    store = ClientStore(tmp_path)
    result = client_round(federation, first_request(federation, global_vector, 1), store)
    residual = stored(store, 1).residual

    assert result.metrics["payload-bytes"] == payload_bytes(result.arrays)
    assert payload_bytes(result.arrays) * 28 < global_vector.nbytes
    assert result.metrics["num-tokens"] > 0 and result.metrics["steps"] == 2
    # Error feedback: what was sent plus what is kept is the whole update.
    sent = federation.uplink.decode(result.arrays, federation.numel)
    update = model_to_vector(federation.model) - global_vector
    np.testing.assert_allclose(sent + residual, update, atol=1e-6)
    assert np.abs(residual).max() > 0 and stored(store, 1).held is None  # a fp32 downlink: nothing to hold


def test_unbiased_uplink_keeps_no_residual(cache, tmp_path):
    federation = Federation(compose_config(TINY + [cache, "quant.bits=4"]))
    store = ClientStore(tmp_path)
    client_round(federation, first_request(federation, federation.initial_vector()), store)
    assert stored(store, 0).residual is None
    assert federation.uplink.name == "uniform" and federation.uplink.bits == 4  # the uplink's bits follow quant.bits


@pytest.mark.parametrize("correlated,carry,unsent", [(False, 1.0, 0.7**2), (True, 1.0, 1 - 2 * 0.3), (False, 0.0, 0.7**2)])
def test_a_mask_uplink_moves_what_no_client_sent_by_the_last_step_and_keeps_that_step_for_resume(cache, correlated, carry, unsent):
    cfg = compose_config(TINY + [cache, "comm.uplink.name=mask", "comm.uplink.density=0.3", f"comm.uplink.correlated={correlated}",
                                 f"comm.uplink.carry={carry}"])
    federation = Federation(cfg)
    server = Coordinator(federation, FlowerAggregator(cfg))
    exchange = LocalExchange(federation, ClientStore(None))  # stateless: the clients keep nothing between rounds
    start = federation.initial_vector()
    first = server.run_round(1, start, exchange)[0]
    second = server.run_round(2, first, exchange)[0]
    step, next_step = first - start, second - first
    # two clients a round, each sending 30 %: 0.7**2 of the values were sent by neither, or 0.4 with stratified masks
    assert abs(np.mean(step == 0) - unsent) < 0.03  # round 1's reference is no step: those values did not move
    held = np.isclose(next_step, step, rtol=1e-5, atol=1e-9) & (step != 0)
    # round 2 moved them by carry x how round 1 moved them (where it did)
    assert abs(np.mean(held) - carry * unsent * (1 - unsent)) < 0.03
    assert abs(np.mean(next_step == 0) - (unsent if carry == 0 else unsent**2)) < 0.03
    np.testing.assert_array_equal(server.state_arrays()[CENTER], next_step)  # the reference a resumed run fills from


def test_shards_cover_the_training_set_once(cache):
    federation = Federation(compose_config(TINY + [cache, "partition=dirichlet"]))
    pairs = sorted(pair for p in range(len(federation.data)) for pair in federation.data.shard(p))
    assert pairs == sorted(encode_pairs(federation.task.corpus.train, federation.tokenizer))
    assert len(federation.data) == 4


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
    shard = federation.data.shard(0)
    tok = federation.tokenizer
    per_epoch = steps_per_epoch(shard, federation.cfg.data.max_tokens, tok)
    result = client_round(federation, first_request(federation, federation.initial_vector()), ClientStore(None))
    assert result.metrics["steps"] == 2 * per_epoch != federation.cfg.fl.local_steps


def test_local_optimizer_setting_is_the_optimizer_the_client_steps_with(cache):
    updates = {}
    for kind in ("adam", "sgd"):
        federation = Federation(compose_config(TINY + [cache, f"fl.local_optimizer={kind}", "comm.uplink.name=fp32"]))
        result = client_round(federation, first_request(federation, federation.initial_vector()), ClientStore(None))
        updates[kind] = federation.uplink.decode(result.arrays, federation.numel)
    # Adam's first steps move every weight by about lr; momentum SGD's by lr * gradient, far less here.
    assert np.abs(updates["sgd"]).max() < 0.5 * np.abs(updates["adam"]).max()


@pytest.mark.parametrize("cpus", [1, 2])
def test_a_simulated_client_gets_fl_num_cpus_threads(cache, cpus):
    client_federation(compose_config(TINY + [cache, f"fl.num_cpus={cpus}", f"seed={10 + cpus}"]))
    assert torch.get_num_threads() == cpus


def test_shards_hold_only_pairs_within_max_len_and_every_such_pair_once(cache):
    federation = Federation(compose_config(TINY + [cache, "data.max_len=9"]))
    encoded = encode_pairs(federation.task.corpus.train, federation.tokenizer)
    kept = [encoded[i] for i in within_length(encoded, 9)]
    assert 0 < len(kept) < len(encoded)  # the setting really filters this corpus
    shards = [federation.data.shard(p) for p in range(len(federation.data))]
    assert sorted(pair for shard in shards for pair in shard) == sorted(kept)
    assert all(shards)


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
    assert (client_shards(compose_config(ted + ["partition=natural"])).talks_per_client == natural.talks_per_client).all()


def test_clients_read_their_shards_from_the_disk_cache_and_a_changed_input_gets_new_ones(cache, monkeypatch, tmp_path):
    import fedq.fl.shards as shards_module

    cfg = compose_config(TINY + [cache])
    built = client_shards(cfg)
    monkeypatch.setattr(shards_module, "load_task", lambda cfg: pytest.fail("read the corpus again"))
    again = client_shards(cfg)  # a fresh process in the deployment runtime does exactly this
    assert [again.shard(p) for p in range(4)] == [built.shard(p) for p in range(4)]
    assert again.tokenizer.fingerprint == built.tokenizer.fingerprint
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
        reporter.end_round(r, vector, RoundOutcome(clients=2, uplink_bytes=10, fp32_uplink_bytes=40, train_loss=1.0))
    summary = reporter.finish(vector)
    assert calls == ["valid", "valid", "valid", "final"]  # rounds 0, 1, 2 scored; round 3 by finish only
    assert summary["final_valid_bleu"] == 2.0 and summary["rounds"] == 3


def test_train_weight_decay_is_the_clients_too(cache):
    updates = {}
    for decay in (0.0, 0.5):
        federation = Federation(compose_config(TINY + [cache, f"train.weight_decay={decay}", "comm.uplink.name=fp32"]))
        result = client_round(federation, first_request(federation, federation.initial_vector()), ClientStore(None))
        updates[decay] = federation.uplink.decode(result.arrays, federation.numel)
    assert not np.allclose(updates[0.0], updates[0.5], atol=1e-6)


def test_threads_is_the_servers_torch_threads(cache, tmp_path):
    cfg = compose_config(TINY + [cache, "threads=2", "fl.rounds=1", "fl.eval_every=0", "data.max_eval_pairs=2"])
    federation = Federation(cfg)  # a server-side process: the clients' fl.num_cpus is not set here
    torch.set_num_threads(1)
    run_federation(cfg, tmp_path, LocalExchange(federation, ClientStore(None)), FlowerAggregator(cfg), federation=federation)
    assert torch.get_num_threads() == 2
