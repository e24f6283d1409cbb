"""Simulation overhead: federated rounds under Flower + Ray vs the same work in one plain process.

Issue target: wall time of R federated rounds / wall time of the same local
training steps run in one process without Flower and Ray <= 1.25, Ray start-up
reported apart.

Federated: the real entry point, ``python -m fedq.simulate`` in a subprocess,
with R+1 rounds. Round 1 is a warm-up and is reported apart with the start-up:
the server waits for Ray's nodes in it and each Ray actor builds its
Federation (corpus, tokenizer, model) on its first client. Rounds 2..R+1 are
timed from metrics.jsonl's ``wall_seconds`` (send weights, client training,
decode + aggregate; the server's BLEU evaluation is not in it, and
``fl.eval_every=0`` leaves only the untrained and the final model scored, on
``data.max_eval_pairs`` pairs). Start-up = launch until the "round 0" line
(imports, corpus, Ray, server model, a BLEU of the untrained model).

Baseline: one process running the same round code (``fedq.fl.run.run_federation``:
the same sampling, downlink deltas, checks and Flower strategy), with the K sampled
clients' ``client_round`` called one after another in this process instead of
through Flower and Ray. Round 1 is an untimed warm-up here too; rounds 2..R+1 run
the same local steps with the same lr, and are timed from its metrics.jsonl.

Fairness: every client trains with ``--client-cpus`` torch threads on both
sides (``fl.num_cpus``; Federation sets the threads from it). Ray runs
P = min(K, cpu_count // client_cpus) clients at once, the baseline one at a
time. The baseline round time is therefore the makespan of its measured
client times spread over P workers (longest first, each to the least loaded)
plus the rest of its round: for P = 1 (the default on 2 cores: --client-cpus 2) that
is exactly the sequential time and the ratio is pure Flower + Ray overhead; for
P > 1 it assumes perfect parallel scaling, so it is the strict side (memory
bandwidth and other load slow parallel actors, not the ideal).
Baseline and simulation runs are interleaved when --repeats > 1.

    python benchmarks/bench_sim_overhead.py [--quick] [--threads 2] [--rounds 5] [--out FILE]
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from fedq.comm.downlink import cache_capacity
from fedq.config import FedqConfig
from fedq.fl.client import LocalExchange, client_federation
from fedq.fl.client_state import ClientStore
from fedq.fl.run import run_federation
from fedq.fl.settings import clients_per_round
from server.aggregation import FlowerAggregator

REPO = Path(__file__).resolve().parent.parent
TARGET = 1.25


class SimulationFailed(RuntimeError):
    pass


def run_baseline(cfg: FedqConfig, parallel: int, seed: int) -> list[dict]:
    """One plain-process run of R+1 rounds through fedq's own round code (``fedq.fl.run.run_federation``), the
    clients answered by ``client_round`` in this process; one dict per round, from its metrics.jsonl and the
    clients' times."""
    cfg = dataclasses.replace(cfg, seed=seed)
    federation = client_federation(cfg)  # torch threads = fl.num_cpus, as in a Ray actor
    with tempfile.TemporaryDirectory(prefix="fedq-baseline-") as out:
        capacity = cache_capacity(cfg.comm.downlink.cache_mb, federation.numel)
        exchange = LocalExchange(federation, ClientStore(Path(out) / "client_state", capacity))
        timed: list[list[float]] = []

        def timed_exchange(requests):
            times, replies = [], []
            for request in requests:
                start = time.perf_counter()
                replies += exchange([request])
                times.append(time.perf_counter() - start)
            timed.append(times)
            return replies

        run_federation(cfg, Path(out), timed_exchange, FlowerAggregator(cfg), federation=federation)
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [{
        "round": row["round"],
        "sequential_seconds": row["wall_seconds"],
        "parallel_seconds": row["wall_seconds"] - sum(client_s) + benchlib.makespan(client_s, parallel),
        "client_seconds": client_s,
        "client_train_seconds": row["client_train_seconds"],
    } for row, client_s in zip(rows, timed)]


def run_simulation(overrides: list[str], seed: int) -> dict:
    """Run ``python -m fedq.simulate`` and time it from its output lines and metrics.jsonl."""
    with tempfile.TemporaryDirectory(prefix="fedq-bench-") as out:
        command = [sys.executable, "-m", "fedq.simulate", *overrides, f"seed={seed}", f"hydra.run.dir={out}"]
        started = time.perf_counter()
        marks: dict[str, float] = {}
        lines: list[str] = []
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            for line in proc.stdout:  # type: ignore[union-attr]
                now = time.perf_counter() - started
                lines.append(line.rstrip())
                for key, prefix in (("round0", "round 0 "), ("round1", "round 1/")):
                    if line.startswith(prefix) and key not in marks:
                        marks[key] = now
        total = time.perf_counter() - started
        if proc.returncode != 0 or "round0" not in marks:
            tail = "\n".join(lines[-15:])
            raise SimulationFailed(f"{' '.join(command)} failed (exit {proc.returncode}):\n{tail}")
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last_round_end = marks["round0"] + sum(r["wall_seconds"] + r["eval_seconds"] for r in rows)
    return {
        "rows": rows,
        "launch_to_round0_seconds": marks["round0"],
        "total_seconds": total,
        "after_last_round_seconds": total - last_round_end,
    }


