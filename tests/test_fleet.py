"""A fleet of any size: bounded server memory of what clients hold, clients' state on disk, shards read per client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import namedtuple

import numpy as np
import pytest

from fedq.comm import make_codec, payload_bytes
from fedq.comm.downlink import DELTA, Broadcaster, SeededModel, receive
from fedq.config import compose_config
from fedq.errors import FedqError
from fedq.fl import footprint
from fedq.fl.client import LocalExchange
from fedq.fl.client_state import ClientStore
from fedq.fl.federation import Federation
from fedq.fl.rounds import Coordinator
from fedq.fl.shards import client_shards
from helpers import TINY
from server.aggregation import FlowerAggregator


def normal(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def test_the_server_remembers_at_most_its_capacity_and_a_forgotten_client_gets_a_delta_against_the_seeded_model():
    codec = make_codec("uniform", bits=4)
    seeded = SeededModel.of(normal(4096))
    server = Broadcaster(codec, seeded, capacity=2)
    model = seeded.vector + 0.5 * normal(4096, 1)
    held = {p: receive(codec, server.message_for(p, model, 1), 4096, None, None, seeded) for p in (0, 1, 2)}
    assert sorted(server.held) == [1, 2]  # the least recently synced (0) is forgotten
    model = model + 0.01 * normal(4096, 2)
    again = {p: server.message_for(p, model, 2) for p in (0, 2)}
    assert again[0].kind == DELTA and again[0].base_round == 0  # against the seeded model, which it can rebuild
    assert again[2].base_round == 1  # against what it holds since round 1
    assert again[0].nbytes == again[2].nbytes == payload_bytes(codec.encode(model, np.random.default_rng(0)))
    rebuilt = receive(codec, again[0], 4096, held[0], 1, seeded)  # what it held is not needed
    step = 2 * np.abs(model - seeded.vector).max() / 15
    assert np.abs(rebuilt - model).max() <= step * 1.0001  # within one step of the codec of that delta
    np.testing.assert_array_equal(rebuilt, server.held[0][1])  # and bit for bit what the server believes


def test_a_client_that_lost_its_files_is_resynced_in_the_same_round_and_both_messages_count(tmp_path):
    cfg = compose_config([*TINY, f"data.cache_dir={tmp_path / 'cache'}", "clients=2", "fl.clients_per_round=2"])
    federation = Federation(cfg)
    store = ClientStore(tmp_path / "clients")
    server = Coordinator(federation, FlowerAggregator(cfg))
    exchange = LocalExchange(federation, store)
    vector, first = server.run_round(1, federation.initial_vector(), exchange)
    assert first.resynced == 0 and sorted(server.broadcaster.held) == [0, 1]
    for path in (tmp_path / "clients").glob("1.*.held.npy"):
        path.unlink()  # client 1 lost its storage
    vector, second = server.run_round(2, vector, exchange)
    assert second.resynced == 1 and second.clients == 2
    assert second.downlink_bytes == 3 * first.downlink_bytes // 2  # two messages to client 1, one to client 0
    held = store.load(1, 2)
    np.testing.assert_array_equal(held.held, server.broadcaster.held[1][1])  # rebuilt bit for bit


@pytest.mark.e2e
def test_client_state_is_written_atomically_and_a_kill_leaves_the_last_whole_version(tmp_path):
    store = ClientStore(tmp_path)
    store.save(3, 1, 0, normal(1000), None)
    script = ("import numpy as np, sys; from pathlib import Path; from fedq.fl.client_state import ClientStore\n"
              "store = ClientStore(Path(sys.argv[1]))\n"
              "for r in range(2, 100000): store.save(3, r, r - 1, np.full(2_000_000, r, np.float32), None)\n")
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)])
    time.sleep(3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    versions = sorted(int(p.name.split(".")[1]) for p in tmp_path.glob("3.*.held.npy"))
    # the newest and the round it started from; a kill between a write and its cleanup leaves one more
    assert versions and max(versions) > 2 and len(versions) <= 3 and versions == list(range(versions[0], versions[-1] + 1))
    newest = store.load(3, max(versions))
    assert newest.held_round == max(versions) and np.all(newest.held == max(versions))  # whole, never torn
    store.save(3, max(versions) + 1, max(versions), newest.held, None)  # the next save clears what the kill left
    assert sorted(int(p.name.split(".")[1]) for p in tmp_path.glob("3.*.held.npy")) == [max(versions), max(versions) + 1]
    # a write the kill cut short stays a temp file under another name, which the store never reads
    assert all(p.name.startswith(".") for p in tmp_path.iterdir() if p.name.endswith(".tmp"))


def test_clients_share_one_folder_that_keeps_the_held_models_of_at_most_capacity_clients(tmp_path):
    store = ClientStore(tmp_path, capacity=2)
    for round_, partition in enumerate((5, 6, 7), start=1):
        store.save(partition, round_, 0, normal(10), residual=normal(10))
    assert len(list(tmp_path.glob("*.held.npy"))) == 3  # a node evicts once it has played its batch of clients
    store.evict()
    assert sorted(int(p.name.split(".")[0]) for p in tmp_path.glob("*.held.npy")) == [6, 7]  # as the server forgets
    assert store.load(5, 0).held is None and store.load(5, 0).residual is not None  # residuals are kept


def test_a_fleet_of_ten_thousand_samples_from_the_clients_online_without_reading_their_shards(tmp_path):
    overrides = [*TINY, f"data.cache_dir={tmp_path}", "clients=10000", "fl.clients_per_round=100", "fl.devices=mixed",
                 "partition.shard_size=2", "data.demo_train_size=20000"]
    cfg = compose_config(overrides)
    shards = client_shards(cfg)
    assert isinstance(shards.tokens, np.memmap) and len(shards) == 10000 and shards.sizes.tolist() == [2] * 10000
    assert [len(shards.shard(p)) for p in (0, 9999)] == [2, 2]
    federation = Federation(cfg)
    server = Coordinator(federation, FlowerAggregator(cfg))
    online = federation.faults.online(7)
    chosen = server.sample(7)
    assert len(chosen) == 100 and set(chosen) <= set(online.tolist()) and 0.6 < len(online) / 10000 < 0.85
    assert server.sample(7) == chosen and server.sample(8) != chosen  # seeded by (seed, round)


@pytest.mark.parametrize("codecs", [[], ["comm.uplink.name=grid", "comm.downlink.name=grid"]])
def test_a_federation_that_does_not_fit_the_machine_is_refused_with_the_estimate(tmp_path, monkeypatch, codecs):
    federation = Federation(compose_config([*TINY, *codecs, f"data.cache_dir={tmp_path}"]))
    footprint.check_fits(federation, tmp_path)  # a tiny one fits (sized with an all-zero message: one symbol for the grid)
    monkeypatch.setattr(footprint, "available_memory", lambda: 1e9)
    with pytest.raises(FedqError, match=r"needs about \d+\.\d GB of memory .* but 1\.0 GB are free: lower fl.clients_per_round"):
        footprint.check_fits(federation, tmp_path)
    monkeypatch.setattr(footprint, "available_memory", lambda: 1e12)
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(footprint.shutil, "disk_usage", lambda path: Usage(1, 1, 1000))
    with pytest.raises(FedqError, match=r"needs about \d+\.\d MB of disk \(held models \(server and clients\) \d+\.\d MB, "
                                        r"shards .*\) but .* has 1\.0 kB free: lower comm.downlink.cache_mb"):
        footprint.check_fits(federation, tmp_path)
    assert os.path.exists(tmp_path)
