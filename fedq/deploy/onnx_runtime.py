"""``onnx`` and ``onnx-int8``: the encoder and one decoder step exported to ONNX, greedy decoding in ONNX Runtime.

Two graphs, exported with torch's TorchScript-based ONNX exporter (``dynamo=False``;
torch 2.13's dynamo exporter gave a step graph whose logits differed from
PyTorch's by up to 2.0 as soon as the cache was not empty, with no error; the
TorchScript one matches to 1e-5), and checked against PyTorch when built:

- ``encoder.onnx``: source ids -> encoder output, the source mask, and every
  decoder layer's cross-attention keys and values (computed once per sentence);
- ``decoder_step.onnx``: one target token, its position, the source mask, the
  cross-attention keys/values and the self-attention cache of the steps so far
  -> the next token's logits and the cache grown by one step.

Batch, source length and cache length are dynamic. Greedy decoding runs the
step graph until every sentence has produced eos, as fedq's own greedy search
does. ``onnx-int8`` is ONNX Runtime's dynamic int8 quantization of both graphs
(``quantize_dynamic``, int8 weights, ``reduce_range=False``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedq.deploy.variant import Source, Translator, Variant, VariantError
from fedq.model.transformer import Transformer
from fedq.scoring import padded, translate_batched

ENCODER, STEP = "encoder.onnx", "decoder_step.onnx"


class EncoderGraph(nn.Module):
    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory, src_mask = self.model.encode(src)
        keys, values = [], []
        for layer in self.model.decoder_layers:
            attn = layer.cross_attn
            keys.append(attn._split(attn.k_proj(memory)))
            values.append(attn._split(attn.v_proj(memory)))
        return src_mask, torch.stack(keys), torch.stack(values)


class DecoderStepGraph(nn.Module):
    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, token: torch.Tensor, offset: torch.Tensor, src_mask: torch.Tensor, cross_k: torch.Tensor,
                cross_v: torch.Tensor, self_k: torch.Tensor, self_v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        model = self.model
        x = model.embed(token) + model.positions.index_select(0, offset.reshape(1))
        new_k, new_v = [], []
        for i, layer in enumerate(model.decoder_layers):
            cache = {"self_k": self_k[i], "self_v": self_v[i], "cross_k": cross_k[i], "cross_v": cross_v[i]}
            x = layer(x, cross_k[i], src_mask, cache)
            new_k.append(cache["self_k"])
            new_v.append(cache["self_v"])
        logits = model.embed.project(model.decoder_norm(x))[:, -1]
        return logits, torch.stack(new_k), torch.stack(new_v)


STEP_INPUTS = ["token", "offset", "src_mask", "cross_k", "cross_v", "self_k", "self_v"]
MAX_LOGIT_ERROR = 1e-3


def export(model: Transformer, folder: Path) -> None:
    shape = model.shape
    heads, head_dim = shape.n_heads, shape.d_model // shape.n_heads
    src = torch.full((2, 3), 4, dtype=torch.long)
    with torch.no_grad():
        encoder = EncoderGraph(model).eval()
        mask, cross_k, cross_v = encoder(src)
        torch.onnx.export(encoder, (src,), str(folder / ENCODER), dynamo=False, input_names=["src"],
                          output_names=["src_mask", "cross_k", "cross_v"],
                          dynamic_axes={"src": {0: "batch", 1: "src_len"}, "src_mask": {0: "batch", 3: "src_len"},
                                        "cross_k": {1: "batch", 3: "src_len"}, "cross_v": {1: "batch", 3: "src_len"}})
        cache = torch.zeros(shape.dec_layers, 2, heads, 2, head_dim)
        step_inputs = (torch.full((2, 1), 4, dtype=torch.long), torch.tensor(2), mask, cross_k, cross_v, cache, cache)
        torch.onnx.export(DecoderStepGraph(model).eval(), step_inputs, str(folder / STEP), dynamo=False,
                          input_names=STEP_INPUTS, output_names=["logits", "new_self_k", "new_self_v"],
                          dynamic_axes={"token": {0: "batch"}, "src_mask": {0: "batch", 3: "src_len"},
                                        "cross_k": {1: "batch", 3: "src_len"}, "cross_v": {1: "batch", 3: "src_len"},
                                        "self_k": {1: "batch", 3: "past"}, "self_v": {1: "batch", 3: "past"},
                                        "logits": {0: "batch"}, "new_self_k": {1: "batch", 3: "steps"},
                                        "new_self_v": {1: "batch", 3: "steps"}})


def cpu_session(path: Path, threads: int, weights: dict[str, np.ndarray] | None = None):
    """An ONNX Runtime session of the graph at ``path`` on ``threads`` CPU threads; ``weights`` supplies the
    graph's external initializers from memory."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if weights:
        options.add_external_initializers(list(weights), [ort.OrtValue.ortvalue_from_numpy(a) for a in weights.values()])
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.fedq_weights = weights  # ONNX Runtime runs on the arrays' own memory: they live as long as the session
    return session


