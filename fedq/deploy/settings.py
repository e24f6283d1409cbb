"""The ``deploy.*`` settings and the one list of deployment variants (name -> the class that builds it).

Naming a variant does not import its engine: the registry imports a variant's
module only when it is built (``fedq.deploy.registry``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from fedq.errors import ConfigError

# name -> "module:Class"; the order is the order of the table
VARIANTS = {
    "fp32": "fedq.deploy.fp32:Fp32",
    "fp32-compiled": "fedq.deploy.compiled:Compiled",
    "int8": "fedq.deploy.int8:Int8",
    "int8-torchao": "fedq.deploy.int8:Int8Torchao",
    "packed": "fedq.deploy.packed:Packed",
    "lowrank": "fedq.deploy.lowrank:LowRank",
    "lowrank-int8": "fedq.deploy.lowrank:LowRankInt8",
    "onnx": "fedq.deploy.onnx_runtime:Onnx",
    "onnx-int8": "fedq.deploy.onnx_runtime:OnnxInt8",
    "onnx-nbits": "fedq.deploy.onnx_nbits:OnnxNBits",
    "ct2": "fedq.deploy.ctranslate:CT2",
    "ct2-codes": "fedq.deploy.ctranslate:CT2Codes",
    "ct2-int8": "fedq.deploy.ctranslate:CT2Int8",
}


@dataclass
class DeployConfig:
    """fedq.deploy: which CPU variants to build from a checkpoint, and how to measure them."""

    # fp32-compiled (no faster at batch 1, compiles at load) and int8-torchao (slower here) can be named too (docs/results.md);
    # onnx-nbits and ct2-codes run a QAT checkpoint's own codes (an fp32 checkpoint has none: one note each)
    variants: list[str] = field(default_factory=lambda: [
        "fp32", "int8", "packed", "lowrank", "lowrank-int8", "onnx", "onnx-int8", "onnx-nbits", "ct2", "ct2-codes", "ct2-int8"])
    out_dir: Optional[str] = None  # where the variants and the table go; None: CHECKPOINT/deploy
    rank_ratio: float = 0.5  # lowrank: each factorized layer keeps this fraction of its parameters
    energy: float = 0.0  # lowrank: instead, the smallest rank keeping this fraction of the squared singular values
    finetune_steps: int = 0  # lowrank: training steps on the checkpoint's training corpus after factorizing
    test_sentences: int = 0  # test pairs scored (0 = the whole test split)
    latency_sentences: int = 30  # sentences timed one at a time on one thread
    batch_size: int = 32  # the batch of the throughput measurement (all cores, or `threads`)
    memory: bool = True  # peak resident memory of each variant translating the test set, in a process of its own


def validate_deploy_config(cfg: DeployConfig) -> None:
    for name in cfg.variants:
        if name not in VARIANTS:
            raise ConfigError(f"deploy.variants entry={name!r} is unknown; choose one of {', '.join(VARIANTS)}")
    if not 0 < cfg.rank_ratio < 1:
        raise ConfigError(f"deploy.rank_ratio={cfg.rank_ratio} must be in (0, 1): the fraction of a layer's parameters kept")
    if not 0 <= cfg.energy < 1:
        raise ConfigError(f"deploy.energy={cfg.energy} must be in [0, 1) (0 = use deploy.rank_ratio)")
    for name, low in (("finetune_steps", 0), ("test_sentences", 0), ("latency_sentences", 1), ("batch_size", 1)):
        if getattr(cfg, name) < low:
            raise ConfigError(f"deploy.{name}={getattr(cfg, name)} must be >= {low}")
