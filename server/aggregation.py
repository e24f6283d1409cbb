"""Flower's strategies as fedq's aggregator: the admitted updates go in as reply messages, the model comes out.

``fl.strategy``'s entry (``fedq.fl.strategies``) names the Flower strategy: a class of
``flwr.serverapp.strategy``, or ``module:Class`` of a strategy of your own."""

from __future__ import annotations

import importlib
import logging
import time

import numpy as np
from flwr.app import DEFAULT_TTL, Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp import strategy as flower_strategies
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping
from flwr.serverapp.strategy.fedopt import FedOpt

from fedq.config import FedqConfig
from fedq.fl import protocol
from fedq.fl.privacy import ClipNorm, noise_split
from fedq.fl.settings import clients_per_round
from fedq.fl.strategies import STRATEGIES, Strategy

WEIGHTS = "weights"  # the one array of a model record: fedq's flat weight vector
CLIP_NORM_STATE = "dp.clip_norm"  # the run state's name of an adaptive clipping norm


def flower_class(entry: Strategy) -> type:
    """The Flower strategy an entry names: a class of flwr.serverapp.strategy, or module:Class."""
    if ":" in entry.flower:
        module, _, name = entry.flower.partition(":")
        return getattr(importlib.import_module(module), name)
    return getattr(flower_strategies, entry.flower)


class FlowerAggregator:
    """``fl.strategy``'s Flower strategy, fed the admitted clients' ``global + update`` weighted by target tokens;
    with ``fl.dp.clip``, inside Flower's central-DP wrapper, which clips each decoded update, weighs them equally and
    adds the round's noise (``fedq.fl.privacy``)."""

    def __init__(self, cfg: FedqConfig) -> None:
        fl = cfg.fl
        self.entry = STRATEGIES.make(fl.strategy)
        build = flower_class(self.entry)
        self.inner = build(weighted_by_key=protocol.NUM_TOKENS, fraction_evaluate=0.0, **self.entry.options(fl))
        self.private = fl.dp.clip > 0 and not fl.dp.distributed  # distributed DP: the clients added the noise
        self.clipping = ClipNorm.of(fl)
        # under fl.secagg the wrapper is given one update, the round's secure mean: noise z x C / cohort on it
        cohort = clients_per_round(fl)
        z, given = (noise_split(fl)[0] / cohort, 1) if fl.secagg else (noise_split(fl)[0], cohort)
        self.strategy = DifferentialPrivacyServerSideFixedClipping(
            self.inner, z, fl.dp.clip, given) if self.private else self.inner
        self.seed = cfg.seed
        self.steps_itself = self.entry.steps_itself
        logging.getLogger("flwr").setLevel(logging.INFO if fl.verbose else logging.WARNING)

    def __call__(
        self, server_round: int, global_vector: np.ndarray, updates: list[np.ndarray], weights: list[float]
    ) -> np.ndarray:
        if self.steps_itself:  # what their configure_train records: FedOpt a dict of arrays, FedAvgM an ArrayRecord
            by_name = isinstance(self.inner, FedOpt)
            self.inner.current_arrays = {WEIGHTS: global_vector} if by_name else ArrayRecord({WEIGHTS: Array(global_vector)})
        if self.private:  # the wrapper clips each reply's change from these; every client weighs the same
            self.strategy.current_arrays = ArrayRecord({WEIGHTS: Array(global_vector)})
            self.strategy.clipping_norm = self.clipping.norm
            weights = [1.0] * len(updates)
            np.random.seed([self.seed, server_round, 0xD9])  # Flower draws the noise from numpy's global generator
        replies = []
        for i, (update, weight) in enumerate(zip(updates, weights)):
            content = RecordDict({"arrays": ArrayRecord({WEIGHTS: Array(global_vector + update)}),
                                  "metrics": MetricRecord({protocol.NUM_TOKENS: float(weight)})})
            metadata = Metadata(0, str(i), i + 1, 0, "", str(server_round), time.time(), DEFAULT_TTL, protocol.TRAIN)
            # Flower's typed overloads omit the metadata form that its own reply messages are built with
            replies.append(Message(content, metadata=metadata))  # type: ignore[call-overload]
        arrays, _ = self.strategy.aggregate_train(server_round, replies)
        assert arrays is not None  # Flower returns none only for error replies, which fedq never passes on
        return arrays[WEIGHTS].numpy()

    @property
    def clip_norm(self) -> float:
        return self.clipping.norm

    def adapt_clipping(self, server_round: int, unclipped: list[bool]) -> None:
        self.clipping.adapt(unclipped, np.random.default_rng([self.seed, server_round, 0xC11]))

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The server optimizer's state, to save with the run (FedAdam's moments, FedAvgM's momentum; none otherwise):
        each a dict of arrays by name (FedAdam) or a list of the record's one array (FedAvgM); and an adaptive
        clipping norm."""
        tables = {name: getattr(self.inner, name) for name in self.entry.optimizer_state}
        arrays = {f"{name}.{key}": value for name, table in tables.items() if table is not None
                  for key, value in (table.items() if isinstance(table, dict) else [(WEIGHTS, table[0])])}
        if self.clipping.target_quantile:
            arrays[CLIP_NORM_STATE] = np.array([self.clipping.norm], np.float64)
        return arrays

    def restore_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        arrays = dict(arrays)
        if CLIP_NORM_STATE in arrays:
            self.clipping.norm = float(arrays.pop(CLIP_NORM_STATE)[0])
        if arrays and not self.steps_itself:
            raise ValueError(f"{type(self.inner).__name__} keeps no optimizer state, got {sorted(arrays)}")
        by_name = isinstance(self.inner, FedOpt)  # FedOpt: dicts of arrays; FedAvgM: a list of one
        for name in self.entry.optimizer_state:
            table = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{name}.")} or None
            setattr(self.inner, name, table if by_name or not table else [table[WEIGHTS]])
