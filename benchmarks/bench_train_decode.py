"""Training tokens/s and greedy decoding sentences/s with the KV cache vs without.

Issue target: the cache must be >= 3x faster than recomputing the prefix at
output length 30.

Model: ``compose_config(["model=small", *overrides])`` (d=256, 4 heads, ffn 1024,
3+3 layers), fp32 unless the overrides set quant.*. Data: random token batches
over a synthetic vocabulary (``--vocab``, default 8000) unless the overrides
name a corpus (``--overrides data=textdir data.dir=...``): then its tokenizer,
its training batches and its validation sources are used.

Training: ``fedq.engine.train_steps`` (forward, backward, clip, Adam) on
batches of about ``data.max_tokens`` (4096) source+target tokens; reported as
target tokens/s. Decoding: ``greedy_decode`` of ``--sentences`` sources for
exactly ``--out-len`` steps (eos id -1 can never be produced, so no sentence
stops early), ``use_cache=True`` and ``False`` interleaved.

    python benchmarks/bench_train_decode.py [--quick] [--threads 2] [--out FILE]
"""

from __future__ import annotations

import itertools

import torch

import benchlib
from fedq.data.batching import encode_pairs, token_batches
from fedq.engine import StepSettings, make_optimizer, train_steps, training_pairs
from fedq.model.decoding import greedy_decode
from fedq.task import build_model, load_task

NEVER = -1  # an eos id no argmax can return: decoding runs the full length


def prepare(args, cfg):
    """(model, training batches, decoding sources, description of the data)."""
    if any(o.startswith("data") for o in args.overrides):
        task = load_task(cfg)
        tok = task.tokenizer
        pairs = training_pairs(encode_pairs(task.corpus.train, tok), cfg.data.max_len)
        batches = token_batches(pairs, cfg.data.max_tokens, tok.pad_id, tok.bos_id, tok.eos_id, shuffle=True, seed=args.seed)
        batches = batches[: max(args.train_steps * (args.repeats + 1), 1)]
        sources = [tok.encode(src) for src, _ in task.corpus.valid[: args.sentences]]
        width = max(len(s) for s in sources)
        src = torch.full((len(sources), width), tok.pad_id, dtype=torch.long)
        for row, ids in enumerate(sources):
            src[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return build_model(cfg, tok), batches, src, tok.bos_id, f"{task.describe()}"
    model = benchlib.synthetic_model(cfg, args.vocab)
    batches = benchlib.random_batches(args.train_steps * (args.repeats + 1), args.vocab, cfg.data.max_tokens, args.seed)
    generator = torch.Generator().manual_seed(args.seed + 1)
    src = torch.randint(benchlib.FIRST_WORD_ID, args.vocab, (args.sentences, args.src_len), generator=generator)
    return model, batches, src, benchlib.BOS_ID, f"random tokens, synthetic vocabulary {args.vocab}"


def main() -> None:
    p = benchlib.parser(__doc__)
    p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides after model=small, e.g. data=textdir data.dir=DIR")
    p.add_argument("--vocab", type=int, default=8000, help="synthetic vocabulary size (without a data override)")
    p.add_argument("--sentences", type=int, default=64, help="sources decoded per batch")
    p.add_argument("--src-len", type=int, default=20, help="synthetic source length")
    p.add_argument("--out-len", type=int, default=30, help="greedy decoding steps")
    p.add_argument("--train-steps", type=int, default=4, help="training steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    overrides = ["model=small", *args.overrides]
    if args.quick:
        args.sentences, args.train_steps, args.repeats = 8, 1, 2
        overrides.append("data.max_tokens=1024")
    machine = benchlib.setup(args)
    cfg = benchlib.config(overrides)
    model, batches, src, bos_id, data_text = prepare(args, cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {cfg.model.describe()} ({n_params / 1e6:.2f}M parameters), quant.bits={cfg.quant.bits}; data: {data_text}")

    # Training: median over repeats of target tokens/s, one untimed warm-up block first.
    settings = StepSettings(torch.device("cpu"), model.pad_id)
    optimizer = make_optimizer(model, cfg.train.lr, cfg.train.betas)
    stream = benchlib.cycle(batches)
    train_steps(model, stream, optimizer, args.train_steps, settings)
    runs = [train_steps(model, stream, optimizer, args.train_steps, settings) for _ in range(args.repeats)]
    tokens_per_step = sum(r.tokens for r in runs) / sum(r.steps for r in runs)
    train_tps = benchlib.median([r.tokens_per_second for r in runs])
    step_ms = benchlib.median([1000 * r.seconds / r.steps for r in runs])

    # Decoding: cache vs no cache, interleaved.
    model.eval()
    outputs = {}

    def decode(use_cache: bool):
        return lambda: outputs.__setitem__(use_cache, greedy_decode(model, src, bos_id, NEVER, args.out_len, use_cache=use_cache))

    times = benchlib.interleaved({"cache": decode(True), "no cache": decode(False)}, args.repeats)
    lengths = {len(ids) for ids in itertools.chain(*outputs.values())}
    same = outputs[True] == outputs[False]
    sps = {name: src.size(0) / benchlib.median(t) for name, t in times.items()}
    speedup = sps["cache"] / sps["no cache"]

    print(f"\ntraining (fp32 weights unless quant.* set): {tokens_per_step:.0f} target tokens per step, {args.repeats} x {args.train_steps} steps")
    print(benchlib.table(["measure", "median"], [["train step ms", step_ms], ["train target tokens/s", train_tps]]))
    print(f"\ngreedy decoding of {src.size(0)} sentences (source length {src.size(1)}), output length {sorted(lengths)}, {args.repeats} repeats")
    print(benchlib.table(
        ["variant", "median s/batch", "sentences/s", "vs no cache"],
        [[name, benchlib.median(t), sps[name], sps[name] / sps["no cache"]] for name, t in times.items()],
    ))
    target = 3.0
    print(f"\nKV-cache speed-up {speedup:.2f}x (target >= {target:g}x at output length 30): {'PASS' if speedup >= target else 'FAIL'}"
          f"; cached and uncached outputs identical: {same}")
    benchlib.write_json(args.out, {
        "machine": machine,
        "config": {"overrides": overrides, "data": data_text, "parameters": n_params, "sentences": int(src.size(0)),
                   "src_len": int(src.size(1)), "out_len": args.out_len, "repeats": args.repeats, "train_steps": args.train_steps},
        "train": {"step_ms": step_ms, "target_tokens_per_step": tokens_per_step, "target_tokens_per_s": train_tps},
        "decode": {"sentences_per_s": sps, "seconds": times, "cache_speedup": speedup, "target": target,
                   "pass": speedup >= target, "outputs_identical": same, "output_lengths": sorted(lengths)},
    })


if __name__ == "__main__":
    benchlib.run(main)
