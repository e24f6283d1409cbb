"""The deployed model file: packed low-bit codes + fp16 scales, everything else fp32.

Layout::

    b"FEDQPK02"                 8 bytes of magic
    header length               uint64, little-endian
    checksum                    32 bytes: SHA-256 of header + payload
    header                      UTF-8 JSON (format_version, shape, quant, metadata, tensors)
    payload                     the tensors' bytes; table offsets count from here

A file whose checksum does not match (a flipped bit, a truncated copy) is
refused with one line; it is never scored.

A quantized weight is stored as its integer codes packed at the quantizer's bit
width (binary 1, ternary 2) plus one fp16 scale per output channel. Biases,
layer norms and unquantized weights stay fp32: they are small, and the size
report counts them separately. Loading dequantizes the codes into exactly the
floats the fake-quantized model used, so the logits match. A model with
adapters (``fedq.model.adapters``) stores them fp32 beside the codes, with
their scale in the header; loading merges them into the dequantized weights.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedq.errors import FedqError
from fedq.files import atomic_write
from fedq.model.adapters import A_NAME, B_NAME, adapter_scale, merge_adapters
from fedq.model.transformer import Transformer
from fedq.quant.layers import ActQuantLinear
from fedq.quant.packing import codes_nbytes, pack_codes, unpack_codes
from fedq.quant.quantizers import QUANTIZERS, ActQuantizer
from fedq.quant.swap import quant_summary, quantized_modules

MAGIC = b"FEDQPK02"
FORMAT_VERSION = 2
_LENGTH = struct.Struct("<Q")
_CHECKSUM_BYTES = 32


class DeployedFormatError(FedqError):
    """A deployed file that is not one, is damaged, or does not match its header."""


@dataclass
class DeployedSize:
    """Bytes of a deployed file, by part. ``fp32_bytes``: all its tensors at fp32."""

    file_bytes: int
    fp32_bytes: int
    quantized_fp32_bytes: int  # the quantized weights, were they fp32
    quantized_packed_bytes: int  # their packed codes + fp16 scales
    other_bytes: int  # fp32 tensors: biases, norms, unquantized weights
    header_bytes: int

    def describe(self) -> str:
        mb = 1e6
        return (
            f"{self.file_bytes / mb:.3f} MB file ({self.fp32_bytes / self.file_bytes:.1f}x below fp32): "
            f"quantized weights {self.quantized_packed_bytes / mb:.3f} MB packed codes+scales "
            f"(fp32 {self.quantized_fp32_bytes / mb:.3f} MB), other tensors {self.other_bytes / mb:.3f} MB fp32, "
            f"header {self.header_bytes / 1e3:.1f} kB"
        )


def _fp32_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain Transformer's state dict: latent weights, no quantizer parameters."""
    return {key: value for key, value in model.state_dict().items() if "_quantizer." not in key}


def save_deployed(model: Transformer, path: str | Path, metadata: dict) -> DeployedSize:
    """Write ``model`` in deployed form to ``path`` (atomically) and report its size.

    ``metadata`` (JSON-serialisable: tokenizer fingerprint, config, ...) is stored
    as is and returned by load_deployed.
    """
    data, size = pack_deployed(model, metadata)
    atomic_write(path, data)
    return size


