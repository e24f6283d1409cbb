"""A round of partial updates: a codec that sends part of the values (``reads_reference``, e.g. ``mask``) leaves each
update's unsent values at the server's last step; before the round aggregates, they are filled from the clients that
sent them. This is aggregation, not wire format: it lives with the round, not with the codecs."""

from __future__ import annotations

import numpy as np


def fill_from_senders(updates: list[np.ndarray], sent: list[np.ndarray | None], weights: list[float]) -> list[np.ndarray]:
    """A round's updates with each value a client did not send replaced by the weighted mean of the clients that
    sent it (where one did), so that any weighted average of the round averages only what was sent there."""
    if all(mask is None for mask in sent):
        return updates
    total = np.zeros_like(updates[0], dtype=np.float64)
    weight = np.zeros(updates[0].size, np.float64)
    for update, mask, w in zip(updates, sent, weights):
        chosen = np.ones(update.size, bool) if mask is None else mask
        total[chosen] += w * update[chosen]
        weight[chosen] += w
    mean = (total / np.maximum(weight, 1e-300)).astype(np.float32)
    filled = []
    for update, mask in zip(updates, sent):
        if mask is None:
            filled.append(update)
            continue
        missing = ~mask & (weight > 0)
        update = update.copy()
        update[missing] = mean[missing]
        filled.append(update)
    return filled
