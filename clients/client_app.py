"""Flower ClientApp: local QAT on this node's shard, reply with the encoded update.

Thin on purpose: the round itself is ``fedq.fl.client.client_round``. The
error-feedback residual of biased codecs lives in the node's persistent
``context.state`` between rounds. A ``query`` message asks the node which
partition it holds, so that the server can sample by partition id. Simulated
faults (``fl.dropout_rate``, ``fl.crash_rate``) answer with an error reply, as
a device that went offline or failed would.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedq.comm.downlink import BASE_DIGEST_KEY, BASE_ROUND_KEY, DOWNLINK_KIND_KEY, FULL_MODEL_CODECS, Downlink
from fedq.config import FedqConfig, config_from_run_config
from fedq.errors import ConfigError
from fedq.fl.client import PARTITION_KEY, client_round, federation_for
from fedq.fl.faults import CRASH_ERROR, DROPOUT_ERROR, crashes, drops_out

RESIDUAL_KEY = "fedq-error-feedback"
HELD_KEY = "fedq-held-model"  # the model this client holds (deltas build on it) and the round it was synced in
HELD_ROUND_KEY = "fedq-held-round"

app = ClientApp()


def node_config(context: Context) -> FedqConfig:
    """The run's config; the federation's size is the node's ``num-partitions``."""
    try:
        partitions = int(context.node_config["num-partitions"])
        int(context.node_config[PARTITION_KEY])
    except (KeyError, ValueError):
        raise ConfigError(
            "this SuperNode has no integer partition-id / num-partitions; start it with "
            '--node-config "partition-id=K num-partitions=N"'
        ) from None
    cfg = config_from_run_config(context.run_config, clients=partitions)
    if cfg.fl.clients != partitions:
        raise ConfigError(f"this federation has {partitions} nodes but the config says clients={cfg.fl.clients}")
    return cfg


@app.query()
def query(msg: Message, context: Context) -> Message:
    node_config(context)
    content = RecordDict({"metrics": MetricRecord({PARTITION_KEY: int(context.node_config[PARTITION_KEY])})})
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = node_config(context)
    partition, server_round = int(context.node_config[PARTITION_KEY]), int(msg.content["config"]["server-round"])
    if drops_out(cfg.fl.dropout_rate, cfg.seed, server_round, partition):
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=DROPOUT_ERROR), reply_to=msg)
    if crashes(cfg.fl.crash_rate, cfg.seed, server_round, partition):
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=CRASH_ERROR), reply_to=msg)
    residual = None
    if RESIDUAL_KEY in context.state:
        residual = context.state[RESIDUAL_KEY].to_numpy_ndarrays()[0]
    held = None
    if HELD_KEY in context.state:
        held = (context.state[HELD_KEY].to_numpy_ndarrays()[0], int(context.state[HELD_ROUND_KEY]["round"]))
    config = msg.content["config"]
    downlink = Downlink(
        msg.content["arrays"].to_numpy_ndarrays(),
        str(config[DOWNLINK_KIND_KEY]), int(config[BASE_ROUND_KEY]), str(config[BASE_DIGEST_KEY]),
    )
    update = client_round(federation_for(cfg), partition, server_round, downlink, residual, held)
    if update.residual is not None:
        context.state[RESIDUAL_KEY] = ArrayRecord([update.residual])
    if federation_for(cfg).downlink.name not in FULL_MODEL_CODECS:
        context.state[HELD_KEY] = ArrayRecord([update.held])
        context.state[HELD_ROUND_KEY] = ConfigRecord({"round": server_round})
    content = RecordDict({"arrays": ArrayRecord(update.arrays), "metrics": MetricRecord(update.metrics)})
    return Message(content=content, reply_to=msg)
