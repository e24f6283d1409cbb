"""The server's root set (``fl.root_pairs``, FLTrust): pairs that no client holds, trained on as a client would.

``fedq.fl.shards`` draws the root set out of the training split before the
clients' split. Each round the server trains the round's global model on it
with the clients' local training (steps, optimizer, lr schedule, QAT) and gives
the change to the defence as its reference update (``RoundView.root_update``).
"""

from __future__ import annotations

import numpy as np

from fedq.data.batching import encode_pairs
from fedq.errors import ConfigError
from fedq.fl.client import round_seed, train_on_pairs
from fedq.fl.federation import Federation
from fedq.fl.weights import model_to_vector, vector_to_model


class RootTrainer:
    """The server's training on its root set; built once per run from the shards' root indices."""

    def __init__(self, federation: Federation) -> None:
        root = federation.data.root
        if root is None:
            raise ConfigError("the shards hold no root set: set fl.root_pairs (e.g. fl.root_pairs=100)")
        train = federation.task.corpus.train
        self.federation = federation
        self.pairs = encode_pairs([train[int(i)] for i in root], federation.tokenizer)

    def update(self, server_round: int, vector: np.ndarray) -> np.ndarray:
        """The change that the round's local training makes to ``vector`` on the root set (the server's model is
        overwritten; whoever scores it loads the vector it scores first)."""
        fed = self.federation
        vector_to_model(fed.model, vector)
        # the root set plays one more client: the seed of a partition no client has
        train_on_pairs(fed, self.pairs, server_round, round_seed(fed.cfg, server_round, fed.cfg.fl.clients))
        return model_to_vector(fed.model) - vector
