"""The variants ``deploy.variants`` can name, built with the run's ``deploy.*`` settings."""

from __future__ import annotations

from fedq.config import DeployConfig
from fedq.deploy.compiled import Compiled
from fedq.deploy.ctranslate import CT2, CT2Int8
from fedq.deploy.fp32 import Fp32
from fedq.deploy.int8 import Int8, Int8Torchao
from fedq.deploy.lowrank import LowRank, LowRankInt8
from fedq.deploy.onnx_runtime import Onnx, OnnxInt8
from fedq.deploy.packed import Packed
from fedq.deploy.variant import Variant

VARIANTS: dict[str, type[Variant]] = {
    cls.name: cls for cls in (Fp32, Compiled, Int8, Int8Torchao, Packed, LowRank, LowRankInt8, Onnx, OnnxInt8, CT2, CT2Int8)
}


def make_variant(name: str, cfg: DeployConfig) -> Variant:
    cls = VARIANTS[name]
    if issubclass(cls, LowRank):
        return cls(cfg.rank_ratio, cfg.energy, cfg.finetune_steps)
    return cls()
