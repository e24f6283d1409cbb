"""A cross-device round side by side: a plain PyTorch loop, Apple's pfl-research and fedq on the same work.

Issue targets: fedq's default (2-bit QAT, 2-bit uplink, 4-bit downlink deltas) at
most 1.5x its own plain QAT compute per round (moonshot 1.2x); fedq at fp32
(``quant.bits=32 comm=fp32``) at most as slow as pfl on the same fp32 work (ratio
<= 1.0, moonshot 0.8).

The work (every row): fedq's tiny Transformer, the built-in corpus, ``--clients``
clients of ``--shard-size`` pairs (fedq's shards), ``--per-round`` clients a round,
each one local Adam step (lr, betas, eps, gradient clipping as fedq's clients) on
its first batch (fedq's batching of its shard), the round's model the average of
their updates. Seconds per round are the median of rounds 2.. (round 1 warms up).

- **plain**: one process, one torch thread, a client at a time: load the round's
  weights, a new Adam, one step, add ``local - global`` to a running sum. Each
  client is timed; the row is the ideal split of those times over ``--workers``
  workers (longest first to the least loaded), the floor any framework with that
  many workers could reach. ``plain QAT`` is the same loop on the 2-bit QAT model.
- **pfl**: ``pfl`` 0.6 (``pip install -e .[peers]``), FedAvg with its
  ``SimulatedBackend``, the same model wrapped with pfl's ``loss``/``metrics``, Adam
  made by pfl for every user, no compression: ``--workers`` processes of one thread
  under ``torchrun`` (pfl's distributed simulation), and one process of
  ``--workers`` threads. Timed from pfl's central-iteration callback.
- **fedq**: ``python -m fedq.simulate`` (Flower + Ray, ``fl.num_cpus=1``: one thread
  per client, as many clients at once as the machine has CPUs), at fp32 and at
  its default; timed from metrics.jsonl's ``wall_seconds``, which include the
  server's downlink, decoding, aggregation and saved state.

    python benchmarks/bench_peers.py [--quick] [--clients 1000] [--per-round 100] [--rounds 4] [--out FILE]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import benchlib
from fedq.config import FedqConfig, compose_config
from fedq.engine import batch_stream, sequence_loss
from fedq.fl.federation import Federation

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TARGET, DEFAULT_MOONSHOT = 1.5, 1.2  # fedq default / plain QAT
FP32_TARGET, FP32_MOONSHOT = 1.0, 0.8  # fedq fp32 / pfl


def work_overrides(args: argparse.Namespace, cache: Path) -> list[str]:
    """The federation every row trains (fedq's config): model, corpus, shards, local training."""
    return [
        "model=tiny", f"clients={args.clients}", f"fl.clients_per_round={args.per_round}", f"fl.rounds={args.rounds}",
        "fl.local_steps=1", "fl.eval_every=0", f"partition.shard_size={args.shard_size}",
        f"data.demo_train_size={args.clients * args.shard_size}", "data.max_eval_pairs=20", f"data.cache_dir={cache}",
        "device=cpu", "fl.num_cpus=1", *(["data.demo_eval_size=10", "data.vocab_size=200"] if args.quick else []),
    ]


def client_batches(federation: Federation) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Every client's first batch of its shard, as fedq's client batches it."""
    cfg, tok = federation.cfg, federation.tokenizer
    batches = []
    for client in range(cfg.fl.clients):
        batch = next(batch_stream(federation.data.shard(client), cfg.data.max_tokens, tok, cfg.seed + client))
        batches.append((batch.src, batch.tgt_in, batch.tgt_out))
    return batches


class Seq2Seq(torch.nn.Module):
    """fedq's model with the ``loss`` and ``metrics`` pfl asks of a PyTorch module: fedq's label-smoothed loss
    per target token."""

    def __init__(self, model: torch.nn.Module, pad_id: int, label_smoothing: float) -> None:
        super().__init__()
        self.model, self.pad_id, self.label_smoothing = model, pad_id, label_smoothing

    def loss(self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor) -> torch.Tensor:
        self.train()
        logits = self.model(src, tgt_in)
        return sequence_loss(logits, tgt_out, self.pad_id, self.label_smoothing) / (tgt_out != self.pad_id).sum()

    @torch.no_grad()
    def metrics(self, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor) -> dict:
        from pfl.metrics import Weighted

        self.eval()
        tokens = int((tgt_out != self.pad_id).sum())
        summed = sequence_loss(self.model(src, tgt_in), tgt_out, self.pad_id, self.label_smoothing)
        return {"loss": Weighted(float(summed), tokens)}


def adam(cfg: FedqConfig) -> functools.partial:
    return functools.partial(torch.optim.Adam, betas=tuple(cfg.train.betas), eps=1e-9)


# --- plain PyTorch --------------------------------------------------------------------------------------------------

def plain_rounds(overrides: list[str], rounds: int, workers: int) -> list[float]:
    """Seconds per round of the plain loop: each client timed, spread ideally over ``workers``."""
    torch.set_num_threads(1)
    federation = Federation(compose_config(overrides))
    cfg, model = federation.cfg, federation.model
    batches = client_batches(federation)
    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.nn.utils.parameters_to_vector(params).detach().clone()
    make = adam(cfg)
    seconds = []
    for server_round in range(1, rounds + 1):
        rng = np.random.default_rng([cfg.seed, server_round])
        cohort = rng.choice(cfg.fl.clients, size=cfg.fl.clients_per_round, replace=False)
        total, times = torch.zeros_like(weights), []
        for client in cohort:
            start = time.perf_counter()
            torch.nn.utils.vector_to_parameters(weights, params)
            optimizer = make(params, lr=cfg.fl.local_lr)
            model.train()
            src, tgt_in, tgt_out = batches[client]
            loss = sequence_loss(model(src, tgt_in), tgt_out, federation.tokenizer.pad_id, cfg.train.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            (loss / (tgt_out != federation.tokenizer.pad_id).sum()).backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_norm)
            optimizer.step()
            total += torch.nn.utils.parameters_to_vector(params).detach() - weights
            times.append(time.perf_counter() - start)
        weights = weights + total / len(cohort)
        seconds.append(benchlib.makespan(times, workers))
    return seconds


# --- pfl --------------------------------------------------------------------------------------------------------------

def pfl_worker(overrides: list[str], rounds: int, out: Path) -> None:
    """One pfl process (alone, or one rank under torchrun): FedAvg for ``rounds``; rank 0 writes the round times."""
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.internal.ops.selector import get_default_framework_module
    from pfl.metrics import Metrics
    from pfl.model.pytorch import PyTorchModel

    federation = Federation(compose_config(overrides))
    cfg = federation.cfg
    batches = client_batches(federation)
    data = {client: list(batch) for client, batch in enumerate(batches)}  # tensors: pfl would make arrays float32
    module = Seq2Seq(federation.model, federation.tokenizer.pad_id, cfg.train.label_smoothing)
    model = PyTorchModel(model=module, local_optimizer_create=adam(cfg),
                         central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0))
    sampler = get_user_sampler("minimize_reuse", list(data))
    dataset = FederatedDataset(lambda user: Dataset(data[user], user_id=user), sampler)
    marks: list[float] = []

    class RoundClock(TrainingProcessCallback):
        def on_train_begin(self, *, model):
            marks.append(time.perf_counter())
            return Metrics()

        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
            marks.append(time.perf_counter())
            return False, Metrics()

    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(central_num_iterations=rounds, evaluation_frequency=rounds + 1,
                                           train_cohort_size=cfg.fl.clients_per_round, val_cohort_size=0),
        backend=SimulatedBackend(training_data=dataset, val_data=None),
        model=model,
        model_train_params=NNTrainHyperParams(local_num_epochs=None, local_num_steps=1, local_learning_rate=cfg.fl.local_lr,
                                              local_batch_size=None, local_max_grad_norm=cfg.train.clip_norm),
        model_eval_params=NNEvalHyperParams(local_batch_size=None),
        callbacks=[RoundClock()],
    )
    if get_default_framework_module().distributed.global_rank == 0:
        out.write_text(json.dumps(np.diff(marks).tolist()))


def pfl_rounds(overrides: list[str], rounds: int, processes: int, threads: int) -> list[float]:
    """Seconds per round of pfl: ``processes`` ranks under torchrun (or one process) of ``threads`` threads each."""
    with tempfile.TemporaryDirectory(prefix="fedq-pfl-") as folder:
        out = Path(folder) / "rounds.json"
        worker = [str(Path(__file__).resolve()), "--pfl-worker", str(out), "--rounds", str(rounds), "--overrides", *overrides]
        launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                  if processes > 1 else [sys.executable])
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PFL_PYTORCH_DEVICE": "cpu", "PYTHONPATH": str(REPO)}
        done = subprocess.run([*launch, *worker, "--threads", str(threads)], cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"pfl ({processes} x {threads}) failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


# --- fedq -------------------------------------------------------------------------------------------------------------

def fedq_rounds(overrides: list[str]) -> tuple[list[float], list[dict]]:
    """Seconds per round of ``python -m fedq.simulate`` and its rows."""
    with tempfile.TemporaryDirectory(prefix="fedq-peers-") as out:
        command = [sys.executable, "-m", "fedq.simulate", *overrides, f"hydra.run.dir={out}"]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [row["wall_seconds"] for row in rows], rows


def stage_profile(rows: list[dict], workers: int) -> dict[str, float]:
    """Where a fedq round's wall time went (median over rounds 2..), from its rows' ``stage_seconds``: the clients'
    sums spread over ``workers``; the exchange's time beyond them is Flower + Ray's (and waiting on the slowest)."""
    def median_of(value) -> float:
        return timed([value(row) for row in rows])

    def stage(name: str):
        return lambda row: row["stage_seconds"].get(name, 0.0)

    spent = ("downlink", "exchange", "decode", "aggregate")
    return {
        "server: downlink messages": median_of(stage("downlink")),
        "clients: whole rounds, per worker": median_of(lambda r: stage("clients")(r) / workers),
        "  of which local training": median_of(lambda r: stage("clients_train")(r) / workers),
        "Flower + Ray: transport and waiting": median_of(lambda r: stage("exchange")(r) - stage("clients")(r) / workers),
        "server: decode and checks": median_of(stage("decode")),
        "server: defence and aggregation": median_of(stage("aggregate")),
        "server: run state and row": median_of(lambda r: r["wall_seconds"] - sum(stage(k)(r) for k in spent)),
        "round (wall)": median_of(lambda r: r["wall_seconds"]),
    }


def timed(values: list[float]) -> float:
    """The median of rounds 2.. (round 1 warms up)."""
    return statistics.median(values[1:] if len(values) > 1 else values)


def main() -> None:
    p = benchlib.parser(__doc__)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--per-round", type=int, default=100)
    p.add_argument("--shard-size", type=int, default=20)
    p.add_argument("--rounds", type=int, default=4, help="rounds per row (the first is a warm-up)")
    p.add_argument("--workers", type=int, default=0, help="clients trained at once (0: the machine's CPUs)")
    p.add_argument("--skip", nargs="*", default=[], help="rows to leave out: plain pfl fedq")
    p.add_argument("--pfl-worker", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--overrides", nargs="*", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.pfl_worker is not None:
        torch.set_num_threads(args.threads)
        pfl_worker(args.overrides, args.rounds, args.pfl_worker)
        return
    if args.quick:
        args.clients, args.per_round, args.shard_size, args.rounds = 40, 8, 5, 2
    workers = args.workers or len(os.sched_getaffinity(0))
    machine = benchlib.setup(args)
    cache = Path(tempfile.mkdtemp(prefix="fedq-peers-cache-"))
    work = work_overrides(args, cache)
    fp32 = [*work, "quant.bits=32", "comm=fp32"]
    default = [*work, "quant.bits=2"]
    Federation(compose_config(default))  # corpus, tokenizer and shards built before anything is timed
    rows: dict[str, float] = {}
    detail: dict[str, object] = {}

    def measure(name: str, run) -> None:
        rounds = run()
        rows[name] = timed(rounds)
        detail[name] = rounds
        print(f"{name}: {rows[name]:.2f} s per round", flush=True)

    if "plain" not in args.skip:
        measure("plain fp32", lambda: plain_rounds(fp32, args.rounds, workers))
        measure("plain QAT", lambda: plain_rounds(default, args.rounds, workers))
    if "pfl" not in args.skip:
        try:
            import pfl  # noqa: F401  (the optional peer)
        except ImportError:
            print("pfl is not installed (pip install -e .[peers]): its rows are left out", flush=True)
        else:
            measure(f"pfl fp32, {workers} processes x 1 thread", lambda: pfl_rounds(fp32, args.rounds, workers, 1))
            measure(f"pfl fp32, 1 process x {workers} threads", lambda: pfl_rounds(fp32, args.rounds, 1, workers))
    stages: dict[str, dict[str, float]] = {}
    if "fedq" not in args.skip:
        for name, overrides in (("fedq fp32 (quant.bits=32 comm=fp32)", fp32), ("fedq default (quant.bits=2)", default)):
            seconds, fedq_rows = fedq_rounds(overrides)
            rows[name], detail[name] = timed(seconds), {"wall_seconds": seconds, "rows": fedq_rows}
            if "stage_seconds" in fedq_rows[0]:  # (fedq before 2026-12-07 did not time its stages)
                stages[name.split(" (")[0]] = stage_profile(fedq_rows, workers)
            print(f"{name}: {rows[name]:.2f} s per round", flush=True)

    base = rows.get("plain fp32")
    print(f"\n{args.clients} clients of {args.shard_size} pairs, {args.per_round} a round, 1 local Adam step, "
          f"{workers} workers; median s per round of rounds 2..{args.rounds}")
    print(benchlib.table(["what runs the round", "s per round", "x plain fp32"],
                         [[name, value, value / base if base else float("nan")] for name, value in rows.items()]))
    if stages:
        print(f"\nwhere fedq's round goes (s, median of rounds 2..; clients' work divided among {workers} workers)")
        names = list(stages)
        print(benchlib.table(["stage", *names], [[stage, *(stages[n][stage] for n in names)] for stage in stages[names[0]]]))
    pfl_best = min((v for k, v in rows.items() if k.startswith("pfl")), default=None)
    checks = []
    if "plain QAT" in rows and "fedq default (quant.bits=2)" in rows:
        ratio = rows["fedq default (quant.bits=2)"] / rows["plain QAT"]
        checks.append(f"fedq default / plain QAT: {ratio:.2f} (target <= {DEFAULT_TARGET}, moonshot {DEFAULT_MOONSHOT}): "
                      f"{'PASS' if ratio <= DEFAULT_TARGET else 'FAIL'}")
    if pfl_best and "fedq fp32 (quant.bits=32 comm=fp32)" in rows:
        ratio = rows["fedq fp32 (quant.bits=32 comm=fp32)"] / pfl_best
        checks.append(f"fedq fp32 / pfl's faster row: {ratio:.2f} (target <= {FP32_TARGET}, moonshot {FP32_MOONSHOT}): "
                      f"{'PASS' if ratio <= FP32_TARGET else 'FAIL'}")
    print("\n".join(["", *checks]))
    benchlib.write_json(args.out, {"machine": machine, "args": vars(args) | {"pfl_worker": None}, "seconds": rows,
                                   "stages": stages, "detail": detail, "checks": checks})


if __name__ == "__main__":
    benchlib.run(main)
