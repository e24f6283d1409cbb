"""Quantizers, config validation and layer swapping by scope."""

from __future__ import annotations

import pytest
import torch

from fedq.model.transformer import ModelConfig, Transformer
from fedq.quant import (
    ActQuantizer,
    QuantConfigError,
    QuantLinear,
    QuantTiedEmbedding,
    describe_quantization,
    make_weight_quantizer,
    quantize_model,
    quantized_modules,
    resolve_method,
    validate_quant_config,
    with_resolved_method,
)
from fedq.quant.settings import QuantConfig

SHAPE = ModelConfig(d_model=32, n_heads=4, ffn_dim=64, enc_layers=2, dec_layers=2, dropout=0.1, max_positions=256)
VOCAB = 50


def gaussian(rows: int = 64, cols: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05


def distinct_per_row(w: torch.Tensor) -> list[int]:
    return [len(torch.unique(row)) for row in w]


@pytest.mark.parametrize("method", ["lsq", "seq", "maxabs", "percentile"])
@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_uniform_levels_and_codes(method: str, bits: int) -> None:
    w = gaussian()
    quantizer = make_weight_quantizer(QuantConfig(bits=bits, method=method), w)
    q = quantizer(w)
    assert max(distinct_per_row(q)) <= 2**bits
    codes, scales = quantizer.codes_and_scales(w)
    assert codes.dtype == torch.int8 and scales.dtype == torch.float16 and scales.shape == (64,)
    assert codes.min() >= -(2 ** (bits - 1)) and codes.max() <= 2 ** (bits - 1) - 1
    assert torch.equal(q, quantizer.dequantize(codes, scales))  # same floats, not just close
    max_error = {8: 0.01, 4: 0.15, 3: 0.35, 2: 0.9}[bits]  # mean |q - w| relative to mean |w|
    assert (q - w).abs().mean() < w.abs().mean() * max_error


def test_two_bit_lsq_uses_all_four_levels() -> None:
    w = gaussian()
    counts = distinct_per_row(make_weight_quantizer(QuantConfig(bits=2, method="lsq"), w)(w))
    assert min(counts) >= 3 and sum(counts) / len(counts) >= 3.8


def test_seq_levels_are_balanced_without_zero() -> None:
    w = gaussian()
    quantizer = make_weight_quantizer(QuantConfig(bits=2, method="seq"), w)
    q = quantizer(w)
    step = quantizer.scale(w)
    assert distinct_per_row(q) == [4] * 64
    assert all(torch.equal(torch.unique(row), torch.tensor([-1.5, -0.5, 0.5, 1.5])) for row in (q / step).detach())
    assert (q != 0).all()
    codes, _ = quantizer.codes_and_scales(w)
    counts = torch.bincount(codes.flatten().long() + 2, minlength=4)
    assert counts.min() > 0.12 * codes.numel()  # every level in real use, not a lone outlier level


def test_seq_starts_from_a_lower_error_than_lsq() -> None:
    w = gaussian()
    errors = {m: (make_weight_quantizer(QuantConfig(bits=2, method=m), w)(w) - w).pow(2).mean() for m in ("lsq", "seq")}
    assert errors["seq"] < 0.7 * errors["lsq"]


def test_percentile_clips_outliers() -> None:
    w = gaussian()
    w[:, 0] = 10.0
    cfg = QuantConfig(bits=4, method="percentile", percentile=99.0)
    q = make_weight_quantizer(cfg, w)(w)
    maxabs = make_weight_quantizer(QuantConfig(bits=4, method="maxabs"), w)(w)
    assert q[:, 0].max() < 1.0  # the outlier is clipped ...
    assert (q[:, 1:] - w[:, 1:]).abs().mean() < (maxabs[:, 1:] - w[:, 1:]).abs().mean() / 5  # ... the rest gains


def test_binary_has_exactly_two_values_per_row() -> None:
    w = gaussian()
    w[0, :5] = 0.0  # sign(0) counts as +
    quantizer = make_weight_quantizer(QuantConfig(bits=1), w)
    assert quantizer.method == "binary"
    q = quantizer(w)
    assert distinct_per_row(q) == [2] * 64
    assert torch.equal(q[0, :5], q[0, :5].abs())
    alpha = q.abs().amax(dim=1)
    assert torch.equal(alpha, w.abs().mean(dim=1).half().float())
    assert torch.equal(q, quantizer.dequantize(*quantizer.codes_and_scales(w)))


def test_ternary_three_levels_and_reported_bits() -> None:
    w = gaussian()
    quantizer = make_weight_quantizer(QuantConfig(bits=2, method="ternary"), w)
    q = quantizer(w)
    assert distinct_per_row(q) == [3] * 64
    assert abs(quantizer.bits_per_weight - 1.585) < 1e-3 and quantizer.bits == 2
    assert torch.equal(q, quantizer.dequantize(*quantizer.codes_and_scales(w)))


@pytest.mark.parametrize("method,bits", [("lsq", 2), ("seq", 2), ("maxabs", 4), ("percentile", 3), ("binary", 1), ("ternary", 2)])
def test_gradients_reach_latent_weights(method: str, bits: int) -> None:
    w = gaussian().requires_grad_()
    quantizer = make_weight_quantizer(QuantConfig(bits=bits, method=method), w)
    target = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    (quantizer(w) * target).sum().backward()
    assert w.grad is not None and (w.grad != 0).float().mean() > 0.8  # clipped weights get none
    if method in ("lsq", "seq"):
        assert quantizer.step.grad is not None and (quantizer.step.grad != 0).all()


def test_binary_ste_is_clipped() -> None:
    w = gaussian().requires_grad_()
    with torch.no_grad():
        w[0, 0] = 2.0
    quantizer = make_weight_quantizer(QuantConfig(bits=1, method="binary"), w)
    quantizer(w).sum().backward()
    assert w.grad[0, 0] == 0 and w.grad[0, 1] == 1


def test_act_quantizer_levels_and_gradient() -> None:
    x = torch.randn(4, 10, 32, requires_grad=True)
    q = ActQuantizer(4)(x)
    assert len(torch.unique(q)) <= 15
    scale = (x.abs().max() / 7).half().float()
    assert torch.equal(q, torch.round(x.detach() / scale).clamp(-7, 7) * scale)
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"bits": 3, "method": "binary"}, "binary needs quant.bits=1"),
        ({"bits": 0}, "quant.bits=0 is not supported"),
        ({"bits": 16}, "quant.bits=16 is not supported"),
        ({"bits": 5, "method": "maxabs"}, "allowed: lsq/seq/maxabs/percentile 8, 4, 3, 2"),
        ({"bits": 1, "method": "maxabs"}, "set quant.method=binary"),
        ({"bits": 3, "method": "ternary"}, "set quant.bits=2"),
        ({"bits": 4, "scope": "attn"}, "quant.scope='attn' is unknown"),
        ({"bits": 4, "method": "kmeans"}, "quant.method='kmeans' is unknown; choose one of auto, lsq, seq"),
        ({"bits": 4, "act_bits": 1}, "quant.act_bits=1"),
        ({"bits": 4, "method": "percentile", "percentile": 150.0}, "quant.percentile=150.0"),
    ],
)
def test_bad_configs_raise_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(QuantConfigError, match=message) as info:
        validate_quant_config(QuantConfig(**kwargs))
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)


