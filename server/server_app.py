"""Flower ServerApp: find the nodes, then let fedq run the rounds (``fedq.fl.run``) over Flower's grid.

Thin on purpose: this file only turns fedq's requests into Flower ``Message``s
and the replies back; sampling, checks, the run state and scoring are fedq's,
and Flower's strategy aggregates (``server/aggregation.py``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedq.config import CLIENT_POOL_KEY, changed_settings, config_from_run_config, results_dir, validate_config
from fedq.errors import FedqError
from fedq.fl import protocol
from fedq.fl.protocol import Reply, TrainReply, TrainRequest
from fedq.fl.rounds import FederationMismatchError, nodes_by_partition, too_few_nodes
from fedq.fl.run import run_federation
from fedq.report.run_log import write_failure
from server.aggregation import FlowerAggregator

REPLY_TIMEOUT_SECONDS = 24 * 3600.0  # Flower's default of one hour is too short for a long local round
POLL_SECONDS = 0.2  # Flower's own send_and_receive looks every 3 s on its HTTP grid
app = ServerApp()


def exchange(grid: Grid, messages: Sequence[Message], timeout: float) -> list[Message | None]:
    """Push ``messages``; their replies in the same order (None: none came within ``timeout``)."""
    ids = list(grid.push_messages(messages))
    replies: dict[str, Message] = {}
    deadline = time.monotonic() + timeout
    while len(replies) < len(ids) and time.monotonic() < deadline:
        replies |= {reply.metadata.reply_to_message_id: reply for reply in grid.pull_messages(set(ids) - set(replies))}
        time.sleep(POLL_SECONDS if len(replies) < len(ids) else 0)
    return [replies.get(i) for i in ids]


def node_ids(grid: Grid, count: int, wait_seconds: float, settle_seconds: float = 0.0) -> list[int]:
    """The connected nodes once there are ``count`` (0: once their number has not changed for ``settle_seconds``)."""
    start = since = time.monotonic()
    nodes: list[int] = []
    while True:
        if len(current := sorted(grid.get_node_ids())) != len(nodes):
            nodes, since = current, time.monotonic()
        if (count and len(nodes) >= count) or (not count and nodes and time.monotonic() - since >= settle_seconds):
            return nodes
        if time.monotonic() - start > wait_seconds:
            raise too_few_nodes(count, len(nodes), wait_seconds) if nodes else FederationMismatchError(
                f"no node connected within {wait_seconds:g}s; start the SuperNodes first")
        time.sleep(0.5)


def partitions_of(grid: Grid, nodes: list[int], clients: int, wait_seconds: float) -> dict[int, int]:
    """Ask every node which partition (client) it holds: {partition: node id}."""
    query = [Message(RecordDict({protocol.CONFIG: ConfigRecord({})}), dst_node_id=n, message_type=protocol.QUERY) for n in nodes]
    answers = {n: (r.error.reason if r.has_error() else r.content[protocol.METRICS][protocol.PARTITION]) if r else "no reply"
               for n, r in zip(nodes, exchange(grid, query, max(wait_seconds, 60.0)))}
    return nodes_by_partition(answers, clients)


def grid_exchange(grid: Grid, nodes: list[int] | dict[int, int]):  # noqa: ANN201 (a fedq.fl.rounds.Exchange)
    """Request i goes to its client's node, or to node i of the pool; each reply comes back as a fedq Reply."""
    def send(requests: Sequence[TrainRequest]) -> list[Reply]:
        messages = [Message(RecordDict({protocol.ARRAYS: ArrayRecord(r.downlink.arrays), protocol.CONFIG: ConfigRecord(r.config())}),
                            dst_node_id=nodes[r.partition] if isinstance(nodes, dict) else nodes[i % len(nodes)],
                            message_type=protocol.TRAIN) for i, r in enumerate(requests)]
        return [Reply(r.partition, error=m.error.reason if m else f"{protocol.CRASHED}: no reply") if m is None or m.has_error()
                else Reply(r.partition, TrainReply(m.content[protocol.ARRAYS].to_numpy_ndarrays(), dict(m.content[protocol.METRICS])))
                for r, m in zip(requests, exchange(grid, messages, REPLY_TIMEOUT_SECONDS))]
    return send


@app.main()
def main(grid: Grid, context: Context) -> None:
    """A user error is one line (and failure.json), never a silent success. Without ``num-clients`` (or a whole
    ``config``) in the run config, the federation's own size is the number of clients."""
    run_config = context.run_config
    out_dir = results_dir(run_config, context.run_id)
    try:
        fixed = run_config.get("config", "") != "" or run_config.get("num-clients", "") != ""
        cfg = config_from_run_config(run_config, None if fixed else len(node_ids(grid, 0, 120.0, settle_seconds=3.0)))
        validate_config(cfg)
        print(f"settings: {changed_settings(cfg)}", flush=True)
        pool = int(run_config.get(CLIENT_POOL_KEY) or 0)
        nodes = node_ids(grid, pool or cfg.fl.clients, cfg.fl.node_wait_seconds)
        by_client = nodes[:pool] if pool else partitions_of(grid, nodes, cfg.fl.clients, cfg.fl.node_wait_seconds)
        run_federation(cfg, out_dir, grid_exchange(grid, by_client), FlowerAggregator(cfg), bool(run_config.get("resume", False)))
    except FedqError as err:
        print(f"error: {write_failure(out_dir, str(err))}", flush=True)
        raise
