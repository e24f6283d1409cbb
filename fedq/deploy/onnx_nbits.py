"""``onnx-nbits``: the QAT model's own codes in ONNX Runtime's low-bit matmul (``MatMulNBits``), nothing re-quantized.

Every weight grid fedq trains is an integer k times a per-row scale t, bit for bit
(``fedq.deploy.exact``). ``MatMulNBits`` dequantizes (q - z)·t with q unsigned at 2, 4 or 8 bits and z its
default zero point 2^(bits-1), so q = k + z holds the trained weight exactly at 4 bits
(binary, ternary, 2-bit ``seq`` and 2/3/4-bit ``lsq``) or 8 (8-bit ``lsq``, 4-bit ``seq``). The per-row
scale is repeated over the kernel's blocks along the input. ``accuracy_level`` 1:
activations stay fp32 (the kernel's int8-activation path would re-quantize them).

The folder a device downloads is the checkpoint's packed file (``model.fedq``, its
checksum checked at load) plus the two graphs, whose weights are external
initializers without data, and ``weights.json`` (which graph tensor is which file
tensor). At load every weight is expanded from the packed file once (quantized
ones to the kernel's codes and scales, the rest as fp32; the embedding the two
graphs share is one array) and handed to ONNX Runtime as in-memory external
initializers: no graph with its weights is ever serialized, so the loaded model
holds no second copy of them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedq.checkpoint import DEPLOYED
from fedq.deploy.exact import integer_weight, packed_weights
from fedq.deploy.onnx_runtime import (
    ENCODER,
    MAX_LOGIT_ERROR,
    STEP,
    Onnx,
    OnnxTranslator,
    check_step_graph,
    cpu_session,
    export,
)
from fedq.deploy.variant import Source, Translator, VariantError
from fedq.files import atomic_write
from fedq.model.transformer import sinusoidal_positions
from fedq.quant.deployed import PackedTensor, read_deployed_tensors

# the widths used of those MatMulNBits takes (2, 4, 8): its 2-bit path ran a ternary model 4.5x slower than the
# 4-bit one here (19.6 against 4.4 ms a sentence), so 2-bit grids run at 4 bits too (the download stays packed)
KERNEL_BITS = (4, 8)
ACCURACY_LEVEL = 1  # fp32 activations and accumulation
WEIGHTS = "weights.json"
POSITIONS = "positions"  # not in the file: computed from its model shape
EXPANDED = f"expanded-at-load-from-{DEPLOYED}"  # the location of every weight in the graphs: no such file exists


@dataclass
class KernelWeight:
    """A ``[N, K]`` weight in MatMulNBits' layout: ``codes`` ``[N, blocks, block·bits/8]`` uint8, ``scales``
    ``[N·blocks]`` fp32."""

    bits: int
    block_size: int
    n: int
    k: int
    codes: np.ndarray
    scales: np.ndarray

    def dequantize(self) -> np.ndarray:
        """(q - 2^(bits-1))·t, as the kernel computes it: the ``[N, K]`` fp32 weight."""
        per_byte = 8 // self.bits
        shifts = np.arange(per_byte, dtype=np.uint8) * self.bits
        codes = (self.codes[..., None] >> shifts) & ((1 << self.bits) - 1)
        q = codes.reshape(self.n, -1)[:, : self.k].astype(np.float32) - (1 << (self.bits - 1))
        blocks = self.scales.reshape(self.n, -1)
        return q * np.repeat(blocks, self.block_size, axis=1)[:, : self.k]


def kernel_weight(name: str, weight: PackedTensor) -> KernelWeight:
    """The trained codes of ``weight`` in the kernel's layout (exact: ``fedq.deploy.exact``), checked as the kernel
    dequantizes them: equal to the QAT weight bit for bit."""
    exact = integer_weight(name, weight, KERNEL_BITS, "MatMulNBits")
    bits, (n, k) = exact.bits, exact.values.shape
    block = int(min(128, max(16, 1 << (k - 1).bit_length())))
    blocks = -(-k // block)
    q = np.full((n, blocks * block), 1 << (bits - 1), np.uint8)  # padding holds the zero point: weight 0
    q[:, :k] = exact.values + (1 << (bits - 1))
    per_byte = 8 // bits
    grouped = q.reshape(n, blocks, block // per_byte, per_byte)
    packed = np.zeros(grouped.shape[:-1], np.uint8)
    for i in range(per_byte):
        packed |= grouped[..., i] << (i * bits)
    kernel = KernelWeight(bits, block, n, k, packed, np.repeat(exact.scales, blocks))
    if not np.array_equal(kernel.dequantize(), weight.dequantize().numpy()):
        raise VariantError(f"{name}: MatMulNBits' {bits}-bit layout does not give back the {weight.method} weights")
    return kernel


def _key(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, np.float32).tobytes()).hexdigest()


def read_weights(path: Path) -> dict[str, np.ndarray | PackedTensor]:
    """The packed file's tensors (its checksum checked) and the position table its model shape implies."""
    header, tensors = read_deployed_tensors(path.read_bytes(), path)
    shape = header["shape"]
    tensors[POSITIONS] = sinusoidal_positions(shape["max_positions"], shape["d_model"]).numpy()
    return tensors


