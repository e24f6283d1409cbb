"""``ct2`` and ``ct2-int8``: the model converted to CTranslate2, the CPU inference engine for translation Transformers.

The conversion goes through CTranslate2's spec API, layer by layer:
``TransformerSpec.from_config((encoder layers, decoder layers), heads, pre_norm=True)``;
self-attention gets its Q, K and V projections fused into one layer, cross-attention
its K and V; the tied embedding is given as both embeddings and the output projection
(CTranslate2 stores identical arrays once); fedq's own sinusoidal table (interleaved
sin/cos, positions from 0) replaces CTranslate2's default one; embeddings are scaled
by sqrt(d) as in fedq; the SentencePiece pieces are the vocabulary, ``<s>`` starts the
decoder and sources get no bos/eos, as in fedq. ``ct2-int8`` is the same spec saved
with ``optimize(quantization="int8")``. Greedy decoding (beam 1), so the outputs can be
compared with fedq's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedq.deploy.exact import IntegerWeight, integer_weight, packed_weights
from fedq.deploy.variant import Source, Translator, Variant, VariantError
from fedq.model.transformer import DecoderLayer, EncoderLayer, Transformer
from fedq.scoring import translate_batched


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _linear(spec, layers: Sequence[torch.nn.Linear], names: dict[int, str], exact: dict[str, IntegerWeight]) -> None:
    """One CTranslate2 linear layer from fedq's (several: fused along the outputs); with the trained codes of
    ``exact`` as its int8 weights where it has them (CTranslate2 dequantizes q / weight_scale)."""
    integers = [exact.get(f"{names[id(layer)]}.weight") for layer in layers]
    if all(integers):
        spec.weight = np.concatenate([w.values for w in integers]).astype(np.int8)  # type: ignore[union-attr]
        spec.weight_scale = np.float32(1) / np.concatenate([w.scales for w in integers])  # type: ignore[union-attr]
    else:
        spec.weight = np.concatenate([_np(layer.weight) for layer in layers])
    if layers[0].bias is not None:
        spec.bias = np.concatenate([_np(layer.bias) for layer in layers])


def _norm(spec, norm: torch.nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _np(norm.weight), _np(norm.bias)


def model_spec(model: Transformer, pieces: list[str], exact: dict[str, IntegerWeight] | None = None):
    """A CTranslate2 TransformerSpec holding ``model``'s weights (those in ``exact`` as their trained int8 codes)."""
    from ctranslate2.specs import TransformerSpec

    names, exact = {id(module): name for name, module in model.named_modules()}, exact or {}

    shape = model.shape
    spec = TransformerSpec.from_config((shape.enc_layers, shape.dec_layers), shape.n_heads, pre_norm=True)
    embedding = _np(model.embed.weight)
    positions = _np(model.positions)
    stacks: list[tuple[Any, Sequence[EncoderLayer | DecoderLayer], torch.nn.LayerNorm]] = [
        (spec.encoder, model.encoder_layers, model.encoder_norm), (spec.decoder, model.decoder_layers, model.decoder_norm)]
    for stack, layers, norm in stacks:
        (stack.embeddings[0] if isinstance(stack.embeddings, list) else stack.embeddings).weight = embedding
        stack.position_encodings.encodings = positions
        stack.scale_embeddings = math.sqrt(shape.d_model)
        _norm(stack.layer_norm, norm)
        for layer_spec, layer in zip(stack.layer, layers):
            attn = layer.self_attn
            _linear(layer_spec.self_attention.linear[0], [attn.q_proj, attn.k_proj, attn.v_proj], names, exact)
            _linear(layer_spec.self_attention.linear[1], [attn.out_proj], names, exact)
            _norm(layer_spec.self_attention.layer_norm, layer.self_attn_norm)
            if isinstance(layer, DecoderLayer):
                cross = layer.cross_attn
                _linear(layer_spec.attention.linear[0], [cross.q_proj], names, exact)
                _linear(layer_spec.attention.linear[1], [cross.k_proj, cross.v_proj], names, exact)
                _linear(layer_spec.attention.linear[2], [cross.out_proj], names, exact)
                _norm(layer_spec.attention.layer_norm, layer.cross_attn_norm)
            _linear(layer_spec.ffn.linear_0, [layer.ffn.fc1], names, exact)
            _linear(layer_spec.ffn.linear_1, [layer.ffn.fc2], names, exact)
            _norm(layer_spec.ffn.layer_norm, layer.ffn_norm)
    spec.decoder.projection.weight = embedding
    spec.register_source_vocabulary(pieces)
    spec.register_target_vocabulary(pieces)
    spec.config.decoder_start_token = "<s>"
    spec.config.add_source_bos = spec.config.add_source_eos = False
    return spec


