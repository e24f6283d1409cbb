"""A cross-device fleet on one machine: memory and seconds per round against the size of the fleet.

Issue targets: at the same clients per round, the peak resident memory of the
whole process tree (driver, SuperLink, Flower's simulation, Ray's daemons and
actors) and the seconds per round at 10,000 clients within 1.25x of those at 100
clients; client-rounds per hour reported.

Each row is ``python -m fedq.simulate`` in a subprocess with ``clients=N``,
``fl.clients_per_round=K``, ``fl.local_steps`` (1 by default: the cost of the
federation, not of training) and the built-in corpus sized for the largest fleet
(``partition.shard_size`` pairs per client, the same corpus for every row). The
shards are built before the timed runs. Memory is sampled every 0.2 s over every
process below the simulate command (RSS summed); seconds per round are the
median ``wall_seconds`` of rounds 2.. (round 1 is the actors' warm-up), without
evaluation (``fl.eval_every=0``).

    python benchmarks/bench_fleet.py [--models tiny small] [--fleets 100 1000 10000] [--per-round 100] [--out FILE]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchlib
from fedq.config import compose_config
from fedq.fl.shards import client_shards
from fedq.supervise import descendants

REPO = Path(__file__).resolve().parent.parent
TARGET = 1.25


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and every process below it."""
    total = 0
    for member in {pid} | descendants(pid):
        try:
            total += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
    return total


def run(overrides: list[str], out: Path) -> dict:
    command = [sys.executable, "-m", "fedq.simulate", *overrides, f"hydra.run.dir={out}"]
    peak, done = [0], threading.Event()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines = [line.rstrip() for line in process.stdout]  # type: ignore[union-attr]
    done.set()
    sampler.join()
    if process.wait() != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n" + "\n".join(lines[-15:]))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [row["wall_seconds"] for row in rows[1:]]
    return {"peak_rss_bytes": peak[0], "round_seconds": statistics.median(timed), "rounds": rows}


def main() -> None:
    p = benchlib.parser(__doc__)
    p.add_argument("--models", nargs="+", default=["tiny", "small"])
    p.add_argument("--fleets", nargs="+", type=int, default=[100, 1000, 10000])
    p.add_argument("--per-round", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3, help="rounds per run (the first is a warm-up)")
    p.add_argument("--local-steps", type=int, default=1)
    p.add_argument("--shard-size", type=int, default=20, help="partition.shard_size: pairs per client")
    args = p.parse_args()
    if args.quick:
        args.models, args.fleets, args.per_round, args.rounds, args.shard_size = ["tiny"], [20, 200], 4, 2, 5
    machine = benchlib.setup(args)
    cache = Path(tempfile.mkdtemp(prefix="fedq-fleet-cache-"))
    results: dict[str, dict] = {}
    for model in args.models:
        for fleet in args.fleets:
            overrides = [
                f"model={model}", "quant.bits=2", f"clients={fleet}", f"fl.clients_per_round={args.per_round}",
                f"fl.rounds={args.rounds}", f"fl.local_steps={args.local_steps}", "fl.eval_every=0",
                f"partition.shard_size={args.shard_size}", f"data.demo_train_size={max(args.fleets) * args.shard_size}",
                "data.max_eval_pairs=50", f"data.cache_dir={cache}", "device=cpu",
                *(["data.vocab_size=200", "data.demo_eval_size=10"] if args.quick else []),
            ]
            client_shards(compose_config(overrides))  # built (and timed) apart from the runs
            with tempfile.TemporaryDirectory(prefix="fedq-fleet-") as out:
                result = run(overrides, Path(out))
            results[f"{model}/{fleet}"] = {"model": model, "clients": fleet, "overrides": overrides, **result}
            print(f"{model}, {fleet} clients: peak {result['peak_rss_bytes'] / 1e9:.2f} GB, "
                  f"{result['round_seconds']:.1f} s per round", flush=True)
    table = []
    for model in args.models:
        base = results[f"{model}/{args.fleets[0]}"]
        for fleet in args.fleets:
            r = results[f"{model}/{fleet}"]
            table.append([model, fleet, args.per_round, r["peak_rss_bytes"] / 1e9, r["peak_rss_bytes"] / base["peak_rss_bytes"],
                          r["round_seconds"], r["round_seconds"] / base["round_seconds"], 3600 * args.per_round / r["round_seconds"]])
    print(benchlib.table(["model", "clients", "per round", "peak memory GB", "x smallest fleet", "seconds per round",
                          "x smallest fleet", "client-rounds per hour"], table))
    worst = max(max(row[4], row[6]) for row in table if row[1] == max(args.fleets))
    print(f"\nlargest ratio of the largest fleet to the smallest: {worst:.2f} (target <= {TARGET}): {'PASS' if worst <= TARGET else 'FAIL'}")
    benchlib.write_json(args.out, {"machine": machine, "results": results, "table": table, "target": TARGET})


if __name__ == "__main__":
    benchlib.run(main)