def rewrite(path: Path, tensors: dict[str, np.ndarray | PackedTensor], cache: dict) -> tuple[dict[str, list], set[str]]:
    """Turn every MatMul of a quantized weight in the graph at ``path`` into MatMulNBits, make every weight of the
    packed file an external initializer without data, and return which graph tensor is which file tensor and the
    weights converted (``cache``: as for :func:`weight_arrays`)."""
    import onnx
    from onnx import helper, numpy_helper

    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    _shorten_names(graph)
    by_value: dict[str, tuple[str, bool]] = {}
    for name, tensor in tensors.items():
        dense = tensor.dequantize().numpy() if isinstance(tensor, PackedTensor) else tensor
        by_value.setdefault(_key(dense), (name, False))
        if dense.ndim == 2:
            by_value.setdefault(_key(dense.T), (name, True))
    initializers = {init.name: init for init in graph.initializer}
    layout: dict[str, list] = {}  # graph tensor -> [file tensor, part (fp32, fp32.T, codes, scales), shape]
    converted: set[str] = set()
    for index, node in enumerate(list(graph.node)):
        if node.op_type != "MatMul" or node.input[1] not in initializers:
            continue
        name, transposed = by_value.get(_key(numpy_helper.to_array(initializers[node.input[1]])), ("", False))
        packed = tensors.get(name)
        if not (transposed and isinstance(packed, PackedTensor)):
            continue
        n, k = packed.codes.shape
        kernel = kernel_weight(name, packed)
        codes, scales = f"q{len(converted)}", f"s{len(converted)}"
        layout[codes], layout[scales] = [name, "codes"], [name, "scales"]
        graph.node.remove(node)
        graph.node.insert(index, helper.make_node(
            "MatMulNBits", [node.input[0], codes, scales], list(node.output),
            domain="com.microsoft", K=k, N=n, bits=kernel.bits, block_size=kernel.block_size, accuracy_level=ACCURACY_LEVEL))
        converted.add(name)
    for node in list(graph.node):  # a weight the exporter folded into a Constant (the position table) is one too
        constant = node.op_type == "Constant" and node.attribute[0].name == "value"
        if constant and node.attribute[0].t.data_type == onnx.TensorProto.FLOAT:
            value = numpy_helper.to_array(node.attribute[0].t)
            if value.size > 1 and _key(value) in by_value:
                graph.node.remove(node)
                graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
    used = {name for node in graph.node for name in node.input}
    for init in list(graph.initializer):
        graph.initializer.remove(init)
        if init.name not in used:
            continue
        value = numpy_helper.to_array(init)
        match = by_value.get(_key(value)) if init.data_type == onnx.TensorProto.FLOAT and value.size > 1 else None
        if match is None or isinstance(tensors[match[0]], PackedTensor):
            graph.initializer.append(init)  # a constant of the graph, not a weight of the file
        else:
            layout[init.name] = [match[0], "fp32.T" if match[1] else "fp32", list(value.shape)]
    for name, array in weight_arrays(layout, tensors, cache).items():
        graph.initializer.append(_external(name, array))
    graph_model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    atomic_write(path, graph_model.SerializeToString())
    return layout, converted


