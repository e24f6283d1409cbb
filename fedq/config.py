"""Configuration: the composed schema, composing it, mapping Flower's run config, YAML I/O, validation.

Each package owns its settings and their checks (``fedq.data.settings``,
``fedq.model.transformer.ModelConfig``, ``fedq.quant.settings``, ``fedq.model.adapters``,
``fedq.engine.TrainConfig``, ``fedq.model.decoding.DecodeConfig``,
``fedq.comm.settings``, ``fedq.fl.settings``,
``fedq.deploy.settings``); this module only composes them into one
:class:`FedqConfig`, registered in Hydra's ConfigStore, and checks the rules that
span groups. The YAML files under ``configs/`` only choose values.
:func:`validate_config` runs once in each entry point, before any corpus,
tokenizer or Ray work.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedq.comm.codecs import CODECS, codec_class, codec_settings
from fedq.comm.errors import CodecError
from fedq.comm.settings import CommConfig, uplink_codec, validate_comm_config
from fedq.data.settings import (
    DataConfig,
    EvalConfig,
    PartitionConfig,
    validate_data_config,
    validate_eval_config,
    validate_partition,
)
from fedq.deploy.settings import DeployConfig, validate_deploy_config
from fedq.engine import TrainConfig, validate_train_config
from fedq.errors import ConfigError
from fedq.fl.attacks import ATTACKS
from fedq.fl.defences import DEFENCES
from fedq.fl.entries import check_entry_settings
from fedq.fl.fleet import FLEETS, PROFILES
from fedq.fl.privacy import check_privacy
from fedq.fl.secagg import check_secure_aggregation
from fedq.fl.settings import FLConfig, attackers_per_round, clients_per_round, validate_fl_config
from fedq.fl.strategies import STRATEGIES
from fedq.model.adapters import AdapterConfig, validate_adapter_config
from fedq.model.decoding import DecodeConfig, validate_decode_config
from fedq.model.transformer import ModelConfig, validate_model_config
from fedq.quant.settings import QuantConfig, validate_quant_config, with_resolved_method
from fedq.registry import Registry
from fedq.report.sinks import SINKS, ReportConfig, check_report_config

CONFIG_MODULE = "configs"  # the YAML tree of the top-level configs/ (a package of its own, shipped with fedq)
CONFIG_SOURCE = f"pkg://{CONFIG_MODULE}"  # for @hydra.main(config_path=...)


@dataclass
class FedqConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    device: str = "auto"  # auto | cpu | cuda[:N]
    seed: int = 1
    threads: int = 0  # torch intra-op threads; 0 = torch default
    ckpt: Optional[str] = None  # evaluate: checkpoint to score
    init_from: Optional[str] = None  # train, simulate: start from this checkpoint's weights
    resume: Optional[str] = None  # simulate: continue the run in this results folder after its last saved round
    clients: int = 20  # shorthand for fl.clients, so that `clients=20` works


REGISTRIES: dict[str, Registry[Any]] = {"codecs": CODECS, "strategies": STRATEGIES, "defences": DEFENCES,
                                        "attacks": ATTACKS, "sinks": SINKS, "devices": PROFILES}  # what --help lists


def register_configs() -> None:
    """Register the schema so Hydra validates configs/config.yaml against it, and the resolver --help lists each
    registry's entries with."""
    ConfigStore.instance().store(name="fedq_schema", node=FedqConfig)
    if not OmegaConf.has_resolver("fedq_entries"):
        OmegaConf.register_new_resolver("fedq_entries", lambda kind: " ".join(
            FLEETS if kind == "fleets" else REGISTRIES[kind].names()))


# --- composing a config outside a Hydra command line (Flower apps, tests, benchmarks)

# `flwr run . --run-config "..."` keys and the Hydra settings they stand for. An empty
# value (the pyproject default) leaves the setting to fedq's config.
RUN_CONFIG_KEYS = {
    "num-server-rounds": "fl.rounds",
    "num-clients": "clients",
    "clients-per-round": "fl.clients_per_round",
    "local-steps": "fl.local_steps",
    "quant-bits": "quant.bits",
}
# Run-config keys that are not one setting each: any Hydra overrides as one string; a whole
# saved config (YAML, what fedq.simulate sends); the results folder; continue a saved run; a pool
# of N nodes that play any client (fedq.simulate: the clients of a round, not the whole fleet).
CLIENT_POOL_KEY = "client-pool"
LOCK_HOLDER_KEY = "lock-holder"  # the pid of fedq's driver, which holds the run folder's lock for the ServerApp
RUN_CONFIG_EXTRA_KEYS = ("overrides", "config", "out-dir", "resume", CLIENT_POOL_KEY, LOCK_HOLDER_KEY)


