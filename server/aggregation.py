"""Flower's strategies as fedq's aggregator: the admitted updates go in as reply messages, the model comes out."""

from __future__ import annotations

import logging
import time

import numpy as np
from flwr.app import DEFAULT_TTL, Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedAdam, FedAvg, FedAvgM, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from fedq.config import FedqConfig
from fedq.fl import protocol
from fedq.fl.settings import clients_per_round

WEIGHTS = "weights"  # the one array of a model record: fedq's flat weight vector
MOMENTUM = "momentum"  # the run state's name of FedAvgM's momentum vector
STRATEGIES = {"fedavg": FedAvg, "fedavgm": FedAvgM, "fedadam": FedAdam, "fedmedian": FedMedian, "fedtrimmedavg": FedTrimmedAvg,
              "krum": Krum, "multikrum": MultiKrum, "bulyan": Bulyan}


class FlowerAggregator:
    """``fl.strategy``'s Flower strategy, fed the admitted clients' ``global + update`` weighted by target tokens."""

    def __init__(self, cfg: FedqConfig) -> None:
        fl = cfg.fl
        options = {  # the settings each strategy takes besides the weighting key
            "fedadam": {"eta": fl.server_lr, "eta_l": fl.local_lr, "beta_1": 0.9, "beta_2": 0.99},  # Adam's eta: fl.server_lr
            "fedavgm": {"server_learning_rate": fl.server_lr, "server_momentum": fl.server_momentum},
            "fedtrimmedavg": {"beta": fl.trim_beta},
            "krum": {"num_malicious_nodes": fl.byzantine},
            "bulyan": {"num_malicious_nodes": fl.byzantine},
            "multikrum": {"num_malicious_nodes": fl.byzantine, "num_nodes_to_select": max(1, clients_per_round(fl) - fl.byzantine)},
        }.get(fl.strategy, {})
        self.strategy = STRATEGIES[fl.strategy](weighted_by_key=protocol.NUM_TOKENS, fraction_evaluate=0.0, **options)
        self.steps_itself = isinstance(self.strategy, (FedAdam, FedAvgM))
        logging.getLogger("flwr").setLevel(logging.INFO if fl.verbose else logging.WARNING)

    def __call__(self, server_round: int, global_vector: np.ndarray, updates: list[np.ndarray], weights: list[float]) -> np.ndarray:
        if isinstance(self.strategy, FedAdam):
            self.strategy.current_arrays = {WEIGHTS: global_vector}  # what FedOpt's configure_train records
        elif isinstance(self.strategy, FedAvgM):
            self.strategy.current_arrays = ArrayRecord({WEIGHTS: Array(global_vector)})  # what its configure_train records
        replies = [Message(RecordDict({"arrays": ArrayRecord({WEIGHTS: Array(global_vector + update)}),
                                       "metrics": MetricRecord({protocol.NUM_TOKENS: float(weight)})}),
                           metadata=Metadata(0, str(i), i + 1, 0, "", str(server_round), time.time(), DEFAULT_TTL, protocol.TRAIN))
                   for i, (update, weight) in enumerate(zip(updates, weights))]
        arrays, _ = self.strategy.aggregate_train(server_round, replies)
        return arrays[WEIGHTS].numpy()

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The server optimizer's state, to save with the run (FedAdam's moments, FedAvgM's momentum; none otherwise)."""
        if isinstance(self.strategy, FedAvgM):
            momentum = self.strategy.momentum_vector
            return {} if momentum is None else {f"{MOMENTUM}.{WEIGHTS}": momentum[0]}
        tables = {name: getattr(self.strategy, name, None) or {} for name in ("m_t", "v_t")}
        return {f"{name}.{key}": value for name, table in tables.items() for key, value in table.items()}

    def restore_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        if arrays and not self.steps_itself:
            raise ValueError(f"{type(self.strategy).__name__} keeps no optimizer state, got {sorted(arrays)}")
        if isinstance(self.strategy, FedAvgM):
            momentum = arrays.get(f"{MOMENTUM}.{WEIGHTS}")
            self.strategy.momentum_vector = None if momentum is None else [momentum]
            return
        for name in ("m_t", "v_t") if self.steps_itself else ():
            setattr(self.strategy, name, {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{name}.")} or None)
