"""Uplink and downlink codecs: compression ratio and encode/decode time vs a round's local training.

Issue targets:
- compression ratio (fp32 bytes / sent bytes, same update) >= 0.95 * 32/b for
  uniform at b = 8, 4, 2 (packed or ANS-coded); >= 28 for sign; >= 100 for topk
  at 1% density with 4-bit values and for mask at 15% with 2-bit values and at 20% with grid values at step 1.6
  (the frontier's best uplink); the grid's ratio is reported (it depends on
  the update);
- codec encode + decode time <= 5% of a round's local training time.

The update is real, not random: for each model preset (``--models``, default
small and tiny) the model is built with QAT (``--overrides``, default
``quant.bits=2 quant.method=lsq``: 2-bit lsq on all linear layers) exactly as a federated client
builds it, trained for ``fl.local_steps`` (20) steps like round 1 of
``Federation.client_round`` (same optimizer and lr schedule) on random batches
of ``data.max_tokens`` tokens, and the update is ``local - global`` over the
vector the client sends (all float state, quantizer steps included). Those
local steps, timed, are the "local round time" the codec time is compared with.

Encode time is what the client pays: ``encode_with_feedback`` (encode, plus a
decode for the residual) for the biased codecs sign and topk, ``encode`` for the
others. Decode time is the server's ``decode``. Codecs are timed interleaved.

The downlink (``fedq.comm.downlink``) is timed for one client that holds the
model before the round and is sent the model after it: the server's
``Broadcaster.message_for`` (encode the delta, update what it believes the client
holds) and the client's ``receive`` (decode, add).

    python benchmarks/bench_codecs.py [--quick] [--threads 2] [--models small tiny] [--out FILE]
"""

from __future__ import annotations

import time

import numpy as np
import torch

import benchlib
from fedq.comm import encode_with_feedback, make_codec, payload_bytes
from fedq.comm.codecs import Stratum, codec_settings
from fedq.comm.downlink import Broadcaster, SeededModel, receive
from fedq.engine import StepSettings, inverse_sqrt_schedule, make_optimizer, train_steps
from fedq.fl.weights import model_to_vector

TIME_TARGET = 0.05
VOCAB = {"small": 8000, "tiny": 1000}  # the vocabularies these presets are used with (Multi30k-sized, demo)
# (row label, make_codec kwargs, ratio target or None)
CODECS = [
    ("fp32", dict(name="fp32"), None),
    ("fp16", dict(name="fp16"), None),
    ("uniform 8-bit", dict(name="uniform", bits=8), 0.95 * 32 / 8),
    ("uniform 4-bit", dict(name="uniform", bits=4), 0.95 * 32 / 4),
    ("uniform 2-bit", dict(name="uniform", bits=2), 0.95 * 32 / 2),
    ("sign", dict(name="sign"), 28.0),
    ("topk 1% 4-bit", dict(name="topk", bits=4, density=0.01), 100.0),
    ("uniform 2-bit, ANS-coded", dict(name="uniform", bits=2, entropy_coding=True), 0.95 * 32 / 2),
    ("grid step 4", dict(name="grid", step=4.0), None),
    ("grid step 8", dict(name="grid", step=8.0), None),
    ("grid step 16", dict(name="grid", step=16.0), None),
    ("mask 15% 2-bit", dict(name="mask", density=0.15, bits=2), 100.0),
    ("mask 24% 2-bit, ANS-coded", dict(name="mask", density=0.24, bits=2, entropy_coding=True), None),
    ("mask 20% grid step 1.6, correlated", dict(name="mask", density=0.2, step=1.6), 100.0),
]
CORRELATED = {"mask 20% grid step 1.6, correlated"}  # encoded as slot 0 of a round of 5 (comm.uplink.correlated)
DOWNLINKS = [
    ("uniform 8-bit deltas", dict(name="uniform", bits=8)),
    ("uniform 4-bit deltas (default)", dict(name="uniform", bits=4)),
    ("uniform 2-bit deltas", dict(name="uniform", bits=2)),
    ("grid step 1 deltas", dict(name="grid", step=1.0)),
    ("grid step 1.5 deltas", dict(name="grid", step=1.5)),
]


