"""The packed deployed file: same logits as the fake-quantized model, honest sizes, clear errors."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fedq.model.transformer import ModelConfig, Transformer
from fedq.quant import (
    ActQuantLinear,
    DeployedFormatError,
    load_deployed,
    quantize_model,
    save_deployed,
)
from fedq.quant.settings import QuantConfig

SMALL = ModelConfig(d_model=32, n_heads=4, ffn_dim=64, enc_layers=2, dec_layers=2, dropout=0.1, max_positions=256)
VOCAB = 50


def trained_model(shape: ModelConfig, cfg: QuantConfig, steps: int = 3, vocab: int = VOCAB) -> Transformer:
    """A quantized model after a few Adam steps, so weights and LSQ steps moved off their init."""
    torch.manual_seed(0)
    model = quantize_model(Transformer(shape, vocab, 0), cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    src, tgt = torch.randint(1, vocab, (4, 9)), torch.randint(1, vocab, (4, 8))
    for _ in range(steps):
        loss = model(src, tgt).logsumexp(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize(
    "cfg",
    [
        QuantConfig(bits=1, method="binary", scope="all"),
        QuantConfig(bits=2, method="lsq", scope="attention+embedding"),
        QuantConfig(bits=2, method="seq", scope="all"),
        QuantConfig(bits=4, method="lsq", scope="linear", act_bits=8),
        QuantConfig(bits=2, method="ternary", scope="all", act_bits=4),
        QuantConfig(bits=8, method="maxabs", scope="attention"),
        QuantConfig(bits=3, method="percentile", scope="linear"),
        QuantConfig(bits=32),
    ],
    ids=lambda cfg: f"{cfg.bits}-{cfg.method}-{cfg.scope}-act{cfg.act_bits}",
)
def test_deployed_logits_equal_fake_quant_logits(cfg: QuantConfig, tmp_path: Path) -> None:
    model = trained_model(SMALL, cfg)
    path = tmp_path / "model.fedq"
    save_deployed(model, path, {"tokenizer_fingerprint": "abc123", "quant": {"bits": cfg.bits}})
    loaded, metadata = load_deployed(path)
    assert metadata == {"tokenizer_fingerprint": "abc123", "quant": {"bits": cfg.bits}}
    assert not loaded.training and type(loaded) is Transformer
    assert any(isinstance(m, ActQuantLinear) for m in loaded.modules()) == (cfg.act_bits is not None)
    src = torch.randint(1, 50, (3, 11))
    src[0, 8:] = model.pad_id
    tgt = torch.randint(1, 50, (3, 6))
    with torch.no_grad():
        expected, actual = model(src, tgt), loaded(src, tgt)
    assert (actual - expected).abs().max() <= 1e-5
    bias = model.encoder_layers[0].ffn.fc1.bias
    assert bias.abs().sum() > 0 and torch.equal(loaded.encoder_layers[0].ffn.fc1.bias, bias)


@pytest.mark.parametrize(
    "cfg,d_model",
    [
        (QuantConfig(bits=8, scope="all"), 128),
        (QuantConfig(bits=4, scope="all"), 128),
        (QuantConfig(bits=2, scope="all"), 256),
        (QuantConfig(bits=2, method="seq", scope="all"), 256),
        (QuantConfig(bits=2, method="ternary", scope="all"), 256),
        (QuantConfig(bits=1, scope="all"), 512),
    ],
    ids=lambda x: str(x) if isinstance(x, int) else f"{x.bits}-{x.method}",
)
def test_packed_sizes_are_b_over_32(cfg: QuantConfig, d_model: int, tmp_path: Path) -> None:
    shape = ModelConfig(d_model=d_model, n_heads=4, ffn_dim=2 * d_model, enc_layers=1, dec_layers=1, dropout=0.1, max_positions=256)
    model = quantize_model(Transformer(shape, 500, 0), cfg)
    size = save_deployed(model, tmp_path / "m.fedq", {})
    n_quantized = sum(m.weight.numel() for name, m in model.named_modules() if hasattr(m, "weight_quantizer"))
    assert size.quantized_fp32_bytes == 4 * n_quantized
    assert size.quantized_packed_bytes <= cfg.bits / 32 * 1.05 * size.quantized_fp32_bytes
    n_all = sum(t.numel() for k, t in model.state_dict().items() if "_quantizer." not in k)
    assert size.other_bytes == 4 * (n_all - n_quantized)  # biases and norms kept fp32
    assert size.fp32_bytes == 4 * n_all
    assert size.file_bytes == size.header_bytes + size.quantized_packed_bytes + size.other_bytes
    assert "x below fp32" in size.describe()


def test_fp32_model_round_trips_exactly(tmp_path: Path) -> None:
    model = Transformer(SMALL, VOCAB, 0).eval()
    size = save_deployed(model, tmp_path / "fp32.fedq", {})
    assert size.quantized_packed_bytes == 0 and size.other_bytes == size.fp32_bytes
    loaded, _ = load_deployed(tmp_path / "fp32.fedq", device=torch.device("cpu"))
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def _rewrite_header(path: Path, change) -> None:
    """Change the header and write a consistent file (length and checksum updated)."""
    raw = path.read_bytes()
    (length,) = struct.unpack_from("<Q", raw, 8)
    header = json.loads(raw[48 : 48 + length])
    change(header)
    body = json.dumps(header).encode() + raw[48 + length :]
    path.write_bytes(raw[:8] + struct.pack("<Q", len(body) - len(raw) + 48 + length) + hashlib.sha256(body).digest() + body)


def test_damaged_files_raise_deployed_format_error(tmp_path: Path) -> None:
    path = tmp_path / "model.fedq"
    save_deployed(trained_model(SMALL, QuantConfig(bits=2, scope="all"), steps=0), path, {})
    good = path.read_bytes()

    def expect(message: str) -> None:
        with pytest.raises(DeployedFormatError, match=message) as info:
            load_deployed(path)
        assert "\n" not in str(info.value)
        path.write_bytes(good)

    path.write_bytes(b"NOTFEDQ!" + good[8:])
    expect("wrong magic")
    path.write_bytes(good[: len(good) - 100])
    expect("damaged: its SHA-256 checksum")
    path.write_bytes(good[:20])
    expect("truncated")
    flipped = bytearray(good)
    for position in np.random.default_rng(0).choice(np.arange(48, len(good)), size=2000, replace=False):
        flipped[position] ^= 1 << int(position % 8)
    path.write_bytes(bytes(flipped))
    expect("damaged: its SHA-256 checksum")
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # one bit of one weight
    expect("damaged")
    path.write_bytes(b"FEDQPK01" + good[8:])
    expect("older fedq format")
    _rewrite_header(path, lambda h: h.update(format_version=99))
    expect("format version 99")
    _rewrite_header(path, lambda h: h["shape"].update(d_model=64, ffn_dim=128))
    expect("do not match the model shape")
    _rewrite_header(path, lambda h: h["shape"].update(colour="red"))
    expect("incomplete header")
    with pytest.raises(DeployedFormatError, match="cannot read"):
        load_deployed(tmp_path / "missing.fedq")
