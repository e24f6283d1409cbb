"""Print a markdown table of finished runs (the README's result tables come from this).

    python benchmarks/results_table.py outputs/qat/*          # centralized runs (checkpoint/meta.json)
    python benchmarks/results_table.py --federated outputs/fl/*  # simulate runs (summary.json)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

from omegaconf import OmegaConf

from fedq.config import FedqConfig
from fedq.comm.settings import default_uplink_bits
from fedq.quant import resolve_method


def quant_label(quant: dict) -> str:
    if quant["bits"] >= 32:
        return "fp32"
    method = resolve_method(SimpleNamespace(**quant))
    if method == "ternary":
        kind = "ternary (1.58-bit)"
    elif method == "binary":
        kind = "binary"
    else:
        kind = f"{quant['bits']}-bit {method}"
    return f"{kind}, {quant['scope']}" + (f", act {quant['act_bits']}-bit" if quant.get("act_bits") else "")


def centralized_row(run: Path) -> str:
    meta = json.loads((run / "checkpoint" / "meta.json").read_text())
    cfg = OmegaConf.to_container(OmegaConf.load(run / "checkpoint" / "config.yaml"))
    size = meta["deployed_size"]
    return (
        f"| {quant_label(cfg['quant'])} | {meta['test_bleu']:.2f} | {meta['valid_bleu']:.2f} | "
        f"{size['file_bytes'] / 1e6:.2f} | {meta['steps']} | {meta['train_seconds'] / 60:.1f} | `{run.name}` |"
    )


def federated_row(run: Path) -> str:
    s = json.loads((run / "summary.json").read_text())
    cfg = OmegaConf.to_container(OmegaConf.create(s["config"]))
    uplink = cfg["comm"]["uplink"]
    codec = uplink["name"]
    if codec in ("uniform", "topk"):  # bits null = the default the run used (quant.bits)
        schema = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(FedqConfig), cfg))
        codec += f" {uplink['bits'] or default_uplink_bits(schema)}-bit"
    return (
        f"| {quant_label(cfg['quant'])} | {codec} | {s['rounds']} | {s['uplink_bytes'] / 1e6:.1f} | "
        f"{s['uplink_ratio']:.1f}x | {s['downlink_bytes'] / 1e6:.1f} | {s['final_test_bleu']:.2f} | "
        f"{s['final_valid_bleu']:.2f} | {s['wall_seconds'] / 60:.1f} | `{run.name}` |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--federated", action="store_true", help="runs of fedq.simulate")
    args = parser.parse_args()
    if args.federated:
        print("| QAT | uplink codec | rounds | uplink MB | uplink ratio | downlink MB | test BLEU | valid BLEU | minutes | run |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        rows = [federated_row(run) for run in args.runs]
    else:
        print("| QAT | test BLEU | valid BLEU | deployed MB | steps | train min | run |")
        print("|---|---|---|---|---|---|---|")
        rows = [centralized_row(run) for run in args.runs]
    print("\n".join(rows))


if __name__ == "__main__":
    main()
