"""Flower's strategies as fedq's aggregator: the admitted updates go in as reply messages, the model comes out."""

from __future__ import annotations

import logging
import time

import numpy as np
from flwr.app import DEFAULT_TTL, Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedAdam, FedAvg, FedAvgM, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from fedq.config import FedqConfig
from fedq.fl import protocol
from fedq.fl.settings import strategy_options

WEIGHTS = "weights"  # the one array of a model record: fedq's flat weight vector
# the strategies' attributes a run saves (tests/test_layout.py fails by name if a Flower upgrade removes one)
OPTIMIZER_STATE: dict[type, tuple[str, ...]] = {FedAdam: ("m_t", "v_t"), FedAvgM: ("momentum_vector",)}
STRATEGIES = {"fedavg": FedAvg, "fedavgm": FedAvgM, "fedadam": FedAdam, "fedmedian": FedMedian, "fedtrimmedavg": FedTrimmedAvg,
              "krum": Krum, "multikrum": MultiKrum, "bulyan": Bulyan}


class FlowerAggregator:
    """``fl.strategy``'s Flower strategy, fed the admitted clients' ``global + update`` weighted by target tokens."""

    def __init__(self, cfg: FedqConfig) -> None:
        fl = cfg.fl
        strategy = STRATEGIES[fl.strategy]
        self.strategy = strategy(weighted_by_key=protocol.NUM_TOKENS, fraction_evaluate=0.0, **strategy_options(fl))
        self.steps_itself = isinstance(self.strategy, (FedAdam, FedAvgM))
        logging.getLogger("flwr").setLevel(logging.INFO if fl.verbose else logging.WARNING)

    def __call__(
        self, server_round: int, global_vector: np.ndarray, updates: list[np.ndarray], weights: list[float]
    ) -> np.ndarray:
        if self.steps_itself:  # what their configure_train records: FedOpt a dict of arrays, FedAvgM an ArrayRecord
            adam = isinstance(self.strategy, FedAdam)
            self.strategy.current_arrays = {WEIGHTS: global_vector} if adam else ArrayRecord({WEIGHTS: Array(global_vector)})
        replies = []
        for i, (update, weight) in enumerate(zip(updates, weights)):
            content = RecordDict({"arrays": ArrayRecord({WEIGHTS: Array(global_vector + update)}),
                                  "metrics": MetricRecord({protocol.NUM_TOKENS: float(weight)})})
            metadata = Metadata(0, str(i), i + 1, 0, "", str(server_round), time.time(), DEFAULT_TTL, protocol.TRAIN)
            # Flower's typed overloads omit the metadata form that its own reply messages are built with
            replies.append(Message(content, metadata=metadata))  # type: ignore[call-overload]
        arrays, _ = self.strategy.aggregate_train(server_round, replies)
        return arrays[WEIGHTS].numpy()

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The server optimizer's state, to save with the run (FedAdam's moments, FedAvgM's momentum; none otherwise):
        each a dict of arrays by name (FedAdam) or a list of the record's one array (FedAvgM)."""
        tables = {name: getattr(self.strategy, name) for name in OPTIMIZER_STATE.get(type(self.strategy), ())}
        return {f"{name}.{key}": value for name, table in tables.items() if table is not None
                for key, value in (table.items() if isinstance(table, dict) else [(WEIGHTS, table[0])])}

    def restore_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        if arrays and not self.steps_itself:
            raise ValueError(f"{type(self.strategy).__name__} keeps no optimizer state, got {sorted(arrays)}")
        for name in OPTIMIZER_STATE.get(type(self.strategy), ()):
            table = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{name}.")} or None
            setattr(self.strategy, name, [table[WEIGHTS]] if table and isinstance(self.strategy, FedAvgM) else table)
