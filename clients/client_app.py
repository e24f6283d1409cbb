"""Flower ClientApp: answer the server's query with the node's partition; run fedq's client round on a train request.

Thin on purpose: the round is ``fedq.fl.client``'s. A request names the client
(partition) it is for: a node of ``fedq.simulate``'s pool plays whichever client
the server sends it, several per message (one after another, on the node's one
model), a SuperNode started with ``partition-id`` is that client.
What a client keeps between its rounds is on disk (``fedq.fl.client_state``),
never in Flower's in-memory ``context.state``. A round without an update (a
simulated dropout or crash, a resync) is its reason in the reply's errors record.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedq.fl import protocol
from fedq.fl.client import ClientRun

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
    requests = protocol.unpack_requests({name: record.to_numpy_ndarrays() for name, record in content.array_records.items()},
                                        content.config_records)
    arrays, metrics, errors = protocol.pack_replies(run_of(context).train(requests, context.node_config))
    records: dict[str, Any] = {name: ArrayRecord(values) for name, values in arrays.items()}
    records |= {name: MetricRecord(dict(values)) for name, values in metrics.items()}
    records[protocol.ERRORS] = ConfigRecord(dict(errors))
    return Message(RecordDict(records), reply_to=msg)
