"""The secure-aggregation table of the ``secagg`` study and issue 33's target checks, from the rows that have finished.

    python benchmarks/study.py secagg               # runs the rows into benchmarks/results/secagg/
    python benchmarks/secagg_table.py [--out FILE]  # this table

Each row: test BLEU, the last round's train loss, ε (where DP is on), uplink MB (the protocol's share of the
bytes in both directions), the uplink against the default 2-bit uplink's, and
the median wall seconds of a round. The checks compare, on the same work:
SecAgg+ with the same shared grid in the clear (the sum is exact: the same
BLEU), with the default uplink's per-client scales (within 1 BLEU), its uplink
bytes with the default's (target ≤ 4×), central DP at ε 8 with and without
secure aggregation, and distributed DP (the clients' Skellam noise) with central DP.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "secagg"
ROWS = {"plain": "default 2-bit uplink (per-client scales)", "clear_grid": "shared grid in the clear",
        "secagg": "SecAgg+ on the shared grid", "central_eps8": "central DP ε 8, default uplink",
        "secagg_eps8": "central DP ε 8 under SecAgg+", "distributed_eps8": "distributed DP ε 8 under SecAgg+",
        "main_plain": "main job: default 2-bit uplink", "main_clear_grid": "main job: shared grid in the clear",
        "main_secagg": "main job: SecAgg+ on the shared grid"}
GROUPS = {"": "1,000 clients, 100 a round", "main_": "the main job, 5 of 20 a round"}  # rows of the same work, by prefix


def load(folder: Path) -> dict[str, dict]:
    runs = {}
    for name in ROWS:
        summary = folder / name / "summary.json"
        if summary.is_file():
            rows = [json.loads(line) for line in (folder / name / "metrics.jsonl").read_text().splitlines()]
            runs[name] = {**json.loads(summary.read_text()), "round_seconds": statistics.median(r["wall_seconds"] for r in rows)}
    return runs


def table(runs: dict[str, dict]) -> str:
    plain = runs.get("plain")
    lines = ["| row | test BLEU | train loss, last round | ε | uplink MB | protocol MB | × default uplink | s a round |",
             "|---|---|---|---|---|---|---|---|"]
    for name, label in ROWS.items():
        if name not in runs:
            continue
        run = runs[name]
        epsilon = f"{run['epsilon']:.2f}" if run.get("epsilon") is not None else "·"
        same_work = runs.get(next(g for g in reversed(GROUPS) if name.startswith(g)) + "plain")  # "" last: every name
        ratio = f"{run['uplink_bytes'] / same_work['uplink_bytes']:.2f}" if same_work else "·"
        lines.append(f"| {label} | {run['final_test_bleu']:.2f} | {run['train_loss_final']:.3f} | {epsilon} | "
                     f"{run['uplink_bytes'] / 1e6:.1f} | "
                     f"{run.get('secagg_bytes', 0) / 1e6:.2f} | {ratio} | {run['round_seconds']:.1f} |")
    lines.append("")
    checks = []
    for group, work in GROUPS.items():
        checks += secagg_checks({name[len(group):]: run for name, run in runs.items() if name.startswith(group)}, work)
    if {"central_eps8", "distributed_eps8"} <= runs.keys():
        gap = runs["distributed_eps8"]["final_test_bleu"] - runs["central_eps8"]["final_test_bleu"]
        checks.append(f"- distributed vs central DP at ε 8: test BLEU {gap:+.2f} (target within 1: "
                      f"{'met' if abs(gap) <= 1 else 'missed'})")
    if plain and "central_eps8" in runs:
        gap = runs["central_eps8"]["final_test_bleu"] - plain["final_test_bleu"]
        checks.append(f"- central DP ε {runs['central_eps8']['epsilon']:.2f} vs no DP: test BLEU {gap:+.2f} "
                      f"(target within 5: {'met' if gap >= -5 else 'missed'})")
    return "\n".join(lines + checks) + "\n"


def secagg_checks(runs: dict[str, dict], work: str) -> list[str]:
    """The secure-aggregation targets on one group's rows (``plain``, ``clear_grid``, ``secagg``)."""
    checks, plain = [], runs.get("plain")
    if {"secagg", "clear_grid"} <= runs.keys():
        same = all(runs["secagg"][key] == runs["clear_grid"][key] for key in ("final_test_bleu", "train_loss_final"))
        checks.append(f"- {work}: SecAgg+ vs the same grid in the clear: test BLEU {runs['secagg']['final_test_bleu']:.2f} "
                      f"vs {runs['clear_grid']['final_test_bleu']:.2f}, train loss {runs['secagg']['train_loss_final']:.4f} "
                      f"vs {runs['clear_grid']['train_loss_final']:.4f} ({'identical' if same else 'DIFFERENT'}); "
                      f"a round {runs['secagg']['round_seconds'] / runs['clear_grid']['round_seconds']:.2f}× the time")
    if plain and "secagg" in runs:
        gap = runs["secagg"]["final_test_bleu"] - plain["final_test_bleu"]
        ratio = runs["secagg"]["uplink_bytes"] / plain["uplink_bytes"]
        checks.append(f"- {work}: SecAgg+ vs the default uplink: test BLEU {gap:+.2f} (target within 1: "
                      f"{'met' if abs(gap) <= 1 else 'missed'}); uplink {ratio:.2f}× (target ≤ 4: "
                      f"{'met' if ratio <= 4 else 'missed'}; moonshot ≤ 2); a round "
                      f"{runs['secagg']['round_seconds'] / plain['round_seconds']:.2f}× the time")
    return checks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="the study's results folder")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    runs = load(args.results)
    if not runs:
        raise SystemExit(f"error: no row of the secagg study has finished in {args.results}: run "
                         "python benchmarks/study.py secagg first")
    text = table(runs)
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
