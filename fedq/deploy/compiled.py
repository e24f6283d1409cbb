"""``fp32-compiled``: the fp32 model under ``torch.compile`` (inductor) and inference mode.

The encoder and one decoder step are compiled with dynamic shapes (sentence
lengths and the growing KV cache vary), once, when the variant is loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedq.deploy.fp32 import Fp32
from fedq.deploy.torch_files import load_model
from fedq.deploy.variant import Source, TorchTranslator, Translator


class Compiled(Fp32):
    name = "fp32-compiled"

    def load(self, folder: Path, source: Source) -> Translator:
        model, _ = load_model(folder)
        model.encode = torch.compile(model.encode, dynamic=True)  # type: ignore[method-assign]
        model.decode = torch.compile(model.decode, dynamic=True)  # type: ignore[method-assign]
        return TorchTranslator(model, source.tokenizer, source.decode)