def local_update(args, preset: str) -> tuple[np.ndarray, np.ndarray, float, str]:
    """(model before, update vector, seconds of the local steps, description) for one model preset."""
    cfg = benchlib.config([f"model={preset}", *args.overrides])
    vocab = args.vocab or VOCAB.get(preset, cfg.data.vocab_size)
    model = benchlib.synthetic_model(cfg, vocab)
    global_vector = model_to_vector(model)
    steps = args.local_steps or cfg.fl.local_steps
    batches = benchlib.random_batches(steps, vocab, cfg.data.max_tokens, args.seed)
    optimizer = make_optimizer(model, cfg.fl.local_lr, cfg.train.betas, kind=cfg.fl.local_optimizer)
    scheduler = inverse_sqrt_schedule(optimizer, cfg.train.warmup_steps)
    start = time.perf_counter()
    settings = StepSettings(torch.device("cpu"), model.pad_id, cfg.train.label_smoothing, cfg.train.clip_norm)
    train_steps(model, iter(batches), optimizer, steps, settings, scheduler=scheduler)
    seconds = time.perf_counter() - start
    update = model_to_vector(model) - global_vector
    text = (f"{preset}: {update.size / 1e6:.2f}M values, quant.bits={cfg.quant.bits} {cfg.quant.method} {cfg.quant.scope}, "
            f"vocab {vocab}; {steps} local steps of {batches[0].n_src_tokens + batches[0].n_tgt_tokens} tokens "
            f"took {seconds:.2f}s; |update| mean {np.abs(update).mean():.2e}, max {np.abs(update).max():.2e}")
    return global_vector, update, seconds, text


def with_block_size(args, name: str, **settings: object):
    """The codec with ``--block-size`` where it takes one."""
    return make_codec(name, **settings, **({"block_size": args.block_size} if "block_size" in codec_settings(name) else {}))


def bench_codecs(args, update: np.ndarray, round_seconds: float) -> list[dict]:
    codecs = {label: (with_block_size(args, **kwargs), target) for label, kwargs, target in CODECS}
    payloads: dict[str, list[np.ndarray]] = {}

    def encoder(label: str, codec):
        def run():
            rng = np.random.default_rng(args.seed)
            if codec.biased:
                payloads[label], _ = encode_with_feedback(codec, update, None, rng)
            else:
                payloads[label] = codec.encode(update, rng, Stratum(args.seed, 1, 0, 5) if label in CORRELATED else None)
        return run

    encode_times = benchlib.interleaved({label: encoder(label, c) for label, (c, _) in codecs.items()}, args.repeats)
    decode_times = benchlib.interleaved(
        {label: (lambda c=c, label=label: c.decode(payloads[label], update.size)) for label, (c, _) in codecs.items()},
        args.repeats,
    )
    rows = []
    for label, (codec, target) in codecs.items():
        sent = payload_bytes(payloads[label])
        ratio = update.nbytes / sent
        encode_s, decode_s = benchlib.median(encode_times[label]), benchlib.median(decode_times[label])
        fraction = (encode_s + decode_s) / round_seconds
        error = codec.decode(payloads[label], update.size) - update
        rows.append({
            "codec": label, "sent_bytes": sent, "fp32_bytes": int(update.nbytes), "ratio": ratio, "target": target,
            "ratio_pass": ratio >= target if target is not None else None,
            "encode_ms": 1000 * encode_s, "decode_ms": 1000 * decode_s, "fraction_of_round": fraction,
            "time_pass": fraction <= TIME_TARGET,
            "relative_error": float(np.linalg.norm(error) / max(np.linalg.norm(update), 1e-30)),
        })
    return rows