def main() -> None:
    p = benchlib.parser(__doc__)
    p.add_argument("--overrides", nargs="*", default=["quant.bits=2", "quant.method=lsq"], help="Hydra overrides (model, quant, comm, data)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds R (one warm-up round is added)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--per-round", type=int, default=2, help="clients per round K")
    p.add_argument("--local-steps", type=int, default=20)
    p.add_argument("--client-cpus", type=float, default=0, help="fl.num_cpus = torch threads per client (0: --threads)")
    p.add_argument("--eval-pairs", type=int, default=16, help="data.max_eval_pairs for the simulation's untimed BLEU")
    p.add_argument("--repeats", type=int, default=1, help="baseline/simulation pairs, interleaved")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.clients, args.per_round, args.local_steps, args.eval_pairs = 1, 2, 2, 2, 4
        args.overrides = [*args.overrides, *benchlib.QUICK_DATA]
    client_cpus = args.client_cpus or float(args.threads)
    machine = benchlib.setup(args)
    overrides = [
        *args.overrides, f"fl.rounds={args.rounds + 1}", f"clients={args.clients}", f"fl.clients_per_round={args.per_round}",
        f"fl.local_steps={args.local_steps}", "fl.local_epochs=0", "fl.eval_every=0", f"fl.num_cpus={client_cpus:g}",
        f"data.max_eval_pairs={args.eval_pairs}", "device=cpu",
    ]
    cfg = benchlib.config(overrides)
    k = clients_per_round(cfg.fl)
    parallel = max(1, min(k, int((os.cpu_count() or 1) // client_cpus)))
    print(f"model ({cfg.model.describe()}), quant.bits={cfg.quant.bits}, uplink {cfg.comm.uplink.name}")
    print(f"{args.clients} clients, {k} per round, {args.local_steps} local steps, {args.rounds} timed rounds (+1 warm-up); "
          f"{client_cpus:g} CPU(s) and torch threads per client; Ray runs P={parallel} client(s) at once")

    baselines, simulations = [], []
    for repeat in range(args.repeats):
        baselines.append(run_baseline(cfg, parallel, args.seed + repeat))
        simulations.append(run_simulation(overrides, args.seed + repeat))
        print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)

    def timed(rows: list[dict], key: str) -> float:
        return sum(r[key] for r in rows if r["round"] > 1)

    base_seq = benchlib.median([timed(rows, "sequential_seconds") for rows in baselines])
    base_par = benchlib.median([timed(rows, "parallel_seconds") for rows in baselines])
    sim = benchlib.median([timed(s["rows"], "wall_seconds") for s in simulations])
    base_train = benchlib.median([timed(rows, "client_train_seconds") for rows in baselines])
    sim_train = benchlib.median([timed(s["rows"], "client_train_seconds") for s in simulations])
    ratio = sim / base_par
    print(f"\n{args.rounds} timed rounds (2..{args.rounds + 1}), medians over {args.repeats} run(s):")
    print(benchlib.table(
        ["measure", "seconds"],
        [
            [f"baseline, clients one after another ({client_cpus:g} threads each)", base_seq],
            [f"baseline, spread over P={parallel} workers (ideal)", base_par],
            ["simulation (Flower + Ray), metrics.jsonl wall_seconds", sim],
            ["  of which slowest client's local training, baseline", base_train],
            ["  of which slowest client's local training, simulation", sim_train],
        ],
    ))
    print(f"\noverhead ratio simulation / baseline (P={parallel}) = {ratio:.3f} (target <= {TARGET}): {'PASS' if ratio <= TARGET else 'FAIL'}")
    first = [s["rows"][0]["wall_seconds"] for s in simulations if s["rows"]]
    print("\nnot counted above, simulation only (medians):")
    print(benchlib.table(
        ["start-up and wind-down", "seconds"],
        [
            ["launch -> round 0 line (imports, corpus, Ray start, untrained BLEU)", benchlib.median([s["launch_to_round0_seconds"] for s in simulations])],
            ["warm-up round 1 (nodes come up, actors build their Federation)", benchlib.median(first) if first else None],
            ["after the last round (final BLEU, checkpoint, shutdown)", benchlib.median([s["after_last_round_seconds"] for s in simulations])],
            ["whole simulate command", benchlib.median([s["total_seconds"] for s in simulations])],
        ],
    ))
    benchlib.write_json(args.out, {
        "machine": machine,
        "config": {"overrides": overrides, "clients_per_round": k, "parallel_clients": parallel, "client_cpus": client_cpus,
                   "timed_rounds": args.rounds, "repeats": args.repeats},
        "baseline_sequential_seconds": base_seq,
        "baseline_parallel_seconds": base_par,
        "simulation_seconds": sim,
        "ratio": ratio,
        "target": TARGET,
        "pass": ratio <= TARGET,
        "baseline_runs": baselines,
        "simulation_runs": simulations,
    })


if __name__ == "__main__":
    benchlib.run(main)
