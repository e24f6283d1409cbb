"""The interface of a deployment variant: build it from a checkpoint, save it, load it, translate with it.

Every variant is built from the same :class:`Source` (the checkpoint's deployed
weights at fp32, its tokenizer and config), writes its files into a folder of
its own, and is measured from what it loads back from those files.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar, Protocol

import torch

from fedq.checkpoint import Checkpoint
from fedq.config import FedqConfig
from fedq.data.tokenizer import SubwordTokenizer
from fedq.deploy.settings import DeployConfig
from fedq.errors import FedqError
from fedq.model.decoding import DecodeConfig
from fedq.model.transformer import ModelConfig, Transformer
from fedq.quant.deployed import load_deployed
from fedq.scoring import translate

INSTALL_HINT = 'pip install -e ".[deploy]"'


class VariantError(FedqError):
    """A variant that cannot be built here (engine missing) or cannot apply to this model."""


@dataclass
class Source:
    """What every variant is built from (a variant's ``load`` needs only its tokenizer and decoding settings)."""

    checkpoint: Checkpoint
    decode: DecodeConfig

    @cached_property
    def model(self) -> Transformer:
        """The deployed weights (dequantized where QAT packed them), fp32, eval mode; read on first use."""
        return load_deployed(self.checkpoint.deployed_path)[0]

    @property
    def shape(self) -> ModelConfig:
        """The model's shape from the checkpoint's meta.json: what a variant's ``load`` needs, without the weights
        (a variant loaded for its peak memory must not hold the fp32 model beside its own)."""
        return Transformer.shape_from_dict(self.checkpoint.meta["shape"])

    @property
    def tokenizer(self) -> SubwordTokenizer:
        return self.checkpoint.tokenizer

    @property
    def cfg(self) -> FedqConfig:
        return self.checkpoint.config


class Translator(Protocol):
    def translate(self, sources: Sequence[str], batch_size: int, threads: int) -> list[str]:
        """Greedy translations of ``sources``, batched, on ``threads`` CPU threads."""


class Variant(ABC):
    name: ClassVar[str]
    engine: ClassVar[str | None] = None  # the Python module the variant runs on, when it is not torch

    @classmethod
    def from_settings(cls, cfg: DeployConfig) -> Variant:
        """The variant with the ``deploy.*`` settings it uses (most use none)."""
        return cls()

    def check(self, source: Source) -> None:
        """Raise VariantError (one line) when the variant cannot be built here or for this model."""
        if self.engine is not None and importlib.util.find_spec(self.engine) is None:
            raise VariantError(f"variant {self.name} needs {self.engine}, which is not installed: {INSTALL_HINT}")

    @abstractmethod
    def build(self, source: Source, folder: Path) -> None:
        """Write the variant's files into ``folder``."""

    @abstractmethod
    def load(self, folder: Path, source: Source) -> Translator:
        """Load the variant from its files (the tokenizer comes from ``source``)."""


class TorchTranslator:
    """A PyTorch model behind fedq's batched greedy decoding with its KV cache."""

    def __init__(self, model: torch.nn.Module, tokenizer: SubwordTokenizer, decode: DecodeConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.decode = decode

    def translate(self, sources: Sequence[str], batch_size: int, threads: int) -> list[str]:
        torch.set_num_threads(threads)
        decode = DecodeConfig(**{**self.decode.__dict__, "beam": 1, "batch_size": batch_size})
        with torch.inference_mode():
            return translate(self.model, self.tokenizer, sources, decode, torch.device("cpu"))  # type: ignore[arg-type]
