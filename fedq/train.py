"""Centralized training: ``python -m fedq.train [overrides]``.

Same model, QAT layers, data preparation and loss as a federated client, on
the whole training split. Ends by packing the deployed form and scoring *that*
with sacreBLEU.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fedq.checkpoint import save_checkpoint, update_meta
from fedq.cli import format_seconds, refuse_unused, run_dir, run_entry_point, run_with_user_errors
from fedq.config import CONFIG_SOURCE, FedqConfig, register_configs
from fedq.data.batching import encode_pairs
from fedq.engine import (
    StepSettings,
    TrainStats,
    batch_stream,
    budget_note,
    inverse_sqrt_schedule,
    make_optimizer,
    planned_steps,
    steps_per_epoch,
    train_steps,
    training_pairs,
)
from fedq.quant import describe_quantization
from fedq.scoring import evaluate_bleu, score_checkpoint
from fedq.task import (
    build_model,
    configure_threads,
    load_task,
    resolve_device,
    seed_everything,
)

log = logging.getLogger("fedq.train")  # not __name__: run as __main__


def train(cfg: FedqConfig, out_dir: Path) -> dict:
    refuse_unused(cfg, "train")
    configure_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    task = load_task(cfg)
    tokenizer = task.tokenizer
    log.info(task.describe())

    model = build_model(cfg, tokenizer, cfg.init_from)
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(f"model ({cfg.model.describe()}): {n_params / 1e6:.2f}M parameters on {device}; {describe_quantization(model)}")

    encoded = training_pairs(encode_pairs(task.corpus.train, tokenizer), cfg.data.max_len)
    if note := budget_note(encoded, cfg.data.max_tokens):
        log.info(note)
    batches_per_epoch = steps_per_epoch(encoded, cfg.data.max_tokens, tokenizer)
    total_steps = planned_steps(cfg.train.max_steps, cfg.train.max_epochs, encoded, cfg.data.max_tokens, tokenizer)
    deadline = time.time() + 60 * cfg.train.max_minutes if cfg.train.max_minutes > 0 else None
    log.info(f"training: {len(encoded)} pairs, {batches_per_epoch} batches/epoch of <= {cfg.data.max_tokens} tokens, "
             f"{total_steps} steps" + (f", stopping after {cfg.train.max_minutes:g} min" if deadline else ""))

    optimizer = make_optimizer(model, cfg.train.lr, cfg.train.betas, cfg.train.weight_decay)
    scheduler = inverse_sqrt_schedule(optimizer, cfg.train.warmup_steps)
    stream = batch_stream(encoded, cfg.data.max_tokens, tokenizer, seed=cfg.seed)
    settings = StepSettings(device, tokenizer.pad_id, cfg.train.label_smoothing, cfg.train.clip_norm)
    totals = TrainStats()

    def show_step(step: int, window: TrainStats, elapsed: float) -> None:
        global_step = totals.steps
        eta = totals.seconds / global_step * (total_steps - global_step)
        if deadline is not None:
            eta = min(eta, max(0.0, deadline - time.time()))
        log.info(f"step {global_step}/{total_steps} (epoch {global_step / batches_per_epoch:.2f}) | loss {window.loss:.3f} | "
                 f"{window.tokens_per_second:,.0f} tgt tok/s | lr {scheduler.get_last_lr()[0]:.2e} | "
                 f"{format_seconds(totals.seconds)} elapsed, ETA {format_seconds(eta)}")

    folder = out_dir / "checkpoint"

    def save() -> None:
        meta = {"steps": totals.steps, "train_loss": totals.loss, "train_seconds": totals.seconds,
                "tgt_tokens_per_second": totals.tokens_per_second}
        save_checkpoint(folder, model, cfg, tokenizer, meta)

    def next_stop(step: int) -> int:
        """The next step at which to checkpoint or evaluate (or the end)."""
        periods = (cfg.train.checkpoint_every, cfg.train.eval_every)
        stops = [total_steps] + [(step // every + 1) * every for every in periods if every > 0]
        return min(stops)

    try:
        while totals.steps < total_steps:
            train_steps(
                model, stream, optimizer, next_stop(totals.steps) - totals.steps, settings, scheduler=scheduler,
                deadline=deadline, on_log=show_step, log_every=cfg.train.log_every, totals=totals,
            )
            if deadline is not None and time.time() >= deadline:
                log.info(f"time limit of {cfg.train.max_minutes:g} min reached at step {totals.steps}")
                break
            if totals.steps < total_steps:
                save()  # a crash later loses at most the steps since this one
                if cfg.train.eval_every > 0 and totals.steps % cfg.train.eval_every == 0:
                    valid, _ = evaluate_bleu(model, tokenizer, task.corpus.valid, cfg.decode, device)
                    log.info(f"step {totals.steps}: valid {valid} (training-form weights)")
    except KeyboardInterrupt:
        save()
        log.info(f"interrupted at step {totals.steps}; checkpoint saved in {folder} "
                 f"(score it with: python -m fedq.evaluate ckpt={folder})")
        raise
    save()
    scores = score_checkpoint(folder, task.corpus, cfg.decode, device)
    update_meta(folder, **scores)
    log.info(f"checkpoint: {folder}")
    return scores


@hydra.main(config_path=CONFIG_SOURCE, config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    run_with_user_errors(lambda config: train(config, run_dir()), cfg)


register_configs()

if __name__ == "__main__":
    run_entry_point(main)
