"""The training engine shared by centralized training and federated clients.

Batches, optimizer, lr schedule and the step loop; the same functions prepare
the data of ``fedq.train`` and of every client, so both filter long pairs and
turn epochs into steps the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fedq.data.batching import Batch, EncodedPair, token_batches
from fedq.errors import ConfigError


@dataclass
class TrainConfig:
    """``train.*``: centralized training, and the loss and optimizer details every client shares."""

    max_steps: int = 2000
    max_epochs: int = 0  # 0 = bounded by max_steps only
    max_minutes: float = 0.0  # 0 = no time limit
    lr: float = 2e-3
    warmup_steps: int = 200
    betas: tuple = (0.9, 0.98)
    weight_decay: float = 0.0  # centralized training and every client's optimizer
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    log_every: int = 50
    eval_every: int = 0  # steps; 0 = only at the end
    checkpoint_every: int = 500  # steps between checkpoints (a crash loses at most this many); 0 = only at the end


def validate_train_config(cfg: TrainConfig) -> None:
    for name, low in (("max_steps", 1), ("max_epochs", 0), ("max_minutes", 0), ("warmup_steps", 0), ("weight_decay", 0),
                      ("clip_norm", 0), ("log_every", 1), ("eval_every", 0), ("checkpoint_every", 0)):
        if getattr(cfg, name) < low:
            raise ConfigError(f"train.{name}={getattr(cfg, name)} must be >= {low}")
    if cfg.lr <= 0:
        raise ConfigError(f"train.lr={cfg.lr} must be > 0")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise ConfigError(f"train.label_smoothing={cfg.label_smoothing} must be in [0, 1)")
    if len(cfg.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.betas):
        raise ConfigError(f"train.betas={list(cfg.betas)} must be two numbers in [0, 1)")


class SpecialIds(Protocol):
    pad_id: int
    bos_id: int
    eos_id: int


def within_length(encoded: Sequence[EncodedPair], max_len: int) -> list[int]:
    """Indices of the pairs trained on: both sides at most ``max_len`` subword tokens."""
    return [i for i, (src, tgt) in enumerate(encoded) if len(src) <= max_len and len(tgt) <= max_len]


def training_pairs(encoded: Sequence[EncodedPair], max_len: int, what: str = "the training split") -> list[EncodedPair]:
    """The pairs of ``encoded`` within ``max_len``; none left is a clear error, never a silent fallback."""
    kept = [encoded[i] for i in within_length(encoded, max_len)]
    if not kept:
        raise ConfigError(f"no pair of {what} ({len(encoded)} pairs) is within data.max_len={max_len} tokens")
    return kept


def budget_note(pairs: Sequence[EncodedPair], max_tokens: int) -> str | None:
    """A note when some pairs alone exceed the token budget of a batch (each is then a batch of its own)."""
    over = [len(src) + len(tgt) + 1 for src, tgt in pairs if len(src) + len(tgt) + 1 > max_tokens]
    if not over:
        return None
    return (f"note: data.max_tokens={max_tokens} is below the length of {len(over)} of {len(pairs)} training pairs "
            f"(up to {max(over)} tokens): each of them is a batch of its own")


def steps_per_epoch(encoded: Sequence[EncodedPair], max_tokens: int, ids: SpecialIds) -> int:
    return len(token_batches(encoded, max_tokens, ids.pad_id, ids.bos_id, ids.eos_id, shuffle=False))


def planned_steps(steps: int, epochs: int, encoded: Sequence[EncodedPair], max_tokens: int, ids: SpecialIds) -> int:
    """``epochs`` passes over ``encoded`` when epochs > 0, else ``steps``."""
    return epochs * steps_per_epoch(encoded, max_tokens, ids) if epochs > 0 else steps


def batch_stream(encoded: Sequence[EncodedPair], max_tokens: int, ids: SpecialIds, seed: int) -> Iterator[Batch]:
    """Token-budget batches forever, reshuffled every epoch."""
    epoch = 0
    while True:
        yield from token_batches(encoded, max_tokens, ids.pad_id, ids.bos_id, ids.eos_id, shuffle=True, seed=seed + epoch)
        epoch += 1


def make_optimizer(
    model: nn.Module, lr: float, betas: Sequence[float] = (0.9, 0.98), weight_decay: float = 0.0, kind: str = "adam"
) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(betas[0], betas[1]), eps=1e-9, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer '{kind}' (use adam or sgd)")


def inverse_sqrt_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, start_step: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base lr, then decay with 1/sqrt(step) (the Noam shape).

    ``start_step`` resumes the schedule part-way (a federated client in a later round).
    """
    warmup = max(1, warmup_steps)

    def factor(step: int) -> float:
        step = step + 1 + start_step
        return min(step / warmup, math.sqrt(warmup / step))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def sequence_loss(logits: torch.Tensor, target: torch.Tensor, pad_id: int, label_smoothing: float) -> torch.Tensor:
    """Summed label-smoothed cross-entropy over non-pad target tokens."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        target.reshape(-1),
        ignore_index=pad_id,
        label_smoothing=label_smoothing,
        reduction="sum",
    )


@dataclass(frozen=True)
class StepSettings:
    """What every optimizer step needs besides the model, the data and the optimizer."""

    device: torch.device
    pad_id: int
    label_smoothing: float = 0.1
    clip_norm: float = 1.0


@dataclass
class TrainStats:
    steps: int = 0
    loss_sum: float = 0.0
    tokens: int = 0  # target tokens (the loss is per target token)
    src_tokens: int = 0
    sentences: int = 0
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        """Mean label-smoothed loss per target token."""
        return self.loss_sum / max(self.tokens, 1)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def add_step(self, loss: float, batch: Batch) -> None:
        self.steps += 1
        self.loss_sum += loss
        self.tokens += batch.n_tgt_tokens
        self.src_tokens += batch.n_src_tokens
        self.sentences += batch.src.size(0)


ProgressCallback = Callable[[int, TrainStats, float], None]


def train_steps(
    model: nn.Module,
    batches: Iterator[Batch],
    optimizer: torch.optim.Optimizer,
    steps: int,
    settings: StepSettings,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    deadline: float | None = None,
    on_log: ProgressCallback | None = None,
    log_every: int = 50,
    totals: TrainStats | None = None,
) -> TrainStats:
    """Run up to ``steps`` optimizer steps (stopping early at ``deadline``, a time.time()).

    Returns this call's statistics. ``totals``, if given, is updated after every
    step (time included), so a caller interrupted mid-call still knows how many
    steps were taken and at what loss.
    """
    model.train()
    stats = TrainStats()
    window = TrainStats()
    start = window_start = last = time.perf_counter()
    for step in range(1, steps + 1):
        batch = next(batches).to(settings.device)
        logits = model(batch.src, batch.tgt_in)
        loss = sequence_loss(logits, batch.tgt_out, settings.pad_id, settings.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        (loss / batch.n_tgt_tokens).backward()
        if settings.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        value = loss.item()
        now = time.perf_counter()
        for record in (stats, window) if totals is None else (stats, window, totals):
            record.add_step(value, batch)
        stats.seconds = now - start
        if totals is not None:
            totals.seconds += now - last
        last = now
        if on_log is not None and (step % log_every == 0 or step == steps):
            window.seconds = now - window_start
            on_log(step, window, stats.seconds)
            window, window_start = TrainStats(), now
        if deadline is not None and time.time() >= deadline:
            break
    return stats
