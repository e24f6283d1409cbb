"""``int8`` and ``int8-torchao``: dynamic int8 quantization of the linear layers, int8 matmuls on the CPU.

The file stores each linear layer's weight as int8 codes with one fp32 scale per
output row (symmetric, max |w| / 127): a quarter of the fp32 bytes. Loading
rebuilds the layers and quantizes them for the engine: ``int8`` with PyTorch's
fbgemm dynamic quantization (the faster one here, see
``torch_files.int8_linear_layers``), ``int8-torchao`` with torchao's ``quantize_``.
Activations are quantized per call at run time. The tied embedding / output
projection stays fp32 (it is not an ``nn.Linear``).
"""

from __future__ import annotations

from pathlib import Path

from fedq.deploy.torch_files import int8_linear_layers, load_model, save_model
from fedq.deploy.variant import Source, TorchTranslator, Translator, Variant


class Int8(Variant):
    name = "int8"
    int8_engine = "fbgemm"

    def build(self, source: Source, folder: Path) -> None:
        save_model(source.model, folder, int8=True)

    def load(self, folder: Path, source: Source) -> Translator:
        model, _ = load_model(folder)
        return TorchTranslator(int8_linear_layers(model, self.int8_engine), source.tokenizer, source.decode)


class Int8Torchao(Int8):
    name = "int8-torchao"
    engine = "torchao"
    int8_engine = "torchao"
