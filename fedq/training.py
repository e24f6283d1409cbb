"""The training loop shared by centralized training and federated clients."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedq.data.batching import Batch, token_batches

EncodedPairs = Sequence[tuple[list[int], list[int]]]


def batch_stream(
    encoded: EncodedPairs,
    max_tokens: int,
    pad_id: int,
    bos_id: int,
    eos_id: int,
    seed: int,
) -> Iterator[Batch]:
    """Token-budget batches forever, reshuffled every epoch."""
    epoch = 0
    while True:
        yield from token_batches(encoded, max_tokens, pad_id, bos_id, eos_id, shuffle=True, seed=seed + epoch)
        epoch += 1


def make_optimizer(model: nn.Module, lr: float, betas: Sequence[float] = (0.9, 0.98), weight_decay: float = 0.0, kind: str = "adam") -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=1e-9, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{kind}' (use adam or sgd)")


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


@dataclass
class TrainStats:
    steps: int = 0
    loss_sum: float = 0.0
    tokens: int = 0
    sentences: int = 0
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        """Mean label-smoothed loss per target token."""
        return self.loss_sum / max(self.tokens, 1)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


ProgressCallback = Callable[[int, TrainStats, float], None]


def train_steps(
    model: nn.Module,
    batches: Iterator[Batch],
    optimizer: torch.optim.Optimizer,
    steps: int,
    device: torch.device,
    pad_id: int,
    label_smoothing: float = 0.1,
    clip_norm: float = 1.0,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    deadline: float | None = None,
    on_log: ProgressCallback | None = None,
    log_every: int = 50,
) -> TrainStats:
    """Run up to ``steps`` optimizer steps (stopping early at ``deadline``, a time.time())."""
    model.train()
    stats = TrainStats()
    window = TrainStats()
    start = window_start = time.perf_counter()
    for step in range(1, steps + 1):
        batch = next(batches).to(device)
        logits = model(batch.src, batch.tgt_in)
        loss = sequence_loss(logits, batch.tgt_out, pad_id, label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        (loss / batch.n_tgt_tokens).backward()
        if clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for record in (stats, window):
            record.steps += 1
            record.loss_sum += loss.item()
            record.tokens += batch.n_tgt_tokens
            record.sentences += batch.src.size(0)
        now = time.perf_counter()
        stats.seconds = now - start
        if on_log is not None and (step % log_every == 0 or step == steps):
            window.seconds = now - window_start
            on_log(step, window, stats.seconds)
            window, window_start = TrainStats(), now
        if deadline is not None and time.time() >= deadline:
            break
    return stats

