"""A device's training memory for one client round: whole model against adapters, fp32 base against 2-bit codes.

Each variant runs in a fresh process (``--variant``): it builds the model of
``--model`` over a ``--vocab`` vocabulary, an Adam optimizer over what trains,
and takes ``--steps`` steps of random batches of ``--tokens`` tokens, as a client
round does (``fedq.engine.train_steps``). Reported: the process's peak resident
memory (``ru_maxrss``) above its resident memory just before the model was
built (imports, data and the allocator's arena excluded), and the bytes the
model's own tensors hold. Variants:

    whole_fp32         fp32 model, every weight trains
    whole_w2           2-bit QAT (seq): latent fp32 weights train through the fake quantizer
    adapter_fp32       rank-R adapters over a frozen fp32 base
    adapter_w2_latent  rank-R adapters over the frozen 2-bit QAT base held as latent weights (the server's model)
    adapter_w2_codes   rank-R adapters over the frozen 2-bit base held as its int8 codes and fp16 scales (what a
                       fedq client that trains adapters holds: fedq.quant.swap.hold_base_as_codes)

    python benchmarks/bench_adapter_memory.py [--model small] [--tokens 2048] [--steps 3] [--rank 8] [--out FILE]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

import benchlib
from fedq.engine import StepSettings, make_optimizer, train_steps
from fedq.model.adapters import AdapterConfig, add_adapters
from fedq.quant.swap import hold_base_as_codes

VARIANTS = ("whole_fp32", "whole_w2", "adapter_fp32", "adapter_w2_latent", "adapter_w2_codes")


def resident_mb() -> float:
    """The process's resident memory now (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure(variant: str, model_name: str, vocab: int, tokens: int, steps: int, rank: int) -> dict:
    """One variant in this process: MB above the resident memory before the model was built."""
    bits = "32" if variant.endswith("fp32") else "2"
    cfg = benchlib.config([f"model={model_name}", f"quant.bits={bits}", "device=cpu", "model.dropout=0.0"])
    batches = benchlib.random_batches(steps, vocab, tokens, seed=1)
    before = resident_mb()
    model = benchlib.synthetic_model(cfg, vocab)
    if variant.startswith("adapter"):
        add_adapters(model, AdapterConfig(rank=rank), seed=1)
        if variant.endswith("codes"):
            hold_base_as_codes(model)
    held = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = make_optimizer(model, 1e-3)
    train_steps(model, benchlib.cycle(batches), optimizer, steps, StepSettings(torch.device("cpu"), benchlib.PAD_ID))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"variant": variant, "peak_mb": peak - before, "model_mb": held, "trained": trained}


def main() -> None:
    p = benchlib.parser(__doc__)
    p.add_argument("--model", default="small")
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--variant", choices=VARIANTS, help="measure this one variant in this process (internal)")
    args = p.parse_args()
    if args.variant:
        torch.set_num_threads(args.threads)
        print(json.dumps(measure(args.variant, args.model, args.vocab, args.tokens, args.steps, args.rank)))
        return
    machine = benchlib.setup(args)
    if args.quick:
        args.model, args.vocab, args.tokens, args.steps = "tiny", 500, 256, 1
    rows = []
    for variant in VARIANTS:
        command = [sys.executable, __file__, "--variant", variant, "--model", args.model, "--vocab", str(args.vocab),
                   "--tokens", str(args.tokens), "--steps", str(args.steps), "--rank", str(args.rank),
                   "--threads", str(args.threads)]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(f"{variant}: {rows[-1]}", flush=True)
    whole = next(r for r in rows if r["variant"] == "whole_w2")["peak_mb"]
    fp32_base = next(r for r in rows if r["variant"] == "adapter_fp32")["peak_mb"]
    print(f"\nmodel={args.model}, vocabulary {args.vocab}, {args.steps} steps of {args.tokens} tokens, adapters of rank {args.rank}")
    print(benchlib.table(
        ["variant", "values trained", "model tensors MB", "peak MB above start", "vs whole 2-bit QAT", "vs adapters on fp32 base"],
        [[r["variant"], f"{r['trained']:,}", f"{r['model_mb']:.1f}", f"{r['peak_mb']:.1f}", f"{r['peak_mb'] / whole:.2f}x",
          f"{r['peak_mb'] / fp32_base:.2f}x"] for r in rows]))
    benchlib.write_json(args.out, {"machine": machine, "settings": vars(args) | {"out": str(args.out)}, "rows": rows})


if __name__ == "__main__":
    benchlib.run(main)
