"""Configuration: the schema, composing it, mapping Flower's run config, YAML I/O, validation.

The dataclasses are registered in Hydra's ConfigStore, so a typo in a key or a
wrong type is rejected by Hydra with one line before any work starts. The YAML
files under ``configs/`` (shipped inside the package as ``fedq.conf``) only
choose values. :func:`validate_config` checks every value and every
combination in one place; each entry point calls it first, before any corpus,
tokenizer or Ray work.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedq.errors import ConfigError

CONFIG_MODULE = "fedq.conf"  # the YAML tree of configs/, as package data
CONFIG_SOURCE = f"pkg://{CONFIG_MODULE}"  # for @hydra.main(config_path=...)


@dataclass
class DataConfig:
    name: str = "demo"  # demo | textdir | multi30k | iwslt2017 | ted
    src: str = "de"
    tgt: str = "en"
    dir: Optional[str] = None  # textdir: folder with {split}.{lang}[.gz]; ted: folders of IWSLT XML (DIR:DIR)
    test_split: Optional[str] = None  # textdir: which test file (default: first test*)
    # ted: which official sets make each split
    train_splits: list[str] = field(default_factory=lambda: ["dev2010", "tst2010", "tst2011", "tst2012", "tst2013"])
    valid_splits: list[str] = field(default_factory=lambda: ["tst2014"])
    test_splits: list[str] = field(default_factory=lambda: ["tst2015", "tst2016", "tst2017"])
    cache_dir: str = "~/.cache/fedq"
    vocab_size: int = 2000
    max_tokens: int = 4096  # token budget per batch (source + target tokens)
    max_len: int = 128  # pairs with a side longer than this (in subword tokens) are not trained on
    max_train_pairs: int = 0  # 0 = all; else keep the first N training pairs
    max_eval_pairs: int = 0  # 0 = all; else evaluate on the first N valid/test pairs
    demo_train_size: int = 24000
    demo_eval_size: int = 1000
    seed: int = 1


@dataclass
class ModelConfig:
    """The network's shape (with the vocabulary, a ``TransformerShape``)."""

    preset: str = "tiny"
    d_model: int = 128
    n_heads: int = 4
    ffn_dim: int = 256
    enc_layers: int = 2
    dec_layers: int = 2
    dropout: float = 0.1
    max_positions: int = 256
    mixer: str = "attention"  # the encoder's token mixing: attention | fourier (FNet; the decoder keeps attention)


@dataclass
class QuantConfig:
    bits: int = 32  # 32 = off; 8/4/3/2 uniform; 1 binary
    method: str = "auto"  # auto (binary at 1 bit, seq at 2, else lsq) | lsq | seq | maxabs | percentile | binary | ternary
    scope: str = "linear"  # attention | linear | attention+embedding | all
    act_bits: Optional[int] = None  # e.g. 8 to fake-quantize linear-layer inputs
    percentile: float = 99.9


@dataclass
class TrainConfig:
    max_steps: int = 2000
    max_epochs: int = 0  # 0 = bounded by max_steps only
    max_minutes: float = 0.0  # 0 = no time limit
    lr: float = 2e-3
    warmup_steps: int = 200
    betas: tuple = (0.9, 0.98)
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    log_every: int = 50
    eval_every: int = 0  # steps; 0 = only at the end
    checkpoint_every: int = 500  # steps between checkpoints (a crash loses at most this many); 0 = only at the end


@dataclass
class DecodeConfig:
    beam: int = 1  # 1 = greedy
    length_penalty: float = 1.0
    max_len_a: float = 1.2  # max output length = a * source length + b
    max_len_b: int = 10
    batch_size: int = 64


@dataclass
class DeployConfig:
    """fedq.deploy: which CPU variants to build from a checkpoint, and how to measure them."""

    # fp32-compiled (no faster at batch 1, compiles at load) and int8-torchao (slower here) can be named too (README)
    variants: list[str] = field(default_factory=lambda: [
        "fp32", "int8", "packed", "lowrank", "lowrank-int8", "onnx", "onnx-int8", "ct2", "ct2-int8"])
    rank_ratio: float = 0.5  # lowrank: each factorized layer keeps this fraction of its parameters
    energy: float = 0.0  # lowrank: instead, the smallest rank keeping this fraction of the squared singular values
    finetune_steps: int = 0  # lowrank: training steps on the checkpoint's training corpus after factorizing
    test_sentences: int = 0  # test pairs scored (0 = the whole test split)
    latency_sentences: int = 30  # sentences timed one at a time on one thread
    batch_size: int = 32  # the batch of the throughput measurement (all cores)


