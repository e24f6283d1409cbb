"""fedq's apps under Flower's own runtime: `flwr run` on a real SuperLink, with SuperNodes or simulated."""

from __future__ import annotations

import json
import os
import re
import signal
import tomllib
from pathlib import Path

import pytest

from fedq.config import (
    RUN_CONFIG_EXTRA_KEYS,
    RUN_CONFIG_KEYS,
    compose_config,
    config_from_yaml,
    overrides_from_run_config,
)
from fedq.credentials import make_credentials
from fedq.superlink import APP_COMPONENTS, LocalSuperLink, app_config_defaults

pytestmark = pytest.mark.e2e  # Flower + Ray, or a subprocess run of an installed fedq

REPO = Path(__file__).resolve().parent.parent
TINY = ("fl.local_steps=3 fl.eval_every=1 data.demo_train_size=600 data.demo_eval_size=20 "
        "data.vocab_size=300 model.d_model=32 model.ffn_dim=64")


def test_the_projects_flower_app_is_the_one_fedq_simulate_runs():
    app = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"] == APP_COMPONENTS
    assert app["config"] == app_config_defaults()
    assert set(app["config"]) == set(RUN_CONFIG_KEYS) | set(RUN_CONFIG_EXTRA_KEYS)


def test_a_group_chosen_in_overrides_is_not_overwritten_by_key_defaults():
    defaults = app_config_defaults()
    cfg = compose_config(overrides_from_run_config({**defaults, "overrides": "quant=w4"}, clients=3))
    assert (cfg.quant.bits, cfg.quant.method, cfg.fl.clients) == (4, "lsq", 3)
    cfg = compose_config(overrides_from_run_config({**defaults, "quant-bits": 8, "num-clients": 5}, clients=3))
    assert (cfg.quant.bits, cfg.fl.clients) == (8, 5)  # a key the user set wins; num-clients over the federation


def test_deployment_runtime_over_tls_with_authenticated_supernodes_one_of_which_dies(tmp_path):
    """A real SuperLink and three SuperNodes on loopback, as on real devices: TLS with the federation's own CA and
    registered SuperNode keys (fedq.credentials); every ClientApp runs in its own process. A SuperNode whose key is
    not registered is refused, one that trusts another CA cannot connect; neither joins the federation. SIGKILL one
    registered SuperNode after round 1: round 2 waits fl.reply_timeout (30 s: first replies include starting a
    ClientApp process; not Flower's ~60 s heartbeat verdict) and names it unreachable with its node id; round 3
    samples only the two nodes still connected. The rounds run under secure aggregation (fl.secagg): its stages
    reach each SuperNode as messages of their own."""
    credentials, stranger = tmp_path / "credentials", tmp_path / "other-ca"
    make_credentials(credentials, [], devices=4)  # device-3: a key pair nobody registers
    make_credentials(stranger, [], devices=0)
    out = tmp_path / "run"
    lines: list[str] = []
    run_config = {
        "num-server-rounds": 3,
        "overrides": f"quant=w4 comm.uplink.name=uniform fl.clients_per_round=3 fl.reply_timeout=30 fl.secagg=true {TINY} "
                     f"data.cache_dir={tmp_path / 'cache'}",
        "out-dir": str(out),
    }
    with LocalSuperLink(supernodes=3, credentials=credentials) as link:
        unregistered = link.add_supernode("unregistered", 0, private_key=credentials / "device-3")
        untrusting = link.add_supernode("untrusting", 1, root_certificates=stranger / "ca.crt")

        def on_line(line: str) -> None:
            lines.append(line)
            if line.startswith("round 1/3"):
                os.killpg(link.processes[1].pid, signal.SIGKILL)  # the SuperNode of partition 0, and its ClientApps

        code = link.run(REPO, run_config, on_line=on_line)
        refused = {name: (link.home / f"{name}.log").read_text(errors="replace") for name in ("unregistered", "untrusting")}
        still_running = [process.poll() is None for process in (unregistered, untrusting)]
    log = "\n".join(lines)
    assert code == 0, log[-3000:]
    assert "Failed to activate SuperNode" in refused["unregistered"], refused["unregistered"][-2000:]
    assert "CERTIFICATE_VERIFY_FAILED" in refused["untrusting"], refused["untrusting"][-2000:]
    assert still_running == [False, False]  # both gave up: Flower's exit code 305
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert [(row["round"], row["sampled"], row["clients"]) for row in rows] == [(1, 3, 3), (2, 3, 2), (3, 2, 2)], log[-3000:]
    assert rows[1]["dropped"] == {"unreachable": 1}
    assert all(row["secagg_bytes"] > 0 and row["stage_seconds"]["secagg"] > 0 for row in rows)
    assert re.fullmatch(r"client 0: unreachable: node \d+: sent no reply within 30s", rows[1]["failures"][0])
    assert "not sampled until its node is seen again" in log
    assert summary["uplink_bytes"] == sum(row["uplink_bytes"] for row in rows)
    assert summary["downlink_bytes"] == sum(row["downlink_bytes"] for row in rows)
    assert summary["run_dir"] == str(out) and Path(summary["checkpoint"]).is_absolute()
    cfg = config_from_yaml(summary["config"])
    assert (cfg.quant.bits, cfg.fl.clients) == (4, 3)  # quant=w4 really trained; 3 clients from the federation
    assert "4-bit lsq" in log and f"results in {out}" in log


def test_flwr_run_of_the_app_folder_with_fedq_installed_from_its_wheel(tmp_path, installed_wheel, monkeypatch):
    """`flwr run .` in simulation mode after `pip install .` (not editable); without num-clients the federation's
    size is the number of clients."""
    monkeypatch.setenv("PYTHONPATH", str(installed_wheel))  # the installed wheel, ahead of the editable checkout
    out = tmp_path / "run"
    lines: list[str] = []
    run_config = {"num-server-rounds": 1, "overrides": f"{TINY} data.cache_dir={tmp_path / 'cache'}", "out-dir": str(out)}
    with LocalSuperLink() as link:
        code = link.run(REPO, run_config, {"num_supernodes": 2}, on_line=lines.append)
    assert code == 0, "\n".join(lines)[-3000:]
    assert config_from_yaml(json.loads((out / "summary.json").read_text())["config"]).fl.clients == 2


def test_a_serverapp_config_error_is_one_line_and_a_failure_file(tmp_path):
    out = tmp_path / "run"
    lines: list[str] = []
    with LocalSuperLink() as link:
        link.run(REPO, {"overrides": "quant.bits=5", "out-dir": str(out)}, {"num_supernodes": 2}, on_line=lines.append)
    assert any(line.startswith("error: quant.bits=5 is not supported") for line in lines), "\n".join(lines)[-2000:]
    assert "quant.bits=5" in json.loads((out / "failure.json").read_text())["error"]
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize("missing", ["partition-id", "num-partitions"])
def test_a_supernode_without_its_partition_is_told_what_to_set(missing):
    from fedq.errors import ConfigError
    from fedq.fl.client import ClientRun

    node_config = {k: 1 for k in ("partition-id", "num-partitions") if k != missing}
    with pytest.raises(ConfigError, match='--node-config "partition-id=K num-partitions=N"'):
        ClientRun({}, node_config, run_id=1)
