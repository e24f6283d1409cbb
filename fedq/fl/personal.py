"""Personalisation (``fl.personal_steps``): after the last round, each client that holds text out of training
fine-tunes the final model on its own pairs, as its round after the last would (the same local training, the lr
schedule continued), and keeps the result on the device; nothing is sent. The server scores each such model on
that client's held-out pairs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedq.data.corpus import Pairs
from fedq.fl.client import round_seed, train_on_shard
from fedq.fl.federation import Federation
from fedq.fl.weights import vector_to_model


def personal_scores(federation: Federation, final: np.ndarray, own: dict[str, Pairs],
                    score: Callable[[Pairs], float]) -> list[float]:
    """For each client of ``own`` (client id -> its held-out pairs): ``score`` of the final model after
    ``fl.personal_steps`` local steps on the client's own training pairs."""
    cfg = federation.cfg
    after_last = cfg.fl.rounds + 1
    scores = []
    for client, held in own.items():
        vector_to_model(federation.model, final)
        train_on_shard(federation, int(client), after_last, round_seed(cfg, after_last, int(client)),
                       steps=cfg.fl.personal_steps)
        scores.append(score(held))
    return scores
