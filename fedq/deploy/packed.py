"""``packed``: the QAT checkpoint's own deployed file (b-bit codes + fp16 scales), loaded for inference.

The file is the smallest a QAT run gives; at load its codes are dequantized to
fp32, so it runs at fp32 speed and gives exactly the BLEU fedq reports for the
checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from fedq.checkpoint import DEPLOYED
from fedq.deploy.variant import Source, TorchTranslator, Translator, Variant
from fedq.files import atomic_write
from fedq.quant.deployed import load_deployed


class Packed(Variant):
    name = "packed"

    def build(self, source: Source, folder: Path) -> None:
        atomic_write(folder / DEPLOYED, source.checkpoint.deployed_path.read_bytes())

    def load(self, folder: Path, source: Source) -> Translator:
        model, _ = load_deployed(folder / DEPLOYED)
        return TorchTranslator(model, source.tokenizer, source.decode)
