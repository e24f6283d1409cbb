"""Flower ClientApp: local QAT on this node's shard, reply with the encoded update.

Thin on purpose: the round itself is ``fedq.fl.client.client_round``. The
error-feedback residual of biased codecs lives in the node's persistent
``context.state`` between rounds.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedq.config import FedqConfig, config_from_run_config
from fedq.errors import ConfigError
from fedq.fl.client import client_round, federation_for

RESIDUAL_KEY = "fedq-error-feedback"
ConfigSource = Callable[[Context], FedqConfig]


def make_client_app(config_source: ConfigSource) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = config_source(context)
        num_partitions = int(context.node_config.get("num-partitions", cfg.fl.clients))
        if num_partitions != cfg.fl.clients:
            raise ConfigError(f"this federation has {num_partitions} nodes but the config says clients={cfg.fl.clients}")
        residual = None
        if RESIDUAL_KEY in context.state:
            residual = context.state[RESIDUAL_KEY].to_numpy_ndarrays()[0]
        update = client_round(
            federation_for(cfg),
            partition_id=int(context.node_config["partition-id"]),
            server_round=int(msg.content["config"]["server-round"]),
            downlink_arrays=msg.content["arrays"].to_numpy_ndarrays(),
            residual=residual,
        )
        if update.residual is not None:
            context.state[RESIDUAL_KEY] = ArrayRecord([update.residual])
        content = RecordDict({"arrays": ArrayRecord(update.arrays), "metrics": MetricRecord(update.metrics)})
        return Message(content=content, reply_to=msg)

    return app


# For `flwr run .`: the settings come from the run config (pyproject [tool.flwr.app.config]).
app = make_client_app(lambda context: config_from_run_config(context.run_config))