def _shorten_names(graph) -> None:
    """Number the graph's inner values and drop its node names: the exporter's long names were most of the
    bytes of a small model's graph without weights."""
    keep = {value.name for value in [*graph.input, *graph.output]}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        return name if not name or name in keep else names.setdefault(name, f"v{len(names)}")

    for init in graph.initializer:
        init.name = short(init.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [short(name) for name in node.input]
        node.output[:] = [short(name) for name in node.output]
    del graph.value_info[:]


def _external(name: str, array: np.ndarray):
    """A graph initializer of ``array``'s shape and type whose data is supplied at load (from the packed file)."""
    from onnx import TensorProto
    from onnx.helper import np_dtype_to_tensor_dtype

    tensor = TensorProto(name=name, dims=array.shape, data_type=np_dtype_to_tensor_dtype(array.dtype),
                         data_location=TensorProto.EXTERNAL)
    for key, value in (("location", EXPANDED), ("offset", "0"), ("length", str(array.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def weight_arrays(layout: dict, tensors: dict[str, np.ndarray | PackedTensor], cache: dict) -> dict[str, np.ndarray]:
    """A graph's weights (graph tensor -> array) expanded from the packed file's tensors; ``cache`` lets the two
    graphs share an array (the embedding is in both)."""
    arrays = {}
    for init_name, (name, part, *shape) in layout.items():
        if (name, part) not in cache:
            tensor = tensors[name]
            if isinstance(tensor, np.ndarray):  # part fp32 or fp32.T
                cache[name, part] = np.ascontiguousarray(tensor.T if part == "fp32.T" else tensor, np.float32)
            else:  # its codes and its scales are two graph tensors
                kernel = kernel_weight(name, tensor)
                cache[name, "codes"], cache[name, "scales"] = kernel.codes, kernel.scales
        arrays[init_name] = cache[name, part].reshape(shape[0]) if shape else cache[name, part]
    return arrays


class NBitsTranslator(OnnxTranslator):
    """ONNX Runtime sessions of the graphs with their weights expanded at load from the packed file."""

    def __init__(self, folder: Path, source: Source) -> None:
        super().__init__(folder, source)
        tensors = read_weights(folder / DEPLOYED)
        layouts = json.loads((folder / WEIGHTS).read_text())
        cache: dict[tuple[str, str], np.ndarray] = {}  # one array of what the graphs share
        self.weights = {name: weight_arrays(layouts[name], tensors, cache) for name in (ENCODER, STEP)}

    def _session(self, name: str, threads: int):
        return cpu_session(self.folder / name, threads, self.weights[name])


class OnnxNBits(Onnx):
    name = "onnx-nbits"

    def check(self, source: Source) -> None:
        super().check(source)
        for name, tensor in packed_weights(source, self.name, "onnx").items():
            kernel_weight(name, tensor)

    def build(self, source: Source, folder: Path) -> None:
        atomic_write(folder / DEPLOYED, source.checkpoint.deployed_path.read_bytes())
        tensors = read_weights(folder / DEPLOYED)
        export(source.model, folder)
        layouts: dict[str, dict] = {}
        converted: set[str] = set()
        cache: dict[tuple[str, str], np.ndarray] = {}  # one expansion of each weight for both graphs and the check
        for name in (ENCODER, STEP):
            layouts[name], done = rewrite(folder / name, tensors, cache)
            converted |= done
        missing = sorted(name for name, t in tensors.items() if isinstance(t, PackedTensor) and name not in converted)
        if missing:
            raise VariantError(f"variant {self.name}: no MatMul in the exported graphs multiplies by {', '.join(missing[:3])}")
        atomic_write(folder / WEIGHTS, json.dumps(layouts, separators=(",", ":")))
        # the step graph as it is loaded, against the packed model's own logits
        session = cpu_session(folder / STEP, 1, weight_arrays(layouts[STEP], tensors, cache))
        check_step_graph(source.model, session, MAX_LOGIT_ERROR)

    def load(self, folder: Path, source: Source) -> Translator:
        return NBitsTranslator(folder, source)