def bench_downlinks(args, before: np.ndarray, update: np.ndarray, round_seconds: float) -> list[dict]:
    """One client synced on ``before`` is sent ``before + update``: server and client time, bytes."""
    after = before + update
    seeded = SeededModel.of(before)
    rows = []
    for label, kwargs in DOWNLINKS:
        codec = with_block_size(args, **kwargs)
        server_s, client_s, sent = [], [], 0
        for _ in range(args.repeats):
            broadcaster = Broadcaster(codec, seeded)  # the client holds the seeded model, `before`
            start = time.perf_counter()
            message = broadcaster.message_for(0, after, 1)
            server_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            held = receive(codec, message, after.size, None, None, seeded)
            client_s.append(time.perf_counter() - start)
            sent = message.nbytes
        fraction = (benchlib.median(server_s) + benchlib.median(client_s)) / round_seconds
        rows.append({
            "downlink": label, "sent_bytes": sent, "ratio": after.nbytes / sent,
            "server_ms": 1000 * benchlib.median(server_s), "client_ms": 1000 * benchlib.median(client_s),
            "fraction_of_round": fraction, "time_pass": fraction <= TIME_TARGET,
            "relative_error": float(np.linalg.norm(held - after) / np.linalg.norm(update)),
        })
    return rows


def main() -> None:
    p = benchlib.parser(__doc__)
    p.add_argument("--models", nargs="+", default=["small", "tiny"], help="model presets")
    p.add_argument("--overrides", nargs="*", default=["quant.bits=2", "quant.method=lsq"], help="Hydra overrides after model=PRESET")
    p.add_argument("--vocab", type=int, default=0, help="synthetic vocabulary (0: 8000 for small, 1000 for tiny)")
    p.add_argument("--local-steps", type=int, default=0, help="0: fl.local_steps of the config")
    p.add_argument("--block-size", type=int, default=1024, help="comm.uplink.block_size")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.quick:
        args.local_steps, args.repeats, args.models = 2, 2, ["tiny"]
        args.overrides = [*args.overrides, "data.max_tokens=1024"]
    machine = benchlib.setup(args)
    results = {}
    for preset in args.models:
        before, update, round_seconds, text = local_update(args, preset)
        rows = bench_codecs(args, update, round_seconds)
        downlinks = bench_downlinks(args, before, update, round_seconds)
        print(f"\n{text}")
        print(benchlib.table(
            ["codec", "sent KB", "ratio", "target", "pass", "encode ms", "decode ms", "(enc+dec) / round", "<= 5%", "rel. error"],
            [[r["codec"], r["sent_bytes"] / 1e3, r["ratio"], r["target"], r["ratio_pass"], r["encode_ms"], r["decode_ms"],
              f"{100 * r['fraction_of_round']:.2f}%", r["time_pass"], r["relative_error"]] for r in rows],
        ))
        print(benchlib.table(
            ["downlink", "sent KB", "ratio", "server ms", "client ms", "(server+client) / round", "<= 5%", "error / |update|"],
            [[r["downlink"], r["sent_bytes"] / 1e3, r["ratio"], r["server_ms"], r["client_ms"],
              f"{100 * r['fraction_of_round']:.2f}%", r["time_pass"], r["relative_error"]] for r in downlinks],
        ))
        results[preset] = {"description": text, "local_round_seconds": round_seconds, "numel": int(update.size),
                           "codecs": rows, "downlinks": downlinks}
    print("\nencode = client side (encode_with_feedback for sign/topk), decode = server side; rel. error = |decoded - update| / |update| of one encode")
    print("downlink: server = Broadcaster.message_for (encode the delta, update the held model), client = receive; "
          "error / |update| = |held - sent model| / |the round's update| (what error feedback carries to the next delta)")
    benchlib.write_json(args.out, {"machine": machine, "config": {"overrides": args.overrides, "block_size": args.block_size,
                                                                  "repeats": args.repeats}, "models": results})


if __name__ == "__main__":
    benchlib.run(main)
