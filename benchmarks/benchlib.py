"""What the benchmark scripts share: arguments, the machine line, interleaved timing, tables, synthetic data.

Scripts run as ``python benchmarks/NAME.py``, so this module is imported by its
bare name. Variants are always timed interleaved (A, B, A, B, ...) and reported
as medians, so that background load on a shared CPU hits every variant alike.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from fedq.config import FedqConfig, compose_config
from fedq.data.batching import Batch
from fedq.errors import FedqError
from fedq.model.transformer import Transformer
from fedq.quant import quantize_model

# Special ids of fedq's SubwordTokenizer; synthetic tokens are drawn above them.
PAD_ID, BOS_ID, EOS_ID, FIRST_WORD_ID = 0, 2, 3, 4


# --quick runs of whole federations: a small built-in corpus and vocabulary (the tokenizer trains in a moment).
QUICK_DATA = ["data.demo_train_size=400", "data.demo_eval_size=10", "data.vocab_size=200"]


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, few repeats (seconds)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON to this file")
    p.add_argument("--seed", type=int, default=1)
    return p


def setup(args: argparse.Namespace) -> dict:
    """Set torch threads and seed; print and return the machine description."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    machine = {
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "quick": bool(args.quick),
    }
    print(
        f"machine: {machine['cpu_count']} CPUs ({machine['cpu']}), torch {machine['torch']}, "
        f"{machine['threads']} torch threads, python {machine['python']}" + (" | QUICK smoke run" if args.quick else ""),
        flush=True,
    )
    return machine


def interleaved(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each variant, calls interleaved A, B, A, B, ...; warm-up calls not kept."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def makespan(durations: list[float], workers: int) -> float:
    """Finish time of the jobs on ``workers`` workers, longest first to the least-loaded worker."""
    loads = [0.0] * max(1, workers)
    for d in sorted(durations, reverse=True):
        heapq.heapreplace(loads, loads[0] + d)
    return max(loads)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; floats are printed with 4 significant digits."""
    def cell(value: object) -> str:
        if isinstance(value, bool):
            return "PASS" if value else "FAIL"
        if isinstance(value, float):
            return f"{value:.4g}"
        return "-" if value is None else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path | None, data: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"numbers written to {path}")


def config(overrides: Sequence[str]) -> FedqConfig:
    return compose_config(list(overrides))


def synthetic_model(cfg: FedqConfig, vocab_size: int, quantized: bool = True) -> Transformer:
    """The Transformer of ``cfg.model`` over a synthetic vocabulary, with ``cfg.quant``'s QAT layers."""
    model = Transformer(cfg.model, vocab_size, PAD_ID)
    return quantize_model(model, cfg.quant) if quantized else model


def random_batch(vocab_size: int, max_tokens: int, src_len: int, tgt_len: int, generator: torch.Generator) -> Batch:
    """A full batch of random sentences: ``rows * (src_len + tgt_len + 1) <= max_tokens``."""
    rows = max(1, max_tokens // (src_len + tgt_len + 1))
    src = torch.randint(FIRST_WORD_ID, vocab_size, (rows, src_len), generator=generator)
    tgt = torch.randint(FIRST_WORD_ID, vocab_size, (rows, tgt_len), generator=generator)
    tgt_in = torch.cat([torch.full((rows, 1), BOS_ID), tgt], dim=1)
    tgt_out = torch.cat([tgt, torch.full((rows, 1), EOS_ID)], dim=1)
    return Batch(src, tgt_in, tgt_out, n_src_tokens=src.numel(), n_tgt_tokens=tgt_out.numel())


def random_batches(count: int, vocab_size: int, max_tokens: int, seed: int, src_len: int = 24, tgt_len: int = 24) -> list[Batch]:
    generator = torch.Generator().manual_seed(seed)
    return [random_batch(vocab_size, max_tokens, src_len, tgt_len, generator) for _ in range(count)]


def cycle(batches: Sequence[Batch]):
    while True:
        yield from batches


def run(main: Callable[[], None]) -> None:
    """Run a script's main; a bad input (a FedqError) is one line on stderr and exit status 2."""
    try:
        main()
    except FedqError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
