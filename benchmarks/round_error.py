"""One round's aggregation error per uplink scheme, on real client updates, against the bytes each scheme sends.

Trains the round's clients once from a run's saved global model (its ``state/``), then encodes the same
updates with every scheme, reads them as the server does (``decode_update``, ``fill_from_senders``, the
token-weighted mean) and compares the round's aggregate with the fp32 one. It splits a scheme's error into
what sampling costs (a value's step from the clients that sent it instead of all) and what rounding costs, which
is what tells a codec's operating point (density, bits or step) without a 20-round run per point.

    python benchmarks/round_error.py outputs/frontier/mask24_ans_corr_m0.5 [--trials 3]

Prints a table and writes benchmarks/results/round_error.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from fedq.comm import payload_bytes
from fedq.comm.codecs import Stratum
from fedq.fl.partial import fill_from_senders
from fedq.comm.downlink import Broadcaster
from fedq.comm.settings import uplink_codec
from fedq.config import compose_config
from fedq.fl import protocol
from fedq.fl.client import client_round
from fedq.fl.client_state import ClientStore
from fedq.fl.federation import Federation
from fedq.fl.protocol import TrainRequest

MAIN = ["clients=20", "quant.bits=2", "seed=1"]
SCHEMES = {  # uplink operating points, the frontier study's rows among them (configs/experiment/frontier/)
    "uniform2": [],
    "uniform2_ans": ["comm.uplink.entropy_coding=true"],
    "grid4": ["comm.uplink.name=grid", "comm.uplink.step=4"],
    "grid8_corr": ["comm.uplink.name=grid", "comm.uplink.step=8", "comm.uplink.correlated=true"],
    "grid16_corr": ["comm.uplink.name=grid", "comm.uplink.step=16", "comm.uplink.correlated=true"],
    "mask24_ans": ["comm.uplink.name=mask", "comm.uplink.density=0.24", "comm.uplink.entropy_coding=true"],
    "mask24_ans_corr": ["comm.uplink.name=mask", "comm.uplink.density=0.24", "comm.uplink.entropy_coding=true",
                        "comm.uplink.correlated=true"],
    **{f"mask{round(100 * d)}_grid{s:g}_corr": ["comm.uplink.name=mask", f"comm.uplink.density={d}", f"comm.uplink.step={s}",
                                                 "comm.uplink.correlated=true"]
       for d, s in ((0.2, 1.3), (0.2, 1.6), (0.2, 2.0), (0.3, 3.0), (0.4, 3.0), (0.4, 4.0), (0.6, 6.0), (0.6, 8.0),
                    (0.8, 8.0), (0.8, 12.0), (1.0, 12.0), (1.0, 16.0))},
}


def client_updates(run: Path, clients: int) -> tuple[list[np.ndarray], list[float], int]:
    """The updates (and target tokens) of partitions 0..clients-1 trained one round from ``run``'s global model."""
    vector = load_file(run / "state" / "arrays.safetensors")["global_weights"]
    server_round = int(json.loads((run / "state" / "state.json").read_text())["rounds"]) + 1
    federation = Federation(compose_config([*MAIN, "comm=fp32"]))
    updates, tokens = [], []
    for partition in range(clients):
        print(f"training client {partition + 1}/{clients} (round {server_round})", flush=True)
        message = Broadcaster(federation.downlink, federation.seeded).message_for(partition, vector, server_round)
        reply = client_round(federation, TrainRequest(partition, server_round, message), ClientStore(None))
        updates.append(federation.uplink.decode(reply.arrays, federation.numel))
        tokens.append(float(reply.metrics[protocol.NUM_TOKENS]))
    return updates, tokens, server_round


def round_error(settings: list[str], updates: list[np.ndarray], tokens: list[float], server_round: int,
                trials: int) -> dict[str, float]:
    """The scheme's mean squared aggregation error (relative to the fp32 aggregate's mean square) and its ratio."""
    cfg = compose_config([*MAIN, *settings])
    codec = uplink_codec(cfg.comm, cfg.quant.bits)
    truth = np.average(updates, axis=0, weights=tokens)
    errors, sent_bytes = [], []
    for trial in range(trials):
        decoded, masks = [], []
        for slot, update in enumerate(updates):
            stratum = Stratum(trial, server_round, slot, len(updates)) if cfg.comm.uplink.correlated else None
            arrays = codec.encode(update, np.random.default_rng([trial, slot]), stratum)
            sent_bytes.append(payload_bytes(arrays))
            read = codec.decode_update(arrays, update.size, np.zeros(update.size, np.float32))
            decoded.append(read.values)
            masks.append(read.sent)
        aggregate = np.average(fill_from_senders(decoded, masks, tokens), axis=0, weights=tokens)
        errors.append(float(np.mean((aggregate - truth) ** 2)))
    signal = float(np.mean(truth**2))
    return {"error": float(np.mean(errors)) / signal, "ratio": 4 * updates[0].size / float(np.mean(sent_bytes))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run directory with state/ (its global model)")
    parser.add_argument("--clients", type=int, default=5, help="clients of the round (the main job: 5)")
    parser.add_argument("--trials", type=int, default=3, help="encodings per scheme, averaged")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/round_error.json"))
    args = parser.parse_args()
    updates, tokens, server_round = client_updates(args.run, args.clients)
    truth = np.average(updates, axis=0, weights=tokens)
    spread = float(np.average([np.mean((u - truth) ** 2) for u in updates], weights=tokens) / np.mean(truth**2))
    print(f"a client's update differs from the round's mean by {spread:.2f} x the mean's mean square")
    rows = {}
    print(f"{'scheme':<22} {'uplink ratio':>12} {'round error':>12}")
    for name, settings in SCHEMES.items():
        rows[name] = round_error(settings, updates, tokens, server_round, args.trials)
        print(f"{name:<22} {rows[name]['ratio']:>11.1f}x {rows[name]['error']:>12.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": str(args.run), "round": server_round, "client_spread": spread, "schemes": rows},
                                   indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
