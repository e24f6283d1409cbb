"""Deployment variants: each loads from its own files and translates the same sentences as fp32."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedq.checkpoint import read_checkpoint
from fedq.config import compose_config, validate_config
from fedq.deploy.__main__ import deploy
from fedq.deploy.factorized import FactorizedLinear, choose_rank, factorize
from fedq.deploy.fp32 import Fp32
from fedq.deploy.memory import measurable as memory_measurable
from fedq.deploy.memory import measure
from fedq.deploy.registry import make_variant
from fedq.deploy.settings import DeployConfig
from fedq.deploy.variant import Source, TorchTranslator
from fedq.errors import FedqError
from fedq.model.decoding import DecodeConfig
from fedq.train import train

EXACT = ("packed", "onnx", "ct2")  # the fp32 weights, another engine: the same greedy outputs
LOSSY = ("int8", "int8-torchao", "lowrank", "lowrank-int8", "onnx-int8", "ct2-int8")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("deploy")
    cache = f"data.cache_dir={folder / 'cache'}"
    overrides = ["data.demo_train_size=3000", "data.demo_eval_size=30", "train.max_steps=300", "train.log_every=100",
                 "device=cpu", cache]
    train(compose_config(overrides), folder / "run")
    return folder / "run" / "checkpoint", [cache]


def test_every_variant_loads_from_its_files_and_translates_like_fp32(checkpoint):
    ckpt, extra = checkpoint
    variants = ["fp32", *EXACT, *LOSSY]
    cfg = compose_config(extra + [f"ckpt={ckpt}", f"deploy.variants=[{','.join(variants)}]", "deploy.latency_sentences=2",
                                  "deploy.rank_ratio=0.8", "deploy.finetune_steps=30", "device=cpu", "deploy.memory=false"])
    rows = {row["variant"]: row for row in deploy(cfg)}
    assert set(rows) == set(variants)
    assert rows["fp32"]["test_bleu"] > 20  # the model learned something, so agreement means something
    for name in EXACT:
        assert rows[name]["identical_pct"] >= 95, name
    for name in LOSSY:  # reported, not required to agree: here only that they still translate
        assert rows[name]["test_bleu"] > 0.5 * rows["fp32"]["test_bleu"], name
    deploy_dir = ckpt / "deploy"  # inside the checkpoint: two checkpoints of one folder keep their own tables
    for name, row in rows.items():  # a file size is the bytes on disk
        assert row["file_bytes"] == sum(p.stat().st_size for p in (deploy_dir / name).rglob("*") if p.is_file())
    assert rows["int8"]["file_bytes"] < 0.5 * rows["fp32"]["file_bytes"]
    assert rows["ct2-int8"]["file_bytes"] < 0.5 * rows["ct2"]["file_bytes"]
    assert rows["lowrank"]["file_bytes"] < rows["fp32"]["file_bytes"]
    table = (deploy_dir / "table.md").read_text()
    assert table.startswith("| variant | file MB") and "| ct2-int8 |" in table and "peak memory" not in table
    assert "sentences/s at batch 32 (2 threads)" in table  # deploy.batch_size and the machine's cores, as measured
    assert len(json.loads((deploy_dir / "table.json").read_text())) == len(variants) + 1


def test_the_onnx_decoder_step_matches_pytorch_logits_and_a_wrong_graph_is_refused(checkpoint, tmp_path):
    from fedq.deploy.onnx_runtime import STEP, check_step_graph, cpu_session, export
    from fedq.deploy.variant import VariantError
    from fedq.quant.deployed import load_deployed

    model, _ = load_deployed(checkpoint[0] / "model.fedq")
    export(model, tmp_path)
    assert check_step_graph(model, cpu_session(tmp_path / STEP, 1), 1e-3) < 1e-4  # caches of length 0, 1 and 4
    other, _ = load_deployed(checkpoint[0] / "model.fedq")
    with torch.no_grad():
        other.decoder_layers[0].self_attn.v_proj.weight.mul_(1.5)  # a graph that is not this model's
    with pytest.raises(VariantError, match="differs from PyTorch"):
        check_step_graph(other, cpu_session(tmp_path / STEP, 1), 1e-3)


def test_svd_at_full_rank_reproduces_the_layer():
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 32)
    u, s, vh = torch.linalg.svd(linear.weight.detach().double(), full_matrices=False)
    factored = FactorizedLinear(48, 32, rank=32, bias=True)
    with torch.no_grad():
        factored.up.weight.copy_((u * s).float())
        factored.down.weight.copy_(vh.float())
        factored.up.bias.copy_(linear.bias)
    x = torch.randn(5, 48)
    torch.testing.assert_close(factored(x), linear(x), atol=1e-5, rtol=1e-5)
    assert choose_rank(linear.weight, s, rank_ratio=0.5, energy=0.0) == int(0.5 * 32 * 48 / 80)
    assert choose_rank(linear.weight, s, rank_ratio=0.5, energy=0.9999) is None  # near full rank: would not be smaller
    assert choose_rank(linear.weight, s, rank_ratio=0.5, energy=0.3) < choose_rank(linear.weight, s, 0.5, 0.6)


def test_factorizing_half_the_parameters_halves_them(checkpoint):
    from fedq.quant.deployed import load_deployed

    model, _ = load_deployed(checkpoint[0] / "model.fedq")
    linear_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    ranks = factorize(model, rank_ratio=0.5, energy=0.0)
    factored = sum(m.up.weight.numel() + m.down.weight.numel() for m in model.modules() if isinstance(m, FactorizedLinear))
    assert ranks and factored <= 0.5 * linear_params * 1.02


def test_a_missing_engine_is_one_note_and_the_other_variants_go_on(checkpoint, monkeypatch):
    ckpt, extra = checkpoint
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ctranslate2" else real(name, *a))
    rows = deploy(compose_config(extra + [f"ckpt={ckpt}", "deploy.variants=[fp32,ct2]", "deploy.latency_sentences=2",
                                          "deploy.test_sentences=5", "device=cpu", "deploy.memory=false"]))
    assert [row["variant"] for row in rows] == ["fp32"]
    notes = (ckpt / "deploy" / "table.md").read_text()
    assert 'ct2: variant ct2 needs ctranslate2, which is not installed: pip install -e ".[deploy]"' in notes
    assert not (ckpt / "deploy" / "ct2").exists()  # nothing half-written


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["deploy.variants=[fp32,tensorrt]"], "deploy.variants entry='tensorrt' is unknown"),
        (["deploy.rank_ratio=1.5"], "deploy.rank_ratio=1.5"),
        (["deploy.energy=1.0"], "deploy.energy"),
    ],
)
def test_bad_deploy_settings_are_one_line(overrides, message):
    with pytest.raises(FedqError, match=message):
        validate_config(compose_config(overrides))


def test_deploy_settings_act_or_are_refused(checkpoint, tmp_path):
    ckpt, extra = checkpoint
    base = extra + [f"ckpt={ckpt}", "deploy.variants=[fp32]", "deploy.latency_sentences=2", "deploy.test_sentences=4"]
    with pytest.raises(FedqError, match="decode.beam=4: fedq.deploy measures greedy decoding"):
        deploy(compose_config(base + ["decode.beam=4"]))
    with pytest.raises(FedqError, match="resume= is not used by fedq.deploy"):
        deploy(compose_config(base + [f"resume={tmp_path}"]))
    rows = deploy(compose_config(base + ["threads=1", "deploy.batch_size=4", "deploy.variants=[fp32,packed]",
                                         f"deploy.out_dir={tmp_path / 'elsewhere'}"]))
    table = (tmp_path / "elsewhere" / "table.md").read_text()
    assert "sentences/s at batch 4 (1 thread)" in table
    for row in rows:  # deploy.memory (on by default): each variant's peak, measured in a process of its own
        assert 0 < row["above_floor_mb"] < row["peak_mb"], row
        assert f"| {row['peak_mb']:.0f} ({row['above_floor_mb']:.0f}) |" in table


@pytest.mark.skipif(not memory_measurable(), reason="peak memory is read from Linux's /proc")
def test_the_memory_process_loads_and_translates_with_the_runs_settings(checkpoint, tmp_path, monkeypatch):
    ckpt, _ = checkpoint
    Fp32().build(Source(read_checkpoint(ckpt), DecodeConfig()), tmp_path)
    seen = []
    real = TorchTranslator.translate

    def spy(self, sources, batch_size, threads):
        outputs = real(self, sources, batch_size, threads)
        seen.append((batch_size, threads, outputs))
        return outputs

    monkeypatch.setattr(TorchTranslator, "translate", spy)
    result = measure(ckpt, "fp32", tmp_path, 4, 1, DeployConfig(batch_size=3), DecodeConfig(max_len_a=0, max_len_b=1))
    (batch_size, threads, outputs), = seen
    assert (batch_size, threads, len(outputs)) == (3, 1, 4)
    assert all(len(text.split()) <= 1 for text in outputs)  # decode.max_len_b=1: one piece a sentence
    assert 0 < result["above_floor_mb"] < result["peak_mb"]


@pytest.mark.parametrize("name", ["onnx", "ct2"])
def test_an_engine_variant_loads_and_translates_without_reading_the_fp32_weights(checkpoint, tmp_path, monkeypatch, name):
    ckpt, _ = checkpoint
    built = Source(read_checkpoint(ckpt), DecodeConfig())
    make_variant(name, DeployConfig()).build(built, tmp_path)
    expected = make_variant(name, DeployConfig()).load(tmp_path, built).translate(["ein hund", "zwei katzen"], 2, 1)

    def refuse(*args):
        raise AssertionError("the fp32 weights were read")

    monkeypatch.setattr("fedq.deploy.variant.load_deployed", refuse)  # what a peak-memory process must not hold
    source = Source(read_checkpoint(ckpt), DecodeConfig())
    assert make_variant(name, DeployConfig()).load(tmp_path, source).translate(["ein hund", "zwei katzen"], 2, 1) == expected


@pytest.mark.e2e
def test_deploy_without_a_checkpoint_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fedq.deploy", f"ckpt={tmp_path}/nothing", f"hydra.run.dir={tmp_path}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: no checkpoint at")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("method, bits, kernel_bits", [
    ("seq", 2, 4), ("seq", 3, 4), ("seq", 4, 8), ("lsq", 2, 4), ("lsq", 4, 4), ("lsq", 8, 8), ("maxabs", 4, 4),
    ("binary", 1, 4), ("ternary", 2, 4)])
def test_every_grid_runs_in_the_low_bit_kernel_as_trained_bit_for_bit(method, bits, kernel_bits):
    from fedq.deploy.onnx_nbits import kernel_weight
    from fedq.quant.deployed import PackedTensor
    from fedq.quant.quantizers import QUANTIZERS

    torch.manual_seed(0)
    w = torch.randn(24, 70) * 0.05  # 70 inputs: the kernel's last block is padded
    cls = QUANTIZERS[method]
    quantizer = cls(bits, w) if method in ("lsq", "seq") else cls(bits) if method == "maxabs" else cls()
    codes, scales = quantizer.codes_and_scales(w)
    kernel = kernel_weight("w", PackedTensor(method, quantizer.bits, codes.numpy(), scales.numpy()))
    assert kernel.bits == kernel_bits
    np.testing.assert_array_equal(kernel.dequantize(), quantizer(w).detach().numpy())  # the QAT weight, exactly


def test_a_grid_the_kernel_cannot_hold_is_refused_naming_it():
    from fedq.deploy.onnx_nbits import kernel_weight
    from fedq.deploy.variant import VariantError
    from fedq.quant.deployed import PackedTensor

    codes = np.array([[-128, 127]], np.int8)
    with pytest.raises(VariantError, match="8-bit seq grid needs integers -255..255"):
        kernel_weight("w", PackedTensor("seq", 8, codes, np.ones(1, np.float16)))


@pytest.fixture(scope="module")
def qat_checkpoint(tmp_path_factory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("deploy_qat")
    cache = f"data.cache_dir={folder / 'cache'}"
    overrides = ["data.demo_train_size=2000", "data.demo_eval_size=30", "train.max_steps=40", "train.log_every=100",
                 "device=cpu", "quant.bits=2", cache]
    train(compose_config(overrides), folder / "run")
    return folder / "run" / "checkpoint", [cache]


def test_onnx_nbits_runs_the_packed_codes_from_a_download_the_size_of_the_packed_file(qat_checkpoint, checkpoint):
    import onnx

    from fedq.deploy.onnx_nbits import WEIGHTS, read_weights, weight_arrays
    from fedq.deploy.onnx_runtime import STEP, check_step_graph, cpu_session
    from fedq.quant.deployed import PackedTensor, load_deployed

    ckpt, extra = qat_checkpoint
    cfg = compose_config(extra + [f"ckpt={ckpt}", "deploy.variants=[packed,onnx-nbits,ct2-codes]", "deploy.latency_sentences=1",
                                  "device=cpu", "deploy.memory=false"])
    rows = {row["variant"]: row for row in deploy(cfg)}
    assert rows["onnx-nbits"]["identical_pct"] == 100  # fp32 here is the packed model's own weights
    assert rows["ct2-codes"]["identical_pct"] >= 80  # int8 activations: close, not exact
    assert rows["onnx-nbits"]["file_bytes"] <= 1.1 * rows["packed"]["file_bytes"]
    folder = ckpt / "deploy" / "onnx-nbits"
    step = onnx.load(str(folder / STEP), load_external_data=False)
    # every weight comes from the packed file at load: the graph's initializers are external, without data
    assert step.graph.initializer and all(init.data_location == onnx.TensorProto.EXTERNAL and not init.raw_data
                                          for init in step.graph.initializer)
    assert {(a.name, a.i) for n in step.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"} == {("bits", 4)}
    # the step graph's logits with the weights expanded from the packed file are the packed model's; a flipped code
    # is caught
    model, _ = load_deployed(ckpt / "model.fedq")
    layout, tensors = json.loads((folder / WEIGHTS).read_text())[STEP], read_weights(folder / "model.fedq")
    assert check_step_graph(model, cpu_session(folder / STEP, 1, weight_arrays(layout, tensors, {})), 1e-3) < 1e-4
    weight = tensors["decoder_layers.0.self_attn.v_proj.weight"]
    assert isinstance(weight, PackedTensor)
    weight.codes[0] = -weight.codes[0] - 1  # one row mirrored: other levels of the same grid
    with pytest.raises(FedqError, match="differs from PyTorch"):
        check_step_graph(model, cpu_session(folder / STEP, 1, weight_arrays(layout, tensors, {})), 1e-3)
    # a downloaded file whose bytes changed is refused at load; an fp32 checkpoint has no codes to run
    data = bytearray((folder / "model.fedq").read_bytes())
    data[-1] ^= 1
    (folder / "model.fedq").write_bytes(bytes(data))
    with pytest.raises(FedqError, match="checksum"):
        read_weights(folder / "model.fedq")
    fp32_cfg = compose_config(checkpoint[1] + [f"ckpt={checkpoint[0]}", "deploy.variants=[onnx-nbits]", "device=cpu",
                                               "deploy.latency_sentences=1", f"deploy.out_dir={folder.parent / 'fp32'}"])
    assert [row["variant"] for row in deploy(fp32_cfg)] == ["fp32"]
    notes = json.loads((folder.parent / "fp32" / "table.json").read_text())[-1]["notes"]
    assert notes == ["onnx-nbits: variant onnx-nbits runs a QAT model's codes; this checkpoint has no quantized weights (use onnx)"]


def test_ct2_codes_gives_ctranslate2_the_trained_codes_as_its_int8_weights(qat_checkpoint):
    from fedq.checkpoint import read_checkpoint
    from fedq.deploy.ctranslate import CT2Codes, model_spec
    from fedq.deploy.variant import Source

    checkpoint = read_checkpoint(qat_checkpoint[0])
    source = Source(checkpoint, compose_config([]).decode)
    model = source.model
    exact = CT2Codes().exact_weights(source)
    spec = model_spec(model, checkpoint.tokenizer.pieces(), exact)
    fused = spec.decoder.layer[1].self_attention.linear[0]  # q, k and v fused along the outputs
    names = [f"decoder_layers.1.self_attn.{p}_proj.weight" for p in "qkv"]
    np.testing.assert_array_equal(fused.weight, np.concatenate([exact[n].values for n in names]))
    assert set(np.unique(fused.weight)) <= {-3, -1, 1, 3}  # 2-bit seq: its four levels, not re-quantized
    dequantized = fused.weight.astype(np.float32) / fused.weight_scale[:, None]  # as CTranslate2 reads it
    expected = torch.cat([model.get_parameter(n) for n in names]).detach().numpy()
    np.testing.assert_allclose(dequantized, expected, rtol=1e-6, atol=0)  # 1/t rounded to fp32: within an ulp
