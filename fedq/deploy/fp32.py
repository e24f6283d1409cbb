"""``fp32``: the eager PyTorch model with its KV cache, the reference row of the table."""

from __future__ import annotations

from pathlib import Path

from fedq.deploy.torch_files import load_model, save_model
from fedq.deploy.variant import Source, TorchTranslator, Translator, Variant


class Fp32(Variant):
    name = "fp32"

    def build(self, source: Source, folder: Path) -> None:
        save_model(source.model, folder)

    def load(self, folder: Path, source: Source) -> Translator:
        model, _ = load_model(folder)
        return TorchTranslator(model, source.tokenizer, source.decode)
