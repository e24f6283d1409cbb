"""What several test files share: a tiny run's settings, a federation of it, and replies as the server sees them."""

from __future__ import annotations

import numpy as np

from fedq.config import compose_config
from fedq.fl import protocol
from fedq.fl.federation import Federation
from fedq.fl.protocol import Reply, TrainReply, TrainRequest

TINY = [  # a federation for in-process tests of the round
    "clients=4", "fl.clients_per_round=2", "fl.local_steps=2", "data.demo_train_size=400", "data.demo_eval_size=10",
    "data.vocab_size=200", "model.d_model=32", "model.ffn_dim=64", "device=cpu",
]
TINY_DEMO = ["data.demo_train_size=600", "data.demo_eval_size=20", "data.vocab_size=300", "model.d_model=32", "model.ffn_dim=64"]
TINY_RUN = ["clients=3", "fl.clients_per_round=2", "fl.rounds=2", "fl.local_steps=2", "fl.eval_every=1", *TINY_DEMO]  # Flower + Ray


def tiny_federation(cache: str, *overrides: str) -> Federation:
    return Federation(compose_config([*TINY, cache, *overrides]))


def reply(partition: int, arrays: list[np.ndarray], tokens: float = 10.0, fingerprint: int | None = None,
          loss: float = 1.0, sim: float | None = None) -> Reply:
    """A client's reply with the metrics a real one carries (``fingerprint`` None: the federation's, set by caller)."""
    metrics = {protocol.NUM_EXAMPLES: 1.0, protocol.NUM_TOKENS: tokens, protocol.TRAIN_LOSS: loss,
               protocol.TRAIN_SECONDS: tokens / 100, protocol.ENCODE_SECONDS: 0.01, protocol.FINGERPRINT: fingerprint}
    if sim is not None:
        metrics[protocol.SIM_SECONDS] = sim
    return Reply(partition, TrainReply(arrays, {k: v for k, v in metrics.items() if v is not None}))


def answering(updates: dict[int, np.ndarray | str], codec, fingerprint: int, tokens: dict[int, float] | None = None):
    """An exchange whose client P answers with ``updates[P]`` encoded by ``codec`` (a str: an error reply)."""
    def send(requests: list[TrainRequest]) -> list[Reply]:
        out = []
        for request in requests:
            update = updates[request.partition]
            if isinstance(update, str):
                out.append(Reply(request.partition, error=update))
            else:
                out.append(reply(request.partition, codec.encode(update, np.random.default_rng(request.partition)),
                                 (tokens or {}).get(request.partition, 10.0), fingerprint))
        return out
    return send

# a row's measured times: they differ between two runs of the same work
TIME_FIELDS = ("wall_seconds", "eval_seconds", "client_train_seconds", "client_encode_seconds", "server_decode_seconds",
               "stage_seconds")
