"""Flower ClientApp: answer the server's query with the node's partition; run fedq's client round on a train request.

Thin on purpose: the round is ``fedq.fl.client``'s. A request names the client
(partition) it is for: a node of ``fedq.simulate``'s pool plays whichever client
the server sends it, a SuperNode started with ``partition-id`` is that client.
What a client keeps between its rounds is on disk (``fedq.fl.client_state``),
never in Flower's in-memory ``context.state``. A round without an update (a
simulated dropout or crash, a resync) is an error reply with its reason.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedq.fl import protocol
from fedq.fl.client import ClientRun
from fedq.fl.protocol import NoUpdate, TrainRequest

app = ClientApp()
_RUNS: dict[int, ClientRun] = {}  # the run of this process, its config parsed once


def run_of(context: Context) -> ClientRun:
    if context.run_id not in _RUNS:
        _RUNS.clear()
        _RUNS[context.run_id] = ClientRun(context.run_config, context.node_config, context.run_id)
    return _RUNS[context.run_id]


@app.query()
def query(msg: Message, context: Context) -> Message:
    partition = 0 if run_of(context).pooled else ClientRun.partition_of(context.node_config)[0]
    return Message(RecordDict({protocol.METRICS: MetricRecord({protocol.PARTITION: partition})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    content = msg.content
    request = TrainRequest.parse(content.array_records[protocol.ARRAYS].to_numpy_ndarrays(),
                                 content.config_records[protocol.CONFIG])
    try:
        reply = run_of(context).train(request, context.node_config)
    except NoUpdate as failure:
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=failure.reason), reply_to=msg)
    metrics: dict[str, Any] = reply.metrics
    answer = RecordDict({protocol.ARRAYS: ArrayRecord(reply.arrays), protocol.METRICS: MetricRecord(metrics)})
    return Message(answer, reply_to=msg)
