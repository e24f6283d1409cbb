"""The federated simulation: ``python -m fedq.simulate clients=20 quant.bits=2``.

Runs the ServerApp (``server/``) and ClientApp (``clients/``) of this package
the way Flower runs simulations: ``flwr run`` on a local SuperLink in
simulation mode (``fedq.superlink``), each client a Ray actor with
``fl.num_cpus`` CPUs and ``fl.num_gpus`` GPUs. The simulated federation is a
pool of as many nodes as Ray runs clients at once (:func:`pool_size`), each
playing whichever clients the server sends it, several per message, so that a
fleet of any size costs what its rounds cost and a round one message per
worker. Before
anything starts, every setting is validated and the clients' resources are
compared with the machine.

Results go to the Hydra run directory (absolute, printed at start and end):
metrics.jsonl, summary.json, bleu_vs_uplink.png, checkpoint/, and state/ after
every ``fl.checkpoint_every`` rounds, and client_state/ (what the simulated
devices keep, so that a finished run can be extended). Ctrl-C or SIGTERM stops
the simulation and Ray within seconds; ``python -m fedq.simulate resume=RUN_DIR``
continues it, and ``resume=RUN_DIR fl.rounds=N`` extends it to N rounds. The
folder has one writer at a time (``fedq.run_folder``).
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedq.cli import format_seconds, override_key, refuse_unused, run_dir, run_entry_point, run_with_user_errors
from fedq.config import (
    CLIENT_POOL_KEY,
    CONFIG_SOURCE,
    LOCK_HOLDER_KEY,
    FedqConfig,
    config_to_yaml,
    register_configs,
    settings_by_key,
    validate_config,
)
from fedq.errors import ConfigError, FedqError
from fedq.fl.federation import Federation
from fedq.fl.footprint import check_fits
from fedq.fl.settings import clients_sampled
from fedq.fl.state import load_state, saved_config
from fedq.report.console import progress_line
from fedq.report.run_log import SUMMARY_FILE, read_failure, read_rows
from fedq.run_folder import RunFolderLock, refuse_overwrite
from fedq.superlink import LocalSuperLink, write_app_dir
from fedq.task import check_init_from, load_task, resolve_device

log = logging.getLogger("fedq.simulate")  # not __name__: run as __main__

RAY_ADDRESS_VARIABLE = "FEDQ_RAY_ADDRESS"
_PROGRESS = re.compile(r"^round (\d+)/\d+ \|")


def machine_resources(ray_address: str | None) -> tuple[float, float, str]:
    """(CPUs, GPUs, where) that client actors can be placed on: this machine, or the Ray cluster."""
    if ray_address:
        import ray

        ray.init(address=ray_address, logging_level=logging.ERROR, log_to_driver=False)
        try:
            resources = ray.cluster_resources()
            nodes = [node for node in ray.nodes() if node.get("Alive")]
        finally:
            ray.shutdown()
        cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        log.info(f"Ray cluster at {ray_address}: {cpus:g} CPUs, {gpus:g} GPUs on {len(nodes)} node(s)")
        return cpus, gpus, f"the Ray cluster at {ray_address}"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return float(cpus), float(torch.cuda.device_count()), "this machine"


def check_client_resources(cfg: FedqConfig, cpus: float, gpus: float, where: str) -> None:
    """A client that asks for more than exists would never be placed, and the run would wait forever."""
    fl = cfg.fl
    if fl.num_cpus > cpus:
        raise ConfigError(f"fl.num_cpus={fl.num_cpus:g} but {where} has {cpus:g} CPUs: no client could ever start")
    if fl.num_gpus > 0 and gpus == 0:
        raise ConfigError(f"fl.num_gpus={fl.num_gpus:g} but {where} has no GPU (torch sees no CUDA device): use fl.num_gpus=0")
    if fl.num_gpus > gpus:
        raise ConfigError(f"fl.num_gpus={fl.num_gpus:g} but {where} has {gpus:g} GPUs: no client could ever start")


def pool_size(cfg: FedqConfig, cpus: float, gpus: float) -> int:
    """The simulation's nodes: as many as Ray runs clients at once (``fl.num_cpus`` and ``fl.num_gpus`` each), at most
    a round's requests. Each node is sent its share of a round's clients in one message."""
    fl = cfg.fl
    workers = math.floor(cpus / fl.num_cpus)
    if fl.num_gpus > 0:
        workers = min(workers, math.floor(gpus / fl.num_gpus))
    return max(1, min(workers, clients_sampled(fl)))


def override_keys(overrides: Sequence[str]) -> list[str]:
    """The settings (or groups) a command line names, without Hydra's own and ``resume``."""
    keys = [override_key(o) for o in overrides if "=" in o]
    return [key for key in keys if key != "resume" and not key.startswith("hydra")]


