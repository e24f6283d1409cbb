"""``python -m fedq.deploy ckpt=PATH [deploy.variants=[fp32,int8,...]]``: CPU-ready variants, measured side by side.

Builds each variant from the checkpoint into ``deploy/VARIANT/`` beside it,
loads it back from those files, and measures, on the same test sentences:

- file MB (the bytes written) and how many times smaller than fp32;
- batch-1 latency: ms per sentence, greedy, one at a time, one thread;
- throughput: sentences/s at batch ``deploy.batch_size`` on all cores;
- test BLEU (sacreBLEU), its difference to fp32, and the share of outputs
  identical to fp32's;
- peak resident memory of translating the test sentences, each variant in a
  process of its own (``deploy.memory``, ``fedq.deploy.memory``).

Prints the table and writes ``deploy/table.md`` and ``deploy/table.json``.
A variant that cannot be built here (its engine is not installed) or cannot
apply to this model is one line in the table's notes; the others go on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from fedq.checkpoint import CheckpointError, read_checkpoint
from fedq.cli import refuse_unused, run_entry_point, run_with_user_errors
from fedq.config import CONFIG_SOURCE, FedqConfig, register_configs
from fedq.data.corpora import load_corpus
from fedq.deploy.memory import measurable as memory_measurable
from fedq.deploy.memory import peak_memory
from fedq.deploy.registry import make_variant
from fedq.deploy.variant import Source, Translator, VariantError
from fedq.errors import ConfigError
from fedq.files import atomic_write
from fedq.scoring import corpus_bleu

log = logging.getLogger("fedq.deploy")  # not __name__: run as __main__


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def throughput_threads(cfg: FedqConfig) -> int:
    """The threads of the throughput measurement: ``threads``, else every core."""
    return cfg.threads or os.cpu_count() or 1


LATENCY_ROUNDS = 5  # interleaved passes over the variants; a variant's latency is the median of its passes


def time_per_sentence(translator: Translator, sources: list[str]) -> float:
    """Mean seconds per sentence, one sentence at a time, one thread."""
    start = time.perf_counter()
    for sentence in sources:
        translator.translate([sentence], 1, 1)
    return (time.perf_counter() - start) / len(sources)


def translate_all(name: str, translator: Translator, folder: Path, sources: list[str], references: list[str],
                  cfg: FedqConfig) -> dict[str, Any]:
    """One variant's outputs, BLEU, size and throughput (all cores), right after it was loaded.

    Each engine first runs once at both thread counts: engines build their sessions and
    thread pools on first use, which is not what a deployed model pays per sentence. The
    throughput pass comes before the next engine is loaded, because an idle engine in the
    same process slowed PyTorch's two-thread batches here by up to 2.7x (one engine per
    process is what a device runs).
    """
    threads = throughput_threads(cfg)
    translator.translate(sources[:1], 1, 1)
    translator.translate(sources[: cfg.deploy.batch_size], cfg.deploy.batch_size, threads)
    start = time.perf_counter()
    outputs = translator.translate(sources, cfg.deploy.batch_size, threads)
    seconds = time.perf_counter() - start
    bleu = corpus_bleu(outputs, references)
    size = folder_bytes(folder)
    return {
        "variant": name, "file_mb": size / 1e6, "sentences_per_s": len(sources) / seconds, "test_bleu": bleu.score,
        "bleu_signature": bleu.signature, "outputs": outputs, "file_bytes": size,
    }


def add_latency(rows: list[dict[str, Any]], translators: list[Translator], sources: list[str]) -> None:
    """Batch-1 latency, the passes interleaved over the variants so that the machine's drift hits them alike;
    then every row against the first (fp32)."""
    passes: list[list[float]] = [[] for _ in translators]
    for _ in range(LATENCY_ROUNDS):
        for times, translator in zip(passes, translators):
            times.append(time_per_sentence(translator, sources))
    for row, times in zip(rows, passes):
        row["latency_ms"] = 1000 * statistics.median(times)
    reference = rows[0]
    for row in rows[1:]:
        row["smaller_than_fp32"] = reference["file_bytes"] / row["file_bytes"]
        row["latency_speedup"] = reference["latency_ms"] / row["latency_ms"]
        row["delta_bleu"] = row["test_bleu"] - reference["test_bleu"]
        row["identical_pct"] = 100.0 * sum(a == b for a, b in zip(row["outputs"], reference["outputs"])) / len(row["outputs"])


def table(rows: list[dict[str, Any]], notes: list[str], batch_size: int, threads: int) -> str:
    memory = bool(rows) and "peak_mb" in rows[0]
    header = ["variant", "file MB", "× smaller than fp32", "batch-1 latency, ms/sentence (1 thread)", "× faster",
              f"sentences/s at batch {batch_size} ({threads} thread{'s' if threads != 1 else ''})", "test BLEU",
              "Δ BLEU vs fp32", "outputs identical to fp32"]
    header += ["peak memory MB (above the shared floor)"] if memory else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["variant"], f"{r['file_mb']:.2f}", f"{r.get('smaller_than_fp32', 1.0):.2f}", f"{r['latency_ms']:.1f}",
                 f"{r.get('latency_speedup', 1.0):.2f}", f"{r['sentences_per_s']:.1f}", f"{r['test_bleu']:.2f}",
                 f"{r.get('delta_bleu', 0.0):+.2f}", f"{r.get('identical_pct', 100.0):.0f}%"]
        cells += [f"{r['peak_mb']:.0f} ({r['above_floor_mb']:.0f})"] if memory else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [f"\n- {note}" for note in notes]) + "\n"


def deploy(cfg: FedqConfig) -> list[dict[str, Any]]:
    if not cfg.ckpt:
        raise ConfigError("give the checkpoint to deploy: python -m fedq.deploy ckpt=PATH")
    refuse_unused(cfg, "deploy")
    if cfg.decode.beam != 1:
        raise ConfigError(f"decode.beam={cfg.decode.beam}: fedq.deploy measures greedy decoding in every engine (decode.beam=1)")
    checkpoint = read_checkpoint(cfg.ckpt)
    if not checkpoint.deployed_path.is_file():
        raise CheckpointError(f"{checkpoint.folder} has no deployed file {checkpoint.deployed_path.name}")
    source = Source(checkpoint, cfg.decode)
    model = source.model
    test = load_corpus(checkpoint.config.data).test
    test = test[: cfg.deploy.test_sentences or None]
    sources, references = [s for s, _ in test], [t for _, t in test]
    out = Path(cfg.deploy.out_dir).expanduser() if cfg.deploy.out_dir else checkpoint.folder / "deploy"
    log.info(f"deploying {checkpoint.folder} ({model.shape.d_model}-dim, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
             f"parameters) on {len(sources)} test sentences; variants: {', '.join(cfg.deploy.variants)}")
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    translators: list[Translator] = []
    for stale in ("table.md", "table.json"):  # the table written is the one measured now
        (out / stale).unlink(missing_ok=True)
    for name in ["fp32"] + [v for v in cfg.deploy.variants if v != "fp32"]:
        variant, folder = make_variant(name, cfg.deploy), out / name
        try:
            variant.check(source)
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            variant.build(source, folder)
            translator = variant.load(folder, source)
        except Exception as err:  # noqa: BLE001 (an engine failing on one model is that variant's note, not the end)
            shutil.rmtree(folder, ignore_errors=True)  # nothing half-written stays behind
            reason = str(err) if isinstance(err, VariantError) else f"failed to build ({type(err).__name__}: " \
                f"{(str(err).strip().splitlines() or [''])[0][:200]})"
            notes.append(f"{name}: {reason}")
            log.info(f"{name}: skipped: {reason}")
            if name == "fp32":
                raise
            continue
        row = translate_all(name, translator, folder, sources, references, cfg)
        rows.append(row)
        translators.append(translator)
        log.info(f"{name}: {row['file_mb']:.2f} MB, {row['sentences_per_s']:.1f} sentences/s at batch "
                 f"{cfg.deploy.batch_size}, test BLEU {row['test_bleu']:.2f}")
    log.info(f"batch-1 latency: {LATENCY_ROUNDS} passes of {cfg.deploy.latency_sentences} sentences, interleaved")
    add_latency(rows, translators, sources[: cfg.deploy.latency_sentences])
    if cfg.deploy.memory and not memory_measurable():
        notes.append("peak memory: not measured (it is read from Linux's /proc)")
    elif cfg.deploy.memory:
        log.info(f"peak memory: each variant translating the {len(sources)} sentences in a process of its own")
        for row in rows:
            row.update(peak_memory(checkpoint.folder, row["variant"], out / row["variant"], len(sources),
                                   throughput_threads(cfg), cfg.deploy, cfg.decode))
    torch.set_num_threads(throughput_threads(cfg))
    text = table(rows, notes, cfg.deploy.batch_size, throughput_threads(cfg))
    atomic_write(out / "table.md", text)
    listed = [{k: v for k, v in r.items() if k != "outputs"} for r in rows] + [{"notes": notes}]
    atomic_write(out / "table.json", json.dumps(listed, indent=2))
    log.info("\n" + text + f"\n{rows[0]['bleu_signature'] if rows else ''}\ntable: {out / 'table.md'}")
    return rows


@hydra.main(config_path=CONFIG_SOURCE, config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    run_with_user_errors(deploy, cfg)


register_configs()

if __name__ == "__main__":
    run_entry_point(main)