def compose_config(overrides: Sequence[str] = ()) -> FedqConfig:
    """The config ``python -m fedq.simulate OVERRIDES`` would run with; a bad override is a ConfigError."""
    register_configs()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            cfg = compose(config_name="config", overrides=list(overrides))
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except (HydraException, OmegaConfBaseException) as err:
        texts = [str(err), str(err.__cause__ or "")]  # Hydra puts OmegaConf's reason (a wrong type) in the cause
        lines = [line.strip() for text in texts for line in text.strip().splitlines()
                 if line.strip() and not line.startswith(" ")]
        raise ConfigError(f"overrides {' '.join(overrides)!r}: {'; '.join(lines[:2])}") from None


def overrides_from_run_config(run_config: Mapping[str, object], clients: int | None = None) -> list[str]:
    """Map Flower's run config (pyproject [tool.flwr.app.config]) to Hydra overrides.

    Keys left empty are not passed, so a group chosen in ``overrides`` (e.g.
    ``overrides='quant=w4'``) is not overwritten by a key's default. ``clients``
    is the size of the federation the app runs in; it applies unless
    ``num-clients`` is set (or ``overrides`` says otherwise).
    """
    overrides = [] if clients is None or run_config.get("num-clients", "") != "" else [f"clients={clients}"]
    overrides += [f"{setting}={run_config[key]}" for key, setting in RUN_CONFIG_KEYS.items() if run_config.get(key, "") != ""]
    overrides += shlex.split(str(run_config.get("overrides", "")))
    return overrides


def config_from_run_config(run_config: Mapping[str, object], clients: int | None = None) -> FedqConfig:
    """The config of a Flower run: the whole saved config if the run carries one, else composed."""
    saved = str(run_config.get("config", ""))
    if saved:
        return config_from_yaml(saved, "the run config's config")
    return compose_config(overrides_from_run_config(run_config, clients))