def resumed_config(cfg: FedqConfig, overrides: Sequence[str]) -> tuple[FedqConfig, Path]:
    """The saved config of the run to resume, and its folder. A run continues with its own settings: a setting the
    command line gives that differs from the run's is refused, except ``fl.rounds``, which may extend the run (a
    finished one too) but not cut it below the rounds done. A finished run resumed as it is is scored again."""
    folder = Path(str(cfg.resume)).expanduser().resolve()
    saved = saved_config(folder)
    validate_config(saved)
    state = load_state(folder)  # every saved file is checked now, before any corpus, tokenizer or Ray work
    given, kept, named = settings_by_key(cfg), settings_by_key(saved), override_keys(overrides)
    differ = [f"{key}={given[key]} (the run has {kept.get(key)})" for key in given if key != "fl.rounds"
              and any(key == name or key.startswith(name + ".") for name in named) and given[key] != kept.get(key)]
    if differ:
        raise ConfigError(f"resume= continues {folder} with its own settings, and these differ from them: {'; '.join(differ)}; "
                          "start a new run to change them (fl.rounds=N may extend the run)")
    if "fl.rounds" in named:
        if cfg.fl.rounds < state.rounds:
            raise ConfigError(f"fl.rounds={cfg.fl.rounds}: {folder} has run {state.rounds} of its {saved.fl.rounds} rounds; "
                              "a run can be extended, not shortened")
        saved.fl.rounds = cfg.fl.rounds
    return saved, folder


def simulate(cfg: FedqConfig, out_dir: Path, overrides: Sequence[str] = ()) -> dict:
    refuse_unused(cfg, "simulate")
    resume = cfg.resume is not None
    if resume:
        cfg, out_dir = resumed_config(cfg, overrides)
    out_dir = out_dir.resolve()
    with RunFolderLock(out_dir):
        if not resume:
            refuse_overwrite(out_dir)
        return _simulate(cfg, out_dir, resume)


def _simulate(cfg: FedqConfig, out_dir: Path, resume: bool) -> dict:
    """The run, with ``out_dir`` held by this process."""
    ray_address = os.environ.get(RAY_ADDRESS_VARIABLE) or None
    cpus, gpus, where = machine_resources(ray_address)
    check_client_resources(cfg, cpus, gpus, where)
    if cfg.init_from:
        check_init_from(cfg)  # fail now, not after the corpus, the tokenizer and the SuperLink
    device = resolve_device(cfg.device)
    if device.type == "cuda" and cfg.fl.num_gpus <= 0:
        log.info("note: CUDA is available but fl.num_gpus=0: clients train on CPU (set fl.num_gpus=0.5 to share the GPU)")
    task = load_task(cfg)  # the corpus, tokenizer and shard caches are built once, before the clients start
    federation = Federation(cfg, task)
    federation.check_deadline()
    check_fits(federation, out_dir)
    log.info(task.describe())

    started = time.perf_counter()
    shown = [0]  # the last round whose progress line came through

    def show(line: str) -> None:
        log.info(line)
        if match := _PROGRESS.match(line):
            shown[0] = int(match[1])

    try:
        with LocalSuperLink(ray_address, verbose=cfg.fl.verbose) as link:
            app_dir = write_app_dir(link.home / "app", _fedq_version())
            pool = pool_size(cfg, cpus, gpus)
            run_config = {"config": config_to_yaml(cfg), "out-dir": str(out_dir), "resume": resume, CLIENT_POOL_KEY: pool,
                          LOCK_HOLDER_KEY: os.getpid()}
            simulation = {
                "num_supernodes": pool,
                "client_resources_num_cpus": cfg.fl.num_cpus,
                "client_resources_num_gpus": float(cfg.fl.num_gpus),
                "init_args_logging_level": "ERROR",
                "init_args_log_to_driver": True,
                "verbose": cfg.fl.verbose,
            }
            code = link.run(app_dir, run_config, simulation, on_line=show)
    except KeyboardInterrupt:  # every process of the run has ended here: its rows are final
        _print_resume_hint(out_dir, shown[0], cfg.fl.rounds)
        raise
    failure = read_failure(out_dir)  # the ServerApp's one-line error: said once, here, when the run has ended
    if failure is not None and not (out_dir / SUMMARY_FILE).exists():
        raise FedqError(failure)
    if code != 0 or not (out_dir / SUMMARY_FILE).exists():
        raise FedqError(f"the simulation ended without results (flwr run exit code {code}); see the log above")
    log.info(f"simulation wall time {format_seconds(time.perf_counter() - started)}; results in {out_dir}")
    return {"out_dir": str(out_dir)}


def _print_resume_hint(out_dir: Path, shown: int, planned: int) -> None:
    """After Ctrl-C: the progress lines of the rounds that ended but whose lines had not come through Flower's log
    stream yet (from metrics.jsonl), then how to continue."""
    rows = read_rows(out_dir)
    for number, row in enumerate(rows):
        if row["round"] > shown:
            log.info(progress_line(row, rows[: number + 1], planned))
    done = f"after round {rows[-1]['round']}" if rows else "before the first round ended"
    saved = (out_dir / "state").is_dir()
    hint = f"; continue with: python -m fedq.simulate resume={out_dir}" if saved else ""
    log.info(f"\nstopped {done}; Flower and Ray were shut down{hint}")


def _fedq_version() -> str:
    try:
        return version("fedq")
    except PackageNotFoundError:
        return "0.0.0"


@hydra.main(config_path=CONFIG_SOURCE, config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    overrides = list(HydraConfig.get().overrides.task)
    run_with_user_errors(lambda config: simulate(config, run_dir(), overrides), cfg)


register_configs()

if __name__ == "__main__":
    run_entry_point(main, writes_run=True)
