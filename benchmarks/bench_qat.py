"""QAT training step time vs fp32, and the size of the packed deployed file at b bits.

Issue targets:
- QAT step time / fp32 step time <= 1.3 on CPU for model=small, quant.scope=linear, b=2
  (checked for both 2-bit grids, lsq and seq);
- in the deployed file at b bits the quantized tensors take <= b/32 * 1.05 of
  their fp32 bytes, scales included.

Step time: one ``fedq.engine.train_steps`` step (forward, backward, clip, Adam)
on the same random batches (about ``data.max_tokens`` = 4096 tokens, synthetic
vocabulary ``--vocab``) for the fp32 model and for each ``--configs`` entry, all
starting from the same fp32 weights; steps interleaved fp32, Q1, Q2, ..., fp32,
Q1, ... and medians reported. A config is ``BITS[:SCOPE[:METHOD]]``, e.g. ``2``
(linear, lsq), ``2:linear:seq``, ``8:linear``, ``1:linear:binary``, ``2:linear:ternary``,
``2:attention``.

Deployed size: for 8, 4, 3, 2 bits (lsq), binary and ternary, the small model
with ``quant.scope=--deploy-scope`` is written by ``fedq.quant.save_deployed``
and its DeployedSize reported. b is the stored code width (ternary stores 2-bit
codes for its 3 levels, so its bound uses b=2).

    python benchmarks/bench_qat.py [--quick] [--threads 2] [--configs 8 4 2 2:linear:seq 1:linear:binary] [--out FILE]
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path

import torch

import benchlib
from fedq.engine import StepSettings, make_optimizer, train_steps
from fedq.errors import FedqError
from fedq.quant import quantize_model, quantized_modules, save_deployed
from fedq.quant.settings import QuantConfig

STEP_TARGET = 1.3
DEPLOY_SCHEMES = [(8, "lsq"), (4, "lsq"), (3, "lsq"), (2, "lsq"), (1, "binary"), (2, "ternary")]


class ConfigSpecError(FedqError):
    pass


def parse_spec(spec: str, base: QuantConfig) -> QuantConfig:
    parts = spec.split(":")
    if not 1 <= len(parts) <= 3 or not parts[0].isdigit():
        raise ConfigSpecError(f"--configs entry {spec!r}: expected BITS[:SCOPE[:METHOD]], e.g. 2:linear:lsq")
    bits = int(parts[0])
    scope = parts[1] if len(parts) > 1 else "linear"
    method = parts[2] if len(parts) > 2 else ("binary" if bits == 1 else "lsq")
    return dataclasses.replace(base, bits=bits, scope=scope, method=method)


def label(quant: QuantConfig) -> str:
    return "fp32" if quant.bits == 32 else f"{quant.bits}-bit {quant.method} {quant.scope}"


def step_times(args, cfg, fp32_model, quants: list[QuantConfig]) -> tuple[dict[str, list[float]], int]:
    """Seconds per train step of fp32 and each QAT config, steps interleaved."""
    batches = benchlib.random_batches(args.steps + 1, args.vocab, cfg.data.max_tokens, args.seed)
    settings = StepSettings(torch.device("cpu"), benchlib.PAD_ID, cfg.train.label_smoothing, cfg.train.clip_norm)
    variants = {}
    for quant in [dataclasses.replace(cfg.quant, bits=32), *quants]:
        model = quantize_model(copy.deepcopy(fp32_model), quant)
        optimizer = make_optimizer(model, cfg.train.lr, cfg.train.betas)
        stream = benchlib.cycle(batches)

        def step(model=model, optimizer=optimizer, stream=stream):
            train_steps(model, stream, optimizer, 1, settings)

        variants[label(quant)] = step
    return benchlib.interleaved(variants, args.steps), batches[0].n_src_tokens + batches[0].n_tgt_tokens


def deployed_sizes(args, cfg, fp32_model) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for bits, method in DEPLOY_SCHEMES:
            quant = dataclasses.replace(cfg.quant, bits=bits, method=method, scope=args.deploy_scope)
            model = quantize_model(copy.deepcopy(fp32_model), quant)
            size = save_deployed(model, Path(tmp) / "model.fedq", {})
            code_bits = next(iter(quantized_modules(model).values())).weight_quantizer.bits
            ratio = size.quantized_packed_bytes / size.quantized_fp32_bytes
            bound = code_bits / 32 * 1.05
            rows.append({
                "scheme": f"{bits}-bit {method}" if method != "ternary" else "ternary (2-bit codes)",
                "code_bits": code_bits,
                **dataclasses.asdict(size),
                "quantized_ratio": ratio,
                "bound": bound,
                "pass": ratio <= bound,
                "file_vs_fp32": size.file_bytes / size.fp32_bytes,
            })
    return rows


def main() -> None:
    p = benchlib.parser(__doc__)
    p.add_argument("--configs", nargs="+", default=["2", "2:linear:seq"], help="QAT configs BITS[:SCOPE[:METHOD]] timed against fp32")
    p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides after model=small")
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--deploy-scope", default="linear")
    args = p.parse_args()
    overrides = ["model=small", *args.overrides]
    if args.quick:
        args.steps = 2
        overrides.append("data.max_tokens=1024")
    machine = benchlib.setup(args)
    cfg = benchlib.config(overrides)
    quants = [parse_spec(spec, cfg.quant) for spec in args.configs]
    fp32_model = benchlib.synthetic_model(cfg, args.vocab, quantized=False)
    n_params = sum(p.numel() for p in fp32_model.parameters())
    print(f"model: {cfg.model.describe()} ({n_params / 1e6:.2f}M parameters), synthetic vocabulary {args.vocab}")

    times, batch_tokens = step_times(args, cfg, fp32_model, quants)
    fp32_ms = 1000 * benchlib.median(times["fp32"])
    step_rows = []
    for name, t in times.items():
        ms = 1000 * benchlib.median(t)
        ratio = ms / fp32_ms
        checked = name in ("2-bit lsq linear", "2-bit seq linear")
        step_rows.append({"config": name, "median_ms": ms, "min_ms": 1000 * min(t), "ratio": ratio,
                          "target": STEP_TARGET if checked else None, "pass": ratio <= STEP_TARGET if checked else None})
    print(f"\ntrain step (forward+backward+Adam), {batch_tokens} tokens per batch, {args.steps} interleaved steps per config")
    print(benchlib.table(
        ["config", "median ms", "min ms", "/ fp32", "target", "pass"],
        [[r["config"], r["median_ms"], r["min_ms"], r["ratio"], r["target"], r["pass"]] for r in step_rows],
    ))

    sizes = deployed_sizes(args, cfg, fp32_model)
    print(f"\ndeployed file, quant.scope={args.deploy_scope} (packed codes + fp16 per-channel scales; other tensors fp32)")
    print(benchlib.table(
        ["scheme", "quantized fp32 MB", "packed MB", "packed / fp32", "bound b/32*1.05", "pass", "file MB", "fp32 model MB", "file / fp32"],
        [[r["scheme"], r["quantized_fp32_bytes"] / 1e6, r["quantized_packed_bytes"] / 1e6, r["quantized_ratio"],
          r["bound"], r["pass"], r["file_bytes"] / 1e6, r["fp32_bytes"] / 1e6, r["file_vs_fp32"]] for r in sizes],
    ))
    benchlib.write_json(args.out, {
        "machine": machine,
        "config": {"overrides": overrides, "vocab": args.vocab, "parameters": n_params, "steps": args.steps,
                   "batch_tokens": batch_tokens, "deploy_scope": args.deploy_scope},
        "step_times": step_rows,
        "step_seconds": times,
        "deployed": sizes,
    })


if __name__ == "__main__":
    benchlib.run(main)
