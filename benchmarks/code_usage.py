"""How a checkpoint's quantized layers use their codes: share of each code and its entropy.

A b-bit grid can carry at most b bits per weight; the entropy of the codes the
trained weights actually take says how much of that the model uses. The
README's Multi30k section compares LSQ's integer grid with the balanced seq grid
this way.

    python benchmarks/code_usage.py outputs/fl_multi30k/fed_w2_uniform2/checkpoint outputs/fl_multi30k/fed_w2seq_uniform2/checkpoint
"""

from __future__ import annotations

import argparse
import math

import torch

from fedq.checkpoint import read_checkpoint
from fedq.quant import quantized_modules
from fedq.task import build_model


def code_shares(checkpoint: str) -> tuple[str, int, list[float]]:
    """(method, bits, share of each code from -2^(b-1) up) over all quantized layers."""
    ckpt = read_checkpoint(checkpoint)
    model = build_model(ckpt.config, ckpt.tokenizer)
    model.load_state_dict(ckpt.state_dict())
    layers = list(quantized_modules(model).values())
    if not layers:
        raise SystemExit(f"{checkpoint}: no quantized layers")
    quantizer = layers[0].weight_quantizer
    levels = 2**quantizer.bits
    counts = torch.zeros(levels)
    with torch.no_grad():
        for module in layers:
            codes, _ = module.weight_quantizer.codes_and_scales(module.weight)
            counts += torch.bincount(codes.flatten().long() + levels // 2, minlength=levels).float()
    return quantizer.method, quantizer.bits, (counts / counts.sum()).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| checkpoint | grid | share of each code (lowest first) | entropy, bits per weight |")
    print("|---|---|---|---|")
    for path in args.checkpoints:
        method, bits, shares = code_shares(path)
        entropy = -sum(s * math.log2(s) for s in shares if s > 0)
        cells = " / ".join(f"{s:.3f}" for s in shares)
        print(f"| `{path}` | {bits}-bit {method} | {cells} | {entropy:.2f} of {bits} |")


if __name__ == "__main__":
    main()