def check_step_graph(model: Transformer, session, tolerance: float) -> float:
    """The largest logit difference between the ONNX step graph's ``session`` and PyTorch over random inputs with
    caches of several lengths; a graph past ``tolerance`` is refused."""
    shape, generator = model.shape, torch.Generator().manual_seed(0)
    worst = 0.0
    for batch, src_len, past in ((1, 4, 0), (2, 3, 1), (3, 5, 4)):
        src = torch.randint(4, model.vocab_size, (batch, src_len), generator=generator)
        with torch.no_grad():
            mask, cross_k, cross_v = EncoderGraph(model)(src)
        cache = torch.randn(shape.dec_layers, batch, shape.n_heads, past, shape.d_model // shape.n_heads, generator=generator)
        inputs = (torch.full((batch, 1), 4), torch.tensor(past), mask, cross_k, cross_v, cache, cache)
        with torch.no_grad():
            expected = DecoderStepGraph(model)(*inputs)[0].numpy()
        got = session.run(None, {name: value.numpy() for name, value in zip(STEP_INPUTS, inputs)})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > tolerance:
        raise VariantError(f"the exported ONNX decoder step differs from PyTorch by {worst:.3g} in its logits (> {tolerance:g})")
    return worst


class OnnxTranslator:
    def __init__(self, folder: Path, source: Source) -> None:
        self.folder = folder
        self.tokenizer, self.decode, self.shape = source.tokenizer, source.decode, source.shape
        self.sessions: dict[int, tuple] = {}

    def _sessions(self, threads: int) -> tuple:
        if threads not in self.sessions:
            self.sessions[threads] = tuple(self._session(name, threads) for name in (ENCODER, STEP))
        return self.sessions[threads]

    def _session(self, name: str, threads: int):
        """The session of graph ``name``: its file here, weights included."""
        return cpu_session(self.folder / name, threads)

    def translate(self, sources: Sequence[str], batch_size: int, threads: int) -> list[str]:
        tok, shape = self.tokenizer, self.shape
        encoder, step = self._sessions(threads)
        heads, head_dim = shape.n_heads, shape.d_model // shape.n_heads

        def greedy(rows: list[list[int]], max_len: int) -> list[list[int]]:
            mask, cross_k, cross_v = encoder.run(None, {"src": padded(rows, tok.pad_id)})
            self_k = self_v = np.zeros((shape.dec_layers, len(rows), heads, 0, head_dim), np.float32)
            last = np.full((len(rows), 1), tok.bos_id, np.int64)
            finished = np.zeros(len(rows), bool)
            result: list[list[int]] = [[] for _ in rows]
            for offset in range(max_len):
                logits, self_k, self_v = step.run(None, dict(zip(
                    STEP_INPUTS, (last, np.array(offset, np.int64), mask, cross_k, cross_v, self_k, self_v))))
                nxt = np.where(finished, tok.eos_id, logits.argmax(axis=-1))
                for row in np.nonzero(~finished)[0]:
                    if nxt[row] != tok.eos_id:
                        result[row].append(int(nxt[row]))
                finished |= nxt == tok.eos_id
                if finished.all():
                    break
                last = nxt[:, None].astype(np.int64)
            return result

        return translate_batched(sources, tok, shape.max_positions, replace(self.decode, batch_size=batch_size), greedy)


class Onnx(Variant):
    name = "onnx"
    engine = "onnxruntime"
    int8 = False

    def check(self, source: Source) -> None:
        super().check(source)
        if source.model.shape.mixer != "attention":
            raise VariantError(f"variant {self.name}: torch's ONNX exporter has no operator for the Fourier token mixing "
                               "(fft_fft2) of this model's encoder")
        for module in ("onnx", "onnxscript"):
            if __import__("importlib").util.find_spec(module) is None:
                raise VariantError(f"variant {self.name} needs {module} to export, which is not installed: pip install -e "
                                   "\".[deploy]\"")

    def build(self, source: Source, folder: Path) -> None:
        export(source.model, folder)
        check_step_graph(source.model, cpu_session(folder / STEP, 1), MAX_LOGIT_ERROR)
        if self.int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            for name in (ENCODER, STEP):
                plain = folder / name
                quantize_dynamic(str(plain), str(folder / f"int8-{name}"), weight_type=QuantType.QInt8, reduce_range=False)
                (folder / f"int8-{name}").replace(plain)

    def load(self, folder: Path, source: Source) -> Translator:
        return OnnxTranslator(folder, source)


class OnnxInt8(Onnx):
    name = "onnx-int8"
    int8 = True