class CT2Translator:
    """CTranslate2's Translator, one per thread count (its threads are fixed when it loads)."""

    def __init__(self, folder: Path, source: Source, compute_type: str) -> None:
        self.folder, self.compute_type = folder, compute_type
        self.tokenizer, self.decode = source.tokenizer, source.decode
        self.pieces = source.tokenizer.pieces()
        self.ids = {piece: i for i, piece in enumerate(self.pieces)}
        self.max_src = source.shape.max_positions
        self.translators: dict[int, object] = {}

    def _translator(self, threads: int):
        import ctranslate2

        if threads not in self.translators:
            self.translators[threads] = ctranslate2.Translator(
                str(self.folder), device="cpu", compute_type=self.compute_type, intra_threads=threads, inter_threads=1
            )
        return self.translators[threads]

    def translate(self, sources: Sequence[str], batch_size: int, threads: int) -> list[str]:
        translator = self._translator(threads)

        def greedy(rows: list[list[int]], max_len: int) -> list[list[int]]:
            results = translator.translate_batch(
                [[self.pieces[t] for t in row] for row in rows], beam_size=1, max_decoding_length=max_len)
            return [[self.ids.get(piece, self.tokenizer.unk_id) for piece in r.hypotheses[0]] for r in results]

        return translate_batched(sources, self.tokenizer, self.max_src, replace(self.decode, batch_size=batch_size), greedy)


class CT2(Variant):
    name = "ct2"
    engine = "ctranslate2"
    quantization: str | None = None  # CTranslate2's own quantization of the fp32 weights when it saves them
    compute_type: str | None = None  # the type it runs in, when not the quantization's

    def check(self, source: Source) -> None:
        super().check(source)
        quant = source.checkpoint.meta.get("quant") or {}
        if source.model.shape.mixer != "attention":
            raise VariantError(f"variant {self.name}: CTranslate2 has no Fourier token mixing; this model's encoder uses it")
        if (source.cfg.quant.act_bits or quant.get("act_bits")) is not None:
            raise VariantError(f"variant {self.name}: CTranslate2 cannot fake-quantize activations as this QAT model does")

    def build(self, source: Source, folder: Path) -> None:
        spec = model_spec(source.model, source.tokenizer.pieces(), self.exact_weights(source))
        spec.validate()
        spec.optimize(quantization=self.quantization)
        spec.save(str(folder))

    def exact_weights(self, source: Source) -> dict[str, IntegerWeight]:
        """The weights given to CTranslate2 as their trained codes (none: every weight as fp32)."""
        return {}

    def load(self, folder: Path, source: Source) -> Translator:
        return CT2Translator(folder, source, self.compute_type or self.quantization or "float32")


class CT2Int8(CT2):
    name = "ct2-int8"
    quantization = "int8"


class CT2Codes(CT2):
    """The QAT model's own codes as CTranslate2's int8 weights, not re-quantized (``fedq.deploy.exact``): CTranslate2
    keeps int8 weights as given, with weight_scale = 1/t in fp32 (its int8 matmuls quantize the activations to
    int8; the fp32 embedding and output projection it quantizes itself at load, as for ct2-int8)."""

    name = "ct2-codes"
    compute_type = "int8"

    def check(self, source: Source) -> None:
        super().check(source)
        self.exact_weights(source)

    def exact_weights(self, source: Source) -> dict[str, IntegerWeight]:
        packed = packed_weights(source, self.name, "ct2-int8")
        return {name: integer_weight(name, t, (8,), "CTranslate2") for name, t in packed.items()}