def settings_by_key(cfg: FedqConfig) -> dict[str, Any]:
    """Every setting of ``cfg`` as ``{"fl.rounds": 20, ...}``."""

    def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in leaves(value, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    return leaves(OmegaConf.to_container(OmegaConf.structured(cfg)))


def settings_changed(cfg: FedqConfig) -> dict[str, Any]:
    """The settings of ``cfg`` that differ from fedq's defaults, by key."""
    mine, default = settings_by_key(cfg), settings_by_key(compose_config())
    return {key: value for key, value in mine.items() if default.get(key) != value}


def changed_settings(cfg: FedqConfig) -> str:
    """The settings of ``cfg`` that differ from fedq's defaults, as ``key=value`` overrides (one line)."""
    return " ".join(f"{key}={value}" for key, value in settings_changed(cfg).items()) or "(the defaults)"


def results_dir(run_config: Mapping[str, object], run_id: int) -> Path:
    """Where a Flower run writes its results: ``out-dir``, else ./outputs/flwr/RUN_ID (absolute)."""
    out_dir = str(run_config.get("out-dir", ""))
    return Path(out_dir).expanduser().resolve() if out_dir else (Path.cwd() / "outputs" / "flwr" / str(run_id)).resolve()


# --- YAML I/O: the one writer and the one reader of a saved config


def config_to_yaml(cfg: FedqConfig) -> str:
    """The config as saved (checkpoint config.yaml, summary.json): ``quant.method=auto``
    is written as the grid it chose, so a saved run names what it trained on."""
    cfg = dataclasses.replace(cfg, quant=with_resolved_method(cfg.quant))
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


# Settings that earlier fedq versions saved and this one no longer has (a saved config still loads).
REMOVED_SETTINGS = (("model", "preset"), ("comm", "downlink", "error_feedback"))


def _upgrade_saved(raw: Any) -> Any:
    """A config saved by an earlier fedq, in this one's terms: removed settings dropped, codec settings the
    codec does not use (saved with their old defaults) cleared."""
    if not isinstance(raw, dict):
        return raw
    for path in REMOVED_SETTINGS:
        node: Any = raw
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    for direction in ("uplink", "downlink"):
        codec = (raw.get("comm") or {}).get(direction)
        if isinstance(codec, dict) and "name" in codec:
            try:
                cls = codec_class(str(codec["name"]))
            except CodecError:
                continue  # validating the config names it
            for key in ("bits", "block_size", "density"):
                if key not in codec_settings(cls):
                    codec[key] = None
            if codec.get("error_feedback") is not None and not cls.biased:
                codec["error_feedback"] = None
    return raw


def config_from_yaml(text: str, source: str = "config") -> FedqConfig:
    """Parse a saved config; anything that is not a fedq config is one ConfigError line."""
    try:
        loaded = yaml.safe_load(text)
        raw = OmegaConf.create(_upgrade_saved(loaded) if loaded is not None else {})
        merged = OmegaConf.merge(OmegaConf.structured(FedqConfig), raw)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except (OmegaConfBaseException, ValueError, yaml.YAMLError, CodecError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{source} is not a valid fedq config ({detail})") from None


def read_config_file(path: str | Path) -> FedqConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    return config_from_yaml(text, str(path))


# --- validation: every setting, once, before any work starts

DEVICES = ("auto", "cpu", "cuda")


def validate_config(cfg: FedqConfig) -> None:
    """Raise a one-line FedqError for the first setting fedq cannot run: each group's own checks,
    then the rules that span groups."""
    validate_data_config(cfg.data)
    validate_partition(cfg.partition, cfg.data.name)
    validate_model_config(cfg.model)
    validate_quant_config(cfg.quant)
    validate_adapter_config(cfg.adapter, (cfg.model.d_model, cfg.model.ffn_dim))
    validate_train_config(cfg.train)
    validate_decode_config(cfg.decode)
    validate_fl_config(cfg.fl)
    round_size, attackers = clients_per_round(cfg.fl), attackers_per_round(cfg.fl)
    ATTACKS.make(cfg.fl.attack).check(cfg.fl, round_size, attackers)  # the registries' entries check their own settings
    DEFENCES.make(cfg.fl.defence).check(cfg.fl, round_size, attackers)
    strategy = STRATEGIES.make(cfg.fl.strategy)
    strategy.check(cfg.fl, round_size, attackers)
    check_entry_settings(cfg.fl)
    validate_comm_config(cfg.comm, cfg.quant.bits)
    validate_eval_config(cfg.eval)
    validate_deploy_config(cfg.deploy)
    check_report_config(cfg.report)
    if cfg.device.split(":")[0] not in DEVICES:
        raise ConfigError(f"device={cfg.device!r} is unknown; use auto, cpu or cuda[:N]")
    if cfg.threads < 0:
        raise ConfigError(f"threads={cfg.threads} must be >= 0 (0 = torch's default)")
    if cfg.seed < 0:
        raise ConfigError(f"seed={cfg.seed} must be >= 0")
    if cfg.adapter.rank and not cfg.init_from:
        raise ConfigError(f"adapter.rank={cfg.adapter.rank}: adapters train over a frozen pre-trained base; give "
                          "init_from=CHECKPOINT")
    if cfg.adapter.rank and cfg.quant.act_bits is not None:
        raise ConfigError("adapter.rank with quant.act_bits: the adapter path is not activation-quantized; "
                          "use quant.act_bits=null with adapters")
    if cfg.fl.personal_steps and not cfg.partition.holdout:
        raise ConfigError(f"fl.personal_steps={cfg.fl.personal_steps} scores each client on its held-out pairs after "
                          "training on its own: set partition.holdout (e.g. 0.2)")
    uplink = uplink_codec(cfg.comm, cfg.quant.bits)
    reads_reference = uplink.reads_reference
    check_privacy(cfg.fl, strategy.plain_mean, cfg.fl.defence, cfg.comm.uplink.name if reads_reference else None)
    check_secure_aggregation(cfg.fl, strategy.plain_mean, cfg.comm.uplink, uplink, ATTACKS.get(cfg.fl.attack).collusive)
    if reads_reference and strategy.coordinate_wise:
        raise ConfigError(f"comm.uplink.name={cfg.comm.uplink.name} with fl.strategy={cfg.fl.strategy}: most updates hold "
                          "the server's last step where their client sent nothing, so a coordinate-wise median or "
                          "trimmed mean keeps it there; use fedavg, fedadam, krum, multikrum or an fl.defence")
    if cfg.model.max_positions <= cfg.data.max_len:
        raise ConfigError(
            f"model.max_positions={cfg.model.max_positions} cannot hold the pairs of up to data.max_len={cfg.data.max_len} "
            f"tokens trained on (a target needs max_len + 1 positions): raise model.max_positions or lower data.max_len"
        )
