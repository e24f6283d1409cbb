"""Flower ServerApp: sample clients, aggregate decoded updates, score the global model.

Thin on purpose: the strategy is Flower's (wrapped for compressed payloads in
``server/strategy.py``); scoring, reporting and results files are fedq's
(``fedq/fl/server.py``). The round loop is written out here rather than left to
``Strategy.start`` so that the run can stop at once when a round fails and
score the final model exactly once, after the last round.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedq.config import FedqConfig, clients_per_round, config_from_run_config
from fedq.errors import FedqError
from fedq.fl.client import fingerprint_number
from fedq.fl.federation import Federation
from fedq.fl.server import RoundReporter
from server.strategy import CompressedFedAdam, CompressedFedAvg, CompressedUpdates, record_vector, weights_record

ConfigSource = Callable[[Context], FedqConfig]
REPLY_TIMEOUT_SECONDS = 24 * 3600.0  # Flower's default of one hour is too short for a long local round


class RoundFailedError(FedqError):
    """No client of a round delivered a usable update."""


def make_strategy(cfg: FedqConfig, federation: Federation) -> CompressedUpdates:
    k = clients_per_round(cfg)
    common = dict(
        uplink=federation.uplink,
        downlink=federation.downlink,
        tokenizer_fingerprint=fingerprint_number(federation.task.tokenizer.fingerprint),
        fraction_train=k / cfg.fl.clients,
        min_train_nodes=k,
        min_available_nodes=cfg.fl.clients,
        fraction_evaluate=0.0,  # the server scores the global model itself
        weighted_by_key="num-tokens",
    )
    if cfg.fl.strategy == "fedadam":
        return CompressedFedAdam(eta=cfg.fl.server_lr, eta_l=cfg.fl.local_lr, beta_1=0.9, beta_2=0.99, **common)
    return CompressedFedAvg(server_lr=cfg.fl.server_lr, **common)


def run_round(grid: Grid, strategy: CompressedUpdates, server_round: int, vector: np.ndarray) -> np.ndarray:
    """One round: send, train, receive, aggregate. Returns the new global vector."""
    messages = strategy.configure_train(server_round, weights_record(vector), ConfigRecord(), grid)
    replies = list(grid.send_and_receive(messages, timeout=REPLY_TIMEOUT_SECONDS))
    arrays, _ = strategy.aggregate_train(server_round, replies)
    if arrays is None:
        errors = [reply.error.reason for reply in replies if reply.has_error()]
        reasons = errors + strategy.last_round.rejections
        detail = reasons[0].strip().splitlines()[-1] if reasons else "no client replied"
        raise RoundFailedError(f"round {server_round}: no client delivered an update ({len(replies)} replies); first reason: {detail}")
    return record_vector(arrays)


def run_server(grid: Grid, cfg: FedqConfig, out_dir: Path) -> dict:
    federation = Federation(cfg)
    strategy = make_strategy(cfg, federation)
    reporter = RoundReporter(cfg, federation, out_dir)
    vector = federation.initial_vector()
    reporter.start(vector)
    for server_round in range(1, cfg.fl.rounds + 1):
        vector = run_round(grid, strategy, server_round, vector)
        reporter.end_round(server_round, vector, strategy.last_round)
    return reporter.finish(vector)


def make_server_app(config_source: ConfigSource, out_dir: Path) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, config_source(context), out_dir)

    return app


# For `flwr run .`: settings from the run config; results under ./outputs/flwr.
app = make_server_app(lambda context: config_from_run_config(context.run_config), Path("outputs/flwr"))
