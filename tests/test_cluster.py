"""Beyond one machine: a Ray cluster of a head and a worker, started with `ray start` as separate processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fedq.fl.client import LocalExchange
from fedq.fl.client_state import ClientStore
from fedq.fl.run import run_federation
from fedq.superlink import free_ports
from helpers import TIME_FIELDS, tiny_federation
from server.aggregation import FlowerAggregator

pytestmark = pytest.mark.e2e  # Flower + Ray, or a subprocess run of an installed fedq

RAY = Path(sys.executable).parent / "ray"


def ray_processes(marker: str) -> list[int]:
    """The processes of this test's Ray cluster: their command lines name its own temporary folder."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            pass
    return found


@pytest.fixture()
def cluster():
    """A head and a worker node of one CPU each; stopped by their process ids (never `ray stop`)."""
    temp = Path(tempfile.mkdtemp(prefix="fedqray"))
    (port,) = free_ports(1)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus=1", "--num-gpus=0", f"--temp-dir={temp}", "--disable-usage-stats"]
    try:
        subprocess.run([str(RAY), "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                       check=True, capture_output=True, env=env, timeout=120)
        subprocess.run([str(RAY), "start", f"--address=127.0.0.1:{port}", *common],
                       check=True, capture_output=True, env=env, timeout=120)
        yield f"127.0.0.1:{port}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in ray_processes(str(temp)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(2)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_run_on_a_ray_cluster_gives_the_rows_of_the_same_run_on_one_machine(cluster, tmp_path):
    overrides = ["fl.rounds=2", "fl.eval_every=0", "fl.local_steps=3", "data.max_eval_pairs=4"]
    run = subprocess.run(
        [sys.executable, "-m", "fedq.simulate", "clients=4", "fl.clients_per_round=2", "data.demo_train_size=400",
         "data.demo_eval_size=10", "data.vocab_size=200", "model.d_model=32", "model.ffn_dim=64", "device=cpu",
         f"data.cache_dir={tmp_path / 'cache'}", *overrides, f"hydra.run.dir={tmp_path / 'cluster'}"],
        capture_output=True, text=True, timeout=400, env={**os.environ, "FEDQ_RAY_ADDRESS": cluster})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert f"Ray cluster at {cluster}: 2 CPUs, 0 GPUs on 2 node(s)" in run.stdout

    federation = tiny_federation(f"data.cache_dir={tmp_path / 'cache'}", *overrides)
    run_federation(federation.cfg, tmp_path / "local", LocalExchange(federation, ClientStore(tmp_path / "clients")),
                   FlowerAggregator(federation.cfg), federation=federation)
    rows = {name: [{k: v for k, v in json.loads(line).items() if k not in TIME_FIELDS}
                   for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()] for name in ("cluster", "local")}
    assert rows["cluster"] == rows["local"] and len(rows["local"]) == 2
