"""Round overhead under Flower's deployment runtime: a SuperLink and SuperNodes on loopback.

Issue target: in the deployment runtime (SuperLink + 3 SuperNodes, tiny model,
demo corpus) a round's wall time <= 1.5 x the clients' local training time.

Each SuperNode runs every ClientApp call in a fresh process, as on a real
device, so what a client builds before it trains (imports, corpus, tokenizer,
shards, model) is paid every round unless it is cached on disk. The script
runs ``flwr run`` for R rounds with every node sampled in every round and
reports, per round, the server's wall time (send, local training, receive,
aggregate; no evaluation) against the slowest client's local training time.
The first round also builds the caches and is reported apart.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

import benchlib
from fedq.superlink import LocalSuperLink

REPO = Path(__file__).resolve().parent.parent
TARGET = 1.5


def main() -> None:
    p = benchlib.parser(__doc__)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--local-steps", type=int, default=40)
    p.add_argument("--overrides", default="", help="further Hydra overrides, one string")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.local_steps = 2, 5
        args.overrides = " ".join([args.overrides, *benchlib.QUICK_DATA])
    machine = benchlib.setup(args)
    with tempfile.TemporaryDirectory(prefix="fedq-bench-") as tmp:
        out = Path(tmp) / "run"
        overrides = (
            f"fl.clients_per_round={args.nodes} fl.local_steps={args.local_steps} fl.eval_every=0 "
            f"data.max_eval_pairs=50 data.cache_dir={Path(tmp) / 'cache'} seed={args.seed} {args.overrides}"
        )
        run_config = {"num-server-rounds": args.rounds, "overrides": overrides, "out-dir": str(out)}
        lines: list[str] = []
        with LocalSuperLink(supernodes=args.nodes) as link:
            code = link.run(REPO, run_config, on_line=lines.append)
        if code != 0:
            raise SystemExit("\n".join(lines[-30:]))
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    table = [[r["round"], r["wall_seconds"], r["client_train_seconds"], r["wall_seconds"] / r["client_train_seconds"]]
             for r in rows]
    print(benchlib.table(["round", "round wall s", "slowest client's local training s", "ratio"], table))
    steady = rows[1:]
    ratio = statistics.median(r["wall_seconds"] / r["client_train_seconds"] for r in steady)
    print(f"\nmedian ratio after the first round: {ratio:.2f} (target <= {TARGET}) -> {'PASS' if ratio <= TARGET else 'FAIL'}")
    benchlib.write_json(args.out, {"machine": machine, "args": vars(args), "rows": rows, "median_ratio": ratio,
                                   "target": TARGET})


if __name__ == "__main__":
    benchlib.run(main)