def pack_deployed(model: Transformer, metadata: dict) -> tuple[bytes, DeployedSize]:
    """The bytes of ``model``'s deployed file, and their size report (what :func:`save_deployed` writes)."""
    packed_layers = {f"{name}.weight": module.weight_quantizer for name, module in quantized_modules(model).items()}
    table, chunks, offset = [], [], 0
    quantized_fp32 = quantized_packed = other = 0

    def add(data: bytes) -> list[int]:
        nonlocal offset
        chunks.append(data)
        offset += len(data)
        return [offset - len(data), len(data)]

    for name, tensor in _fp32_weights(model).items():
        tensor = tensor.detach()
        entry = {"name": name, "shape": list(tensor.shape)}
        quantizer: Any = packed_layers.get(name)
        if quantizer is None:
            data = tensor.to("cpu", torch.float32).contiguous().numpy().tobytes()
            entry.update(kind="fp32", data=add(data))
            other += len(data)
        else:
            codes, scales = quantizer.codes_and_scales(tensor)
            codes_bytes = pack_codes(codes.cpu().numpy(), quantizer.bits).tobytes()
            scales_bytes = scales.cpu().numpy().astype("<f2").tobytes()
            codes_span, scales_span = add(codes_bytes), add(scales_bytes)
            entry.update(kind="packed", method=quantizer.method, bits=quantizer.bits, codes=codes_span, scales=scales_span)
            quantized_fp32 += 4 * tensor.numel()
            quantized_packed += len(codes_bytes) + len(scales_bytes)
        table.append(entry)

    header = {
        "format_version": FORMAT_VERSION,
        "shape": model.shape_dict(),
        "quant": quant_summary(model),
        "metadata": metadata,
        "tensors": table,
    }
    if (scale := adapter_scale(model)) is not None:
        header["adapter_scale"] = scale  # the fp32 adapters beside the codes, merged at load
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    body = b"".join([header_bytes, *chunks])
    data = b"".join([MAGIC, _LENGTH.pack(len(header_bytes)), hashlib.sha256(body).digest(), body])
    return data, DeployedSize(
        file_bytes=len(data),
        fp32_bytes=quantized_fp32 + other,
        quantized_fp32_bytes=quantized_fp32,
        quantized_packed_bytes=quantized_packed,
        other_bytes=other,
        header_bytes=len(MAGIC) + _LENGTH.size + _CHECKSUM_BYTES + len(header_bytes),
    )


def _read_header(raw: bytes, path: Path) -> tuple[dict, memoryview]:
    if raw[: len(MAGIC)] != MAGIC:
        if raw[: len(MAGIC) - 2] == MAGIC[:-2]:
            raise DeployedFormatError(f"{path} is a deployed file of an older fedq format "
                                      f"({raw[:len(MAGIC)].decode(errors='replace')}); pack it again")
        raise DeployedFormatError(f"{path} is not a fedq deployed model file (wrong magic bytes)")
    start = len(MAGIC) + _LENGTH.size + _CHECKSUM_BYTES
    if len(raw) < start:
        raise DeployedFormatError(f"{path} is truncated (no header)")
    (length,) = _LENGTH.unpack_from(raw, len(MAGIC))
    checksum = raw[len(MAGIC) + _LENGTH.size : start]
    if len(raw) < start + length:
        raise DeployedFormatError(f"{path} is truncated (header of {length} bytes incomplete)")
    if hashlib.sha256(memoryview(raw)[start:]).digest() != checksum:
        raise DeployedFormatError(f"{path} is damaged: its SHA-256 checksum does not match its contents")
    try:
        header = json.loads(raw[start : start + length].decode("utf-8"))
    except ValueError:
        raise DeployedFormatError(f"{path} has a corrupt header") from None
    if not isinstance(header, dict):
        raise DeployedFormatError(f"{path} has a corrupt header")
    if header.get("format_version") != FORMAT_VERSION:
        raise DeployedFormatError(
            f"{path} has format version {header.get('format_version')}; this fedq reads version {FORMAT_VERSION}"
        )
    return header, memoryview(raw)[start + length :]


def _slice(payload: memoryview, span: list[int], name: str, path: Path) -> memoryview:
    begin, length = span
    if begin + length > len(payload):
        raise DeployedFormatError(f"{path} is truncated (tensor {name} runs past the end of the file)")
    return payload[begin : begin + length]


@dataclass
class PackedTensor:
    """A quantized weight as its file stores it: int8 codes ``[out, in]`` and fp16 scales ``[out]``."""

    method: str
    bits: int
    codes: np.ndarray
    scales: np.ndarray

    def dequantize(self) -> torch.Tensor:
        """Exactly the floats the fake-quantized model used."""
        return QUANTIZERS[self.method].dequantize(torch.from_numpy(self.codes), torch.from_numpy(self.scales))


