"""Structured config schemas for every entry point.

The dataclasses are registered in Hydra's ConfigStore, so a typo in a key or a
wrong type is rejected by Hydra with a one-line message before any work starts.
The YAML files under ``configs/`` only choose values; the schema lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore


@dataclass
class DataConfig:
    name: str = "demo"  # demo | textdir | multi30k | iwslt2017
    src: str = "de"
    tgt: str = "en"
    dir: Optional[str] = None  # textdir: folder with {split}.{lang}[.gz]
    test_split: Optional[str] = None  # textdir: which test file (default: first test*)
    cache_dir: str = "~/.cache/fedq"
    vocab_size: int = 2000
    max_tokens: int = 4096  # token budget per batch (source + target tokens)
    max_len: int = 128  # sentences longer than this (in subword tokens) are dropped from training
    max_train_pairs: int = 0  # 0 = all; else keep the first N training pairs
    max_eval_pairs: int = 0  # 0 = all; else evaluate on the first N valid/test pairs
    demo_train_size: int = 24000
    demo_eval_size: int = 1000
    seed: int = 1


@dataclass
class ModelConfig:
    preset: str = "tiny"
    d_model: int = 128
    n_heads: int = 4
    ffn_dim: int = 256
    enc_layers: int = 2
    dec_layers: int = 2
    dropout: float = 0.1
    max_positions: int = 256


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


@dataclass
class DecodeConfig:
    beam: int = 1  # 1 = greedy
    length_penalty: float = 1.0
    max_len_a: float = 1.2  # max output length = a * source length + b
    max_len_b: int = 10
    batch_size: int = 64


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
    downlink: CodecConfig = field(default_factory=lambda: CodecConfig(name="fp32"))


@dataclass
class PartitionConfig:
    scheme: str = "iid"  # iid | dirichlet | natural
    alpha: float = 0.5
    label: str = "length"  # dirichlet label: length | talk
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
    strategy: str = "fedavg"  # fedavg | fedadam
    server_lr: float = 1.0  # fedavg: step on the averaged update; fedadam: eta
    eval_every: int = 5
    num_cpus: float = 1.0
    num_gpus: float = 0.0
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
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 1
    threads: int = 0  # torch intra-op threads; 0 = torch default
    ckpt: Optional[str] = None  # evaluate: checkpoint to score
    init_from: Optional[str] = None  # train: start from this checkpoint
    out_dir: str = "."  # where results go (Hydra sets the working dir per run)
    clients: int = 20  # shorthand for fl.clients, so that `clients=20` works


def register_configs() -> None:
    """Register the schema so Hydra validates configs/config.yaml against it."""
    cs = ConfigStore.instance()
    cs.store(name="fedq_schema", node=FedqConfig)