@dataclass
class EvalConfig:
    """fedq.evaluate: score a checkpoint on parallel files of your own instead of a corpus's splits."""

    src: Optional[str] = None  # a file of source sentences, one per line (plain or .gz)
    ref: Optional[str] = None  # the reference translations, line-aligned with src


@dataclass
class CodecConfig:
    name: str = "fp32"  # fp32 | fp16 | uniform | sign | topk
    bits: Optional[int] = None  # uniform/topk value bits; None = quant.bits (8 if quant is off)
    block_size: int = 1024  # elements per scale block
    density: float = 0.01  # topk: fraction of entries sent
    error_feedback: bool = True  # for sign and topk (biased codecs)


@dataclass
class CommConfig:
    uplink: CodecConfig = field(default_factory=lambda: CodecConfig(name="uniform"))
    downlink: CodecConfig = field(default_factory=lambda: CodecConfig(name="uniform", bits=4))


@dataclass
class PartitionConfig:
    scheme: str = "iid"  # iid | dirichlet | natural
    alpha: float = 0.5
    label: str = "length"  # dirichlet label: length | talk | topic
    length_buckets: int = 8


@dataclass
class FLConfig:
    clients: int = 20
    clients_per_round: int = 0  # 0 = use fraction
    fraction: float = 0.25
    rounds: int = 20
    local_steps: int = 40
    local_epochs: int = 0  # >0 overrides local_steps
    local_lr: float = 2e-3
    # The clients' lr follows centralized training's warm-up and 1/sqrt decay over the
    # global step count: round r's local step i is step (r-1)*local_steps + i.
    warmup_steps: int = 200
    local_optimizer: str = "adam"  # adam | sgd
    strategy: str = "fedavg"  # fedavg | fedadam | fedmedian | fedtrimmedavg | krum | multikrum | bulyan (Flower's)
    server_lr: float = 1.0  # global += server_lr * (aggregate - global); fedadam: Adam's eta
    trim_beta: float = 0.2  # fedtrimmedavg: the fraction of updates cut at each end, per coordinate
    byzantine: int = 0  # krum, multikrum, bulyan: attackers per round the aggregator must tolerate
    min_replies: int = 1  # a round needs this many accepted updates, else the run stops with the reasons
    # Faults (fedq/fl/faults.py): a fleet of device profiles gives every client a virtual clock.
    devices: Optional[str] = None  # flagship-wifi | midrange-4g | board-slow-link | mixed | a YAML file; None = no clock
    round_deadline: float = 0.0  # simulated seconds a round waits; a later client is dropped; 0 = no deadline
    dropout_rate: float = 0.0  # chance that a sampled client goes offline before replying
    crash_rate: float = 0.0  # chance that a sampled client fails with an error
    max_update_norm: float = 0.0  # reject an update whose L2 norm is larger; 0 = off
    max_update_norm_ratio: float = 0.0  # reject an update above this many times the round's median norm; 0 = off
    attack: str = "none"  # none | sign_flip | scaled_noise | little_is_enough
    attackers: float = 0.0  # the fraction of the clients that attack
    eval_every: int = 5
    checkpoint_every: int = 1  # rounds between saved run states (resume=RUN_DIR continues from the last)
    node_wait_seconds: float = 120.0  # how long the server waits for every node to connect
    num_cpus: int = 1  # CPUs per simulated client (whole CPUs: Flower's simulation config takes integers)
    num_gpus: float = 0.0  # GPUs per simulated client; fractions share a GPU
    verbose: bool = False  # show Flower's own INFO/DEBUG log