def _decode(entry: dict, payload: memoryview, path: Path) -> np.ndarray | PackedTensor:
    name, shape = entry["name"], tuple(entry["shape"])
    count = int(np.prod(shape))
    if entry["kind"] == "fp32":
        data = _slice(payload, entry["data"], name, path)
        if len(data) != 4 * count:
            raise DeployedFormatError(f"{path}: tensor {name} has {len(data)} bytes, its shape {shape} needs {4 * count}")
        return np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(shape)
    if entry["kind"] != "packed" or entry.get("method") not in QUANTIZERS:
        raise DeployedFormatError(f"{path}: tensor {name} has unknown kind {entry['kind']!r}/{entry.get('method')!r}")
    codes_data = _slice(payload, entry["codes"], name, path)
    scales_data = _slice(payload, entry["scales"], name, path)
    if len(codes_data) != codes_nbytes(count, entry["bits"]) or len(scales_data) != 2 * shape[0]:
        raise DeployedFormatError(f"{path}: tensor {name} has the wrong number of bytes for its shape {shape}")
    codes = unpack_codes(np.frombuffer(codes_data, dtype=np.uint8), entry["bits"], count).reshape(shape)
    scales = np.frombuffer(scales_data, dtype="<f2").astype(np.float16)
    return PackedTensor(entry["method"], entry["bits"], codes, scales)


def read_deployed_tensors(raw: bytes, path: str | Path = "<memory>") -> tuple[dict, dict[str, np.ndarray | PackedTensor]]:
    """A deployed file's header and its tensors as stored: fp32 arrays, and codes + scales of quantized weights
    (for engines that run the codes themselves, ``fedq.deploy.onnx_nbits``)."""
    path = Path(path)
    header, payload = _read_header(raw, path)
    try:
        return header, {entry["name"]: _decode(entry, payload, path) for entry in header["tensors"]}
    except (KeyError, TypeError) as err:
        raise DeployedFormatError(f"{path} has an incomplete header ({type(err).__name__}: {err})") from None


def load_deployed(path: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, dict]:
    """Rebuild the model from a deployed file: (eval-mode Transformer, the saved metadata).

    Weights are the dequantized codes·scales; if activations were quantized, the
    formerly quantized linear layers fake-quantize their inputs the same way.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DeployedFormatError(f"cannot read deployed file {path}: {err.strerror}") from None
    return load_deployed_bytes(raw, path, device)


def load_deployed_bytes(
    raw: bytes, path: str | Path = "<memory>", device: str | torch.device = "cpu"
) -> tuple[Transformer, dict]:
    """:func:`load_deployed` of a file's bytes (``path`` names them in errors)."""
    path = Path(path)
    header, tensors = read_deployed_tensors(raw, path)
    try:
        model = Transformer.from_shape_dict(header["shape"])
        table = header["tensors"]
        state = {name: t.dequantize() if isinstance(t, PackedTensor) else torch.from_numpy(t) for name, t in tensors.items()}
        adapters = {name: state.pop(name) for name in list(state) if name.endswith((f".{A_NAME}", f".{B_NAME}"))}
        model.load_state_dict(state, strict=True)
        if adapters:
            merge_adapters(model, adapters, float(header["adapter_scale"]))
    except (KeyError, TypeError) as err:
        raise DeployedFormatError(f"{path} has an incomplete header ({type(err).__name__}: {err})") from None
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[-1].strip()
        raise DeployedFormatError(f"{path}: tensors do not match the model shape in its header ({detail})") from None
    act_bits = (header.get("quant") or {}).get("act_bits")
    if act_bits is not None:
        for entry in table:
            layer_name = entry["name"].removesuffix(".weight")
            if entry["kind"] == "packed" and isinstance(layer := model.get_submodule(layer_name), nn.Linear):
                parent, _, child = layer_name.rpartition(".")
                setattr(model.get_submodule(parent), child, ActQuantLinear(layer, ActQuantizer(act_bits)))
    return model.to(device).eval(), header.get("metadata", {})