def test_good_configs_and_method_resolution() -> None:
    for cfg in [QuantConfig(), QuantConfig(bits=32, method="binary"), QuantConfig(bits=2, method="ternary", act_bits=8)]:
        validate_quant_config(cfg)
    assert [resolve_method(QuantConfig(bits=b)) for b in (1, 2, 3, 4, 8)] == ["binary", "seq", "lsq", "lsq", "lsq"]
    assert resolve_method(QuantConfig(bits=1, method="lsq")) == "binary"
    assert resolve_method(QuantConfig(bits=2, method="lsq")) == "lsq"
    assert make_weight_quantizer(QuantConfig(bits=2), gaussian()).method == "seq"
    assert with_resolved_method(QuantConfig(bits=2)) == QuantConfig(bits=2, method="seq")
    assert with_resolved_method(QuantConfig(bits=1)).method == "binary"
    assert with_resolved_method(QuantConfig(bits=32)).method == "auto"  # nothing quantized, nothing to name


@pytest.mark.parametrize(
    "scope,linears,embedding", [("attention", 24, False), ("linear", 32, False), ("attention+embedding", 24, True), ("all", 32, True)]
)
def test_scope_selects_layers_and_keeps_parameters(scope: str, linears: int, embedding: bool) -> None:
    model = Transformer(SHAPE, VOCAB, 0)
    before = {name: p for name, p in model.named_parameters()}
    quantize_model(model, QuantConfig(bits=4, scope=scope))
    layers = quantized_modules(model)
    assert sum(isinstance(m, QuantLinear) for m in layers.values()) == linears
    assert isinstance(model.embed, QuantTiedEmbedding) == embedding
    if scope == "attention":
        assert all("attn." in name for name in layers)
    after = dict(model.named_parameters())
    assert all(after[name] is p for name, p in before.items())  # same tensors, optimizer-safe
    assert set(after) - set(before) == {f"{name}.weight_quantizer.step" for name in layers}
    assert describe_quantization(model).startswith(f"4-bit lsq on {linears} of 32 linear layers")


def test_state_dict_round_trip_and_fp32_untouched() -> None:
    cfg = QuantConfig(bits=2, method="lsq", scope="all", act_bits=8)
    trained = quantize_model(Transformer(SHAPE, VOCAB, 0), cfg)
    with torch.no_grad():
        trained.encoder_layers[0].self_attn.q_proj.weight_quantizer.step.mul_(1.5)
    fresh = quantize_model(Transformer(SHAPE, VOCAB, 0), cfg)
    fresh.load_state_dict(trained.state_dict(), strict=True)
    src, tgt = torch.randint(1, 50, (2, 7)), torch.randint(1, 50, (2, 5))
    trained.eval(), fresh.eval()
    assert torch.equal(trained(src, tgt), fresh(src, tgt))
    assert describe_quantization(fresh).endswith("embedding 2-bit lsq, activations 8-bit")

    plain = Transformer(SHAPE, VOCAB, 0)
    assert quantize_model(plain, QuantConfig(bits=32)) is plain and not quantized_modules(plain)
    assert describe_quantization(plain) == "fp32 (no quantization)"
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(trained, cfg)


def test_qat_training_step_reduces_loss() -> None:
    torch.manual_seed(0)
    model = quantize_model(Transformer(SHAPE, VOCAB, 0), QuantConfig(bits=2, scope="all"))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    src, tgt = torch.randint(1, 50, (8, 9)), torch.randint(1, 50, (8, 9))
    losses = []
    for _ in range(30):
        logits = model(src, tgt[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), tgt[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
