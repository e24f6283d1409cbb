"""The federated simulation: ``python -m fedq.simulate clients=20 quant.bits=2``.

Runs the Flower ServerApp and ClientApp of this repository in Flower's
simulation runtime with the Ray backend: each client is a Ray actor with
``fl.num_cpus`` CPUs and ``fl.num_gpus`` GPUs. Results go to the Hydra run
directory: metrics.jsonl, summary.json, bleu_vs_uplink.png, checkpoint/.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fedq.cli import run_dir, run_with_user_errors
from fedq.config import CONFIG_SOURCE, FedqConfig, register_configs
from fedq.task import load_task, resolve_device

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no phoning home from an offline machine
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # Ray's future default, without its warning


def quiet_flower_logs(verbose: bool) -> None:
    """fedq prints one line per round; Flower's own INFO log would bury it."""
    logger = logging.getLogger("flwr")
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logger.propagate = False  # Hydra's root handler would print every line twice


def backend_config(cfg: FedqConfig) -> dict:
    resources = {"num_cpus": cfg.fl.num_cpus, "num_gpus": cfg.fl.num_gpus}
    init_args = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": True}
    address = os.environ.get("FEDQ_RAY_ADDRESS")
    if address:  # join an existing Ray cluster instead of starting one
        init_args["address"] = address
    return {"client_resources": resources, "init_args": init_args}


def simulate(cfg: FedqConfig, out_dir: Path) -> None:
    from flwr.simulation import run_simulation

    from clients.client_app import make_client_app
    from server.server_app import make_server_app

    quiet_flower_logs(cfg.fl.verbose)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and cfg.fl.num_gpus <= 0:
        print("note: CUDA is available but fl.num_gpus=0: clients train on CPU (set fl.num_gpus=0.5 to share the GPU)")
    # Build the corpus and tokenizer once here, so the client actors find them cached.
    task = load_task(cfg)
    print(task.describe(), flush=True)
    print(f"results in {out_dir}", flush=True)
    started = time.perf_counter()
    run_simulation(
        server_app=make_server_app(lambda context: cfg, out_dir),
        client_app=make_client_app(lambda context: cfg),
        num_supernodes=cfg.fl.clients,
        backend_name="ray",
        backend_config=backend_config(cfg),
        verbose_logging=cfg.fl.verbose,
    )
    print(f"simulation wall time {time.perf_counter() - started:.1f}s", flush=True)
    if not (out_dir / "summary.json").exists():
        raise RuntimeError(f"the simulation ended without writing {out_dir / 'summary.json'}; see the log above")


@hydra.main(config_path=CONFIG_SOURCE, config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    run_with_user_errors(lambda config: simulate(config, run_dir()), cfg)


register_configs()

if __name__ == "__main__":
    main()
