"""Run a study: the rows of ``configs/experiment/STUDY/``, one fedq run each, then the table of them.

A study is a folder of Hydra experiment configs: ``_common.yaml`` (what every row
shares), one ``ROW.yaml`` per federated row (``python -m fedq.simulate
+experiment=STUDY/ROW``) and one ``train/ROW.yaml`` per centralized row
(``python -m fedq.train +experiment=STUDY/train/ROW``). Each row runs in
``OUT/ROW/`` (default ``benchmarks/results/STUDY/ROW/``) with its output in
``OUT/ROW/log.txt``; a row that has finished there before is kept, so
an interrupted study continues where it stopped. The table is ``python -m
fedq.report`` over the rows (``OUT/report.md``), and over each ``--table``'s rows.

    python benchmarks/study.py downlink
    python benchmarks/study.py faults clean alie_fedavg --table attacks=clean,alie_fedavg
    python benchmarks/study.py qat_table --set init_from=outputs/m30k_fp32/checkpoint --jobs 2
    python benchmarks/study.py fl_table --quick            # a smoke run of every row: tiny sizes, one round

The same rows as one Hydra sweep: ``python -m fedq.simulate -m
'+experiment=glob(downlink/*,exclude=[downlink/_common,downlink/train/*])'``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STUDIES = REPO / "configs" / "experiment"
# --quick: every row at tiny sizes (the built-in corpus, a 32-wide model), one round or two steps.
QUICK_DATA = ["data.demo_train_size=300", "data.demo_eval_size=10", "data.vocab_size=200", "model.d_model=32",
              "model.ffn_dim=64"]
QUICK = {"simulate": [*QUICK_DATA, "fl.rounds=1", "fl.local_steps=2"], "train": [*QUICK_DATA, "train.max_steps=2"]}


@dataclass(frozen=True)
class Row:
    name: str
    entry: str  # simulate | train
    experiment: str  # the experiment config: STUDY/ROW or STUDY/train/ROW


def study_rows(study: str) -> list[Row]:
    """The study's rows: its centralized rows (train/) first, then its federated ones, each in name order."""
    folder = STUDIES / study
    if not (folder / "_common.yaml").is_file():
        known = sorted(p.name for p in STUDIES.iterdir() if (p / "_common.yaml").is_file())
        raise SystemExit(f"error: no study {study!r} in {STUDIES} (studies: {', '.join(known)})")
    train = [Row(p.stem, "train", f"{study}/train/{p.stem}") for p in sorted((folder / "train").glob("*.yaml"))]
    simulate = [Row(p.stem, "simulate", f"{study}/{p.stem}") for p in sorted(folder.glob("*.yaml"))
                if not p.name.startswith("_")]
    return train + simulate


def run_row(row: Row, out: Path, settings: list[str], quick: bool) -> str:
    """Run one row into ``out/ROW`` (kept if it has finished before); returns its one-line result."""
    folder = out / row.name
    if finished(folder):
        return f"{row.name}: kept (finished in {folder})"
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", f"fedq.{row.entry}", f"+experiment={row.experiment}", *settings,
               *(QUICK[row.entry] if quick else []), f"hydra.run.dir={folder}"]
    with (folder / "log.txt").open("w") as log:
        log.write(" ".join(command[1:]) + "\n")
        log.flush()
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO).returncode
    lines = (folder / "log.txt").read_text().splitlines()
    if code != 0:
        return f"{row.name}: FAILED (exit {code}): {lines[-1] if lines else ''}"
    final = [line for line in lines if line.startswith(("final global model", "test (deployed form)"))]
    return f"{row.name}: {final[-1] if final else 'done'}"


def finished(folder: Path) -> bool:
    """A finished row: a federated run's summary, or a centralized run's checkpoint."""
    return (folder / "summary.json").is_file() or (folder / "checkpoint" / "meta.json").is_file()


def report(folders: list[Path], out: Path, extra: list[str]) -> None:
    done = [folder for folder in folders if finished(folder)]
    if done:
        subprocess.run([sys.executable, "-m", "fedq.report", *map(str, done), "--out", str(out), *extra], cwd=REPO,
                       check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", help="a folder of configs/experiment/ with a _common.yaml")
    parser.add_argument("rows", nargs="*", help="rows to run (default: all of the study's)")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results/STUDY; "
                        "outputs/quick/STUDY with --quick)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting for every row")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one round (numbers not real)")
    parser.add_argument("--jobs", type=int, default=1, help="rows at once (use threads=1 in the rows; default 1)")
    parser.add_argument("--table", action="append", default=[], metavar="NAME=ROW,ROW",
                        help="also a table of these rows, in OUT/tables/NAME")
    parser.add_argument("--target-bleu", type=float, help="passed to fedq.report")
    args = parser.parse_args(argv)

    rows = study_rows(args.study)
    if args.rows:
        unknown = sorted(set(args.rows) - {row.name for row in rows})
        if unknown:
            raise SystemExit(f"error: {args.study} has no row {unknown[0]!r} (rows: {', '.join(r.name for r in rows)})")
        rows = [row for row in rows if row.name in args.rows]
    out = (args.out or (REPO / "outputs" / "quick" / args.study if args.quick else
                        REPO / "benchmarks" / "results" / args.study)).resolve()
    print(f"study {args.study}: {len(rows)} rows into {out}", flush=True)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for line in pool.map(lambda row: run_row(row, out, args.set, args.quick), rows):
            print(line, flush=True)
    extra = ["--target-bleu", str(args.target_bleu)] if args.target_bleu is not None else []
    report([out / row.name for row in study_rows(args.study)], out, extra)
    for table in args.table:
        name, _, names = table.partition("=")
        report([out / row for row in names.split(",")], out / "tables" / name, extra)


if __name__ == "__main__":
    main()
