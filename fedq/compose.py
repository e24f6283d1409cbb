"""Build a FedqConfig outside a Hydra command line (Flower run config, tests)."""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedq.config import FedqConfig, register_configs
from fedq.quant import with_resolved_method

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

# `flwr run . --run-config "..."` keys and the Hydra settings they stand for.
RUN_CONFIG_KEYS = {
    "num-server-rounds": "fl.rounds",
    "clients-per-round": "fl.clients_per_round",
    "local-steps": "fl.local_steps",
    "quant-bits": "quant.bits",
}


def compose_config(overrides: Sequence[str] = ()) -> FedqConfig:
    """The config ``python -m fedq.simulate OVERRIDES`` would run with."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def overrides_from_run_config(run_config: Mapping[str, object]) -> list[str]:
    """Map Flower's run config (pyproject [tool.flwr.app.config]) to Hydra overrides.

    ``overrides`` holds any further Hydra overrides as one string, e.g.
    ``flwr run . --run-config "overrides='model=small comm/uplink=sign'"``.
    """
    overrides = [f"{RUN_CONFIG_KEYS[key]}={value}" for key, value in run_config.items() if key in RUN_CONFIG_KEYS]
    overrides += shlex.split(str(run_config.get("overrides", "")))
    return overrides


def config_from_run_config(run_config: Mapping[str, object]) -> FedqConfig:
    return compose_config(overrides_from_run_config(run_config))


def config_to_yaml(cfg: FedqConfig) -> str:
    """The config as saved (checkpoint config.yaml, summary.json): ``quant.method=auto``
    is written as the grid it chose, so a saved run names what it trained on."""
    cfg = dataclasses.replace(cfg, quant=with_resolved_method(cfg.quant))
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_yaml(text: str) -> FedqConfig:
    merged = OmegaConf.merge(OmegaConf.structured(FedqConfig), OmegaConf.create(text))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]
