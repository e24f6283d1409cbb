"""Flower ServerApp: sample clients, aggregate decoded updates, score the global model.

Thin on purpose: the strategy is Flower's (wrapped for compressed payloads),
scoring and results files are fedq functions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedq.compose import config_from_run_config
from fedq.config import FedqConfig
from fedq.federated import Federation, clients_per_round
from fedq.server_side import GlobalModelScorer, RoundReporter
from server.strategy import CompressedFedAdam, CompressedFedAvg, CompressedUpdates, arrays_to_vector

ConfigSource = Callable[[Context], FedqConfig]


def make_strategy(cfg: FedqConfig, federation: Federation) -> CompressedUpdates:
    k = clients_per_round(cfg)
    common = dict(
        uplink=federation.uplink,
        downlink=federation.downlink,
        fraction_train=k / cfg.fl.clients,
        min_train_nodes=k,
        min_available_nodes=cfg.fl.clients,
        fraction_evaluate=0.0,  # the server scores the global model itself
        weighted_by_key="num-tokens",
    )
    if cfg.fl.strategy == "fedadam":
        return CompressedFedAdam(eta=cfg.fl.server_lr, eta_l=cfg.fl.local_lr, beta_1=0.9, beta_2=0.99, **common)
    return CompressedFedAvg(**common)


def run_server(grid: Grid, cfg: FedqConfig, out_dir: Path) -> dict:
    federation = Federation(cfg)
    strategy = make_strategy(cfg, federation)
    scorer = GlobalModelScorer(federation, out_dir)
    reporter = RoundReporter(cfg, federation, scorer, out_dir)
    state = federation.model.state_dict()
    initial = ArrayRecord({name: state[name] for name in reporter.state_names})  # the floating-point state

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        row = reporter.end_round(server_round, arrays_to_vector(arrays), strategy.last_round)
        return MetricRecord({"valid-bleu": row["valid_bleu"]}) if row.get("valid_bleu") is not None else None

    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=cfg.fl.rounds,
        train_config=ConfigRecord({}),
        evaluate_fn=evaluate,
    )
    return reporter.finish(arrays_to_vector(result.arrays if result.arrays is not None else initial))


def make_server_app(config_source: ConfigSource, out_dir: Path) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, config_source(context), out_dir)

    return app


# For `flwr run .`: settings from the run config; results under ./outputs/flwr.
app = make_server_app(lambda context: config_from_run_config(context.run_config), Path("outputs/flwr"))
