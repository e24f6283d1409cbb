"""The attacks x defences table of the ``defences`` study: test BLEU of each row as a change against the clean FedAvg run.

    python benchmarks/study.py defences [ROW ...]     # runs rows ATTACK-DEFENCE into benchmarks/results/defences/
    python benchmarks/defence_table.py [--out FILE]   # this table, from the rows that have finished
    python benchmarks/defence_table.py --results benchmarks/results/defences_fleet   # the same at fleet scale

A cell is the row's test BLEU minus the clean FedAvg row's (``none-fedavg``), and
how many of the attackers' updates the defence admitted where it counts them
(``admitted/present``); ``·`` marks a row not run. An attack's rows at 10 % of the
clients (``ATTACK10-DEFENCE``) are rows of the grid too; rows outside it (the
sweeps of ``fl.attack_z`` and ``fl.attack_eps``) are listed below it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "defences"
ATTACKS = {"none": "no attack", "signflip": "sign flip", "ipm": "IPM (ε 0.5)", "ipm_eps8": "IPM (ε 8)",
           "alie_z10": "ALIE (z 10)", "minmax": "min-max", "minsum": "min-sum"}
ATTACKS |= {f"{attack}10": f"{ATTACKS[attack]}, 10 %" for attack in ("signflip", "ipm", "minmax", "minsum")}
DEFENCES = {"fedavg": "FedAvg", "median": "FedMedian", "trimmed": "FedTrimmedAvg", "krum": "Krum",
            "cclip": "centered clipping", "nnm": "NNM + FedAvg", "fltrust": "FLTrust", "dnc": "DnC", "flame": "FLAME",
            "flamemedian": "FLAME + FedMedian", "trustmedian": "trust filter + FedMedian",
            "trusttrimmed": "trust filter + FedTrimmedAvg"}
CLEAN = "none-fedavg"


def summaries(folder: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("*/summary.json"))}


def cell(summary: dict | None, clean: float) -> str:
    if summary is None:
        return "·"
    text = f"{summary['final_test_bleu'] - clean:+.2f}"
    if summary.get("attackers") and summary.get("attackers_admitted") is not None:
        text += f" ({summary['attackers_admitted']}/{summary['attackers']})"
    return text


def table(runs: dict[str, dict], folder: Path) -> str:
    if CLEAN not in runs:
        raise SystemExit(f"error: the clean row {CLEAN} has not finished in {folder}: run it first")
    clean = runs[CLEAN]["final_test_bleu"]
    defences = [d for d in DEFENCES if any(f"{a}-{d}" in runs for a in ATTACKS)]
    lines = [f"Test BLEU against the clean FedAvg run ({clean:.2f}); 20 % of the clients attacking unless a row says "
             "10 %; (admitted/present attackers' updates) where counted.",
             "", "| attack | " + " | ".join(DEFENCES[d] for d in defences) + " |", "|---|" + "---|" * len(defences)]
    for attack, label in ATTACKS.items():
        if any(f"{attack}-{d}" in runs for d in defences):
            cells = [cell(runs.get(f"{attack}-{d}"), clean) for d in defences]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    others = [name for name in runs if name.split("-", 1)[0] not in ATTACKS]
    if others:
        lines += ["", "| sweep row | test BLEU | Δ vs clean FedAvg |", "|---|---|---|"]
        lines += [f"| {name} | {runs[name]['final_test_bleu']:.2f} | {cell(runs[name], clean)} |" for name in others]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="the study's results folder")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    text = table(summaries(args.results), args.results)
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