@dataclass
class FedqConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    device: str = "auto"  # auto | cpu | cuda[:N]
    seed: int = 1
    threads: int = 0  # torch intra-op threads; 0 = torch default
    ckpt: Optional[str] = None  # evaluate: checkpoint to score
    init_from: Optional[str] = None  # train, simulate: start from this checkpoint's weights
    resume: Optional[str] = None  # simulate: continue the run in this results folder after its last saved round
    clients: int = 20  # shorthand for fl.clients, so that `clients=20` works


def register_configs() -> None:
    """Register the schema so Hydra validates configs/config.yaml against it."""
    ConfigStore.instance().store(name="fedq_schema", node=FedqConfig)


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
# saved config (YAML, what fedq.simulate sends); the results folder; continue a saved run.
RUN_CONFIG_EXTRA_KEYS = ("overrides", "config", "out-dir", "resume")


def compose_config(overrides: Sequence[str] = ()) -> FedqConfig:
    """The config ``python -m fedq.simulate OVERRIDES`` would run with; a bad override is a ConfigError."""
    register_configs()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            cfg = compose(config_name="config", overrides=list(overrides))
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"overrides {' '.join(overrides)!r}: {str(err).strip().splitlines()[0]}") from None


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


def changed_settings(cfg: FedqConfig) -> str:
    """The settings of ``cfg`` that differ from fedq's defaults, as ``key=value`` overrides (one line)."""
    def leaves(node: object, prefix: str = "") -> dict[str, object]:
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in leaves(value, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    mine = leaves(OmegaConf.to_container(OmegaConf.structured(cfg)))
    default = leaves(OmegaConf.to_container(OmegaConf.structured(compose_config())))
    return " ".join(f"{key}={value}" for key, value in mine.items() if default.get(key) != value) or "(the defaults)"


def results_dir(run_config: Mapping[str, object], run_id: int) -> Path:
    """Where a Flower run writes its results: ``out-dir``, else ./outputs/flwr/RUN_ID (absolute)."""
    out_dir = str(run_config.get("out-dir", ""))
    return Path(out_dir).expanduser().resolve() if out_dir else (Path.cwd() / "outputs" / "flwr" / str(run_id)).resolve()


# --- YAML I/O: the one writer and the one reader of a saved config


def config_to_yaml(cfg: FedqConfig) -> str:
    """The config as saved (checkpoint config.yaml, summary.json): ``quant.method=auto``
    is written as the grid it chose, so a saved run names what it trained on."""
    from fedq.quant.quantizers import with_resolved_method

    cfg = dataclasses.replace(cfg, quant=with_resolved_method(cfg.quant))
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_yaml(text: str, source: str = "config") -> FedqConfig:
    """Parse a saved config; anything that is not a fedq config is one ConfigError line."""
    try:
        raw = OmegaConf.create(text)
        merged = OmegaConf.merge(OmegaConf.structured(FedqConfig), raw)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except (OmegaConfBaseException, ValueError) as err:
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
MIXERS = ("attention", "fourier")
STRATEGIES = ("fedavg", "fedadam", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")
LOCAL_OPTIMIZERS = ("adam", "sgd")
PARTITION_LABELS = ("length", "talk")


def _validate_faults(cfg: FedqConfig, k: int) -> None:
    from fedq.fl.faults import ATTACKS, validate_fleet

    fl = cfg.fl
    if not 1 <= fl.min_replies <= k:
        raise ConfigError(f"fl.min_replies={fl.min_replies} must be between 1 and the {k} clients per round")
    for name in ("dropout_rate", "crash_rate", "attackers"):
        if not 0.0 <= getattr(fl, name) < 1.0:
            raise ConfigError(f"fl.{name}={getattr(fl, name)} must be in [0, 1)")
    _at_least(fl.round_deadline, 0, "fl.round_deadline")
    _at_least(fl.max_update_norm, 0, "fl.max_update_norm")
    if fl.max_update_norm_ratio and fl.max_update_norm_ratio < 1:
        raise ConfigError(f"fl.max_update_norm_ratio={fl.max_update_norm_ratio} must be >= 1 (or 0 = off): below 1 it rejects the median update itself")
    if fl.devices is not None:
        validate_fleet(fl.devices)
    elif fl.round_deadline > 0:
        raise ConfigError("fl.round_deadline needs a virtual clock: set fl.devices (e.g. fl.devices=midrange-4g)")
    _choice(fl.attack, ATTACKS, "fl.attack")
    if (fl.attack == "none") != (fl.attackers == 0):
        raise ConfigError(f"fl.attack={fl.attack} with fl.attackers={fl.attackers}: set both (an attack and the fraction of attackers) or neither")
    expected = math.ceil(fl.attackers * k) if fl.attackers else 0
    _at_least(fl.byzantine, 0, "fl.byzantine")
    if fl.strategy in ("krum", "multikrum") and k <= 2 * fl.byzantine + 2:
        raise ConfigError(f"fl.strategy={fl.strategy} with fl.byzantine={fl.byzantine} needs more than {2 * fl.byzantine + 2} clients per round (has {k})")
    if fl.strategy == "bulyan" and k < 4 * fl.byzantine + 3:
        raise ConfigError(f"fl.strategy=bulyan with fl.byzantine={fl.byzantine} needs at least 4f+3 = {4 * fl.byzantine + 3} clients per round (has {k})")
    if fl.strategy in ("krum", "multikrum", "bulyan") and fl.byzantine < expected:
        raise ConfigError(f"fl.attackers={fl.attackers} puts up to {expected} attackers in a round of {k}; fl.strategy={fl.strategy} tolerates fl.byzantine={fl.byzantine}: raise fl.byzantine")
    if fl.strategy == "fedtrimmedavg" and not 0 <= fl.trim_beta < 0.5:
        raise ConfigError(f"fl.trim_beta={fl.trim_beta} must be in [0, 0.5)")
    if fl.strategy == "fedtrimmedavg" and expected > math.floor(fl.trim_beta * k):
        raise ConfigError(f"fl.attackers={fl.attackers} puts up to {expected} attackers in a round of {k}; fl.trim_beta={fl.trim_beta} trims only {math.floor(fl.trim_beta * k)} at each end: raise fl.trim_beta")
    if fl.strategy == "fedmedian" and expected * 2 >= k:
        raise ConfigError(f"fl.attackers={fl.attackers} puts up to {expected} attackers in a round of {k}; a median tolerates fewer than half")


def clients_per_round(cfg: FedqConfig) -> int:
    fl = cfg.fl
    return fl.clients_per_round if fl.clients_per_round > 0 else max(1, round(fl.fraction * fl.clients))


def validate_config(cfg: FedqConfig) -> None:
    """Raise a one-line FedqError for the first setting fedq cannot run."""
    from fedq.comm.settings import downlink_codec, uplink_codec
    from fedq.data import validate_data_config
    from fedq.data.partition import validate_partition
    from fedq.quant import validate_quant_config

    validate_data_config(cfg.data)
    _validate_model(cfg)
    validate_quant_config(cfg.quant)
    _validate_train(cfg)
    _validate_decode(cfg)
    _validate_federation(cfg)
    validate_partition(cfg.partition.scheme, cfg.partition.label, cfg.partition.alpha,
                       cfg.partition.length_buckets, cfg.data.name)
    uplink_codec(cfg)
    downlink_codec(cfg)
    if (cfg.eval.src is None) != (cfg.eval.ref is None):
        raise ConfigError("eval.src and eval.ref go together: give both files (sources and references) or neither")
    _validate_deploy(cfg)
    device = cfg.device.split(":")[0]
    if device not in DEVICES:
        raise ConfigError(f"device={cfg.device!r} is unknown; use auto, cpu or cuda[:N]")
    _at_least(cfg.threads, 0, "threads")


def _at_least(value: float, low: float, name: str) -> None:
    if value < low:
        raise ConfigError(f"{name}={value} must be >= {low:g}")


def _above(value: float, low: float, name: str) -> None:
    if value <= low:
        raise ConfigError(f"{name}={value} must be > {low:g}")


def _choice(value: str, choices: Sequence[str], name: str) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is unknown; choose one of {', '.join(choices)}")


def _validate_deploy(cfg: FedqConfig) -> None:
    from fedq.deploy.registry import VARIANTS

    d = cfg.deploy
    for name in d.variants:
        _choice(name, tuple(VARIANTS), "deploy.variants entry")
    if not 0 < d.rank_ratio < 1:
        raise ConfigError(f"deploy.rank_ratio={d.rank_ratio} must be in (0, 1): the fraction of a layer's parameters kept")
    if not 0 <= d.energy < 1:
        raise ConfigError(f"deploy.energy={d.energy} must be in [0, 1) (0 = use deploy.rank_ratio)")
    for name in ("finetune_steps", "test_sentences"):
        _at_least(getattr(d, name), 0, f"deploy.{name}")
    for name in ("latency_sentences", "batch_size"):
        _at_least(getattr(d, name), 1, f"deploy.{name}")


def _validate_model(cfg: FedqConfig) -> None:
    m = cfg.model
    for name in ("d_model", "n_heads", "ffn_dim", "max_positions"):
        _at_least(getattr(m, name), 1, f"model.{name}")
    for name in ("enc_layers", "dec_layers"):
        _at_least(getattr(m, name), 1, f"model.{name}")
    if m.d_model % m.n_heads:
        raise ConfigError(f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout={m.dropout} must be in [0, 1)")
    _choice(m.mixer, MIXERS, "model.mixer")


def _validate_train(cfg: FedqConfig) -> None:
    t = cfg.train
    _at_least(t.max_steps, 1, "train.max_steps")
    _at_least(t.max_epochs, 0, "train.max_epochs")
    _at_least(t.max_minutes, 0, "train.max_minutes")
    _above(t.lr, 0, "train.lr")
    _at_least(t.warmup_steps, 0, "train.warmup_steps")
    _at_least(t.weight_decay, 0, "train.weight_decay")
    _at_least(t.clip_norm, 0, "train.clip_norm")
    _at_least(t.log_every, 1, "train.log_every")
    _at_least(t.eval_every, 0, "train.eval_every")
    _at_least(t.checkpoint_every, 0, "train.checkpoint_every")
    if not 0.0 <= t.label_smoothing < 1.0:
        raise ConfigError(f"train.label_smoothing={t.label_smoothing} must be in [0, 1)")
    if len(t.betas) != 2 or not all(0.0 <= b < 1.0 for b in t.betas):
        raise ConfigError(f"train.betas={list(t.betas)} must be two numbers in [0, 1)")


def _validate_decode(cfg: FedqConfig) -> None:
    d = cfg.decode
    _at_least(d.beam, 1, "decode.beam")
    _at_least(d.batch_size, 1, "decode.batch_size")
    _at_least(d.max_len_a, 0, "decode.max_len_a")
    _at_least(d.max_len_b, 0, "decode.max_len_b")
    if d.max_len_a == 0 and d.max_len_b == 0:
        raise ConfigError("decode.max_len_a and decode.max_len_b are both 0: no output could be produced")


def _validate_federation(cfg: FedqConfig) -> None:
    fl = cfg.fl
    _at_least(fl.clients, 1, "clients")
    if not 0 < fl.fraction <= 1:
        raise ConfigError(f"fl.fraction={fl.fraction} must be in (0, 1]")
    _at_least(fl.clients_per_round, 0, "fl.clients_per_round")
    k = clients_per_round(cfg)
    if k > fl.clients:
        raise ConfigError(f"fl.clients_per_round={k} is more than clients={fl.clients}")
    _at_least(fl.rounds, 1, "fl.rounds")
    _at_least(fl.local_steps, 1, "fl.local_steps")
    _at_least(fl.local_epochs, 0, "fl.local_epochs")
    _above(fl.local_lr, 0, "fl.local_lr")
    _at_least(fl.warmup_steps, 0, "fl.warmup_steps")
    _choice(fl.strategy, STRATEGIES, "fl.strategy")
    _choice(fl.local_optimizer, LOCAL_OPTIMIZERS, "fl.local_optimizer")
    _above(fl.server_lr, 0, "fl.server_lr")
    _at_least(fl.eval_every, 0, "fl.eval_every")
    _at_least(fl.checkpoint_every, 1, "fl.checkpoint_every")
    _validate_faults(cfg, k)
    _above(fl.node_wait_seconds, 0, "fl.node_wait_seconds")
    _at_least(fl.num_cpus, 1, "fl.num_cpus")
    _at_least(fl.num_gpus, 0, "fl.num_gpus")
