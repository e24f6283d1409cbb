"""Flower ServerApp: find the nodes, then let fedq run the rounds (``fedq.fl.run``) over Flower's grid.

Thin on purpose: this file only turns fedq's requests into Flower ``Message``s
and the replies back; sampling, checks, the run state and scoring are fedq's,
and Flower's strategy aggregates (``server/aggregation.py``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp

from fedq.config import CLIENT_POOL_KEY, LOCK_HOLDER_KEY, changed_settings, config_from_run_config, results_dir, validate_config
from fedq.errors import FedqError
from fedq.fl import protocol
from fedq.fl.protocol import Reply, TrainReply, TrainRequest
from fedq.fl.rounds import FederationMismatchError, nodes_by_partition, too_few_nodes
from fedq.fl.run import run_federation
from fedq.report.run_log import write_failure
from fedq.run_folder import RunFolderBusyError
from server.aggregation import FlowerAggregator

REPLY_TIMEOUT_SECONDS = 24 * 3600.0  # Flower's default of one hour is too short for a long local round
POLL_SECONDS = 0.2  # Flower's own send_and_receive looks every 3 s on its HTTP grid
app = ServerApp()


def exchange(grid: Grid, messages: Sequence[Message], timeout: float) -> list[Message | None]:
    """Push ``messages``; their replies in the same order (None: none came within ``timeout``)."""
    ids, deadline = list(grid.push_messages(messages)), time.monotonic() + timeout
    replies: dict[str, Message] = {}
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


def ask_partitions(grid: Grid, nodes: list[int], timeout: float) -> dict[int, int | str]:
    """Ask ``nodes`` which partition (client) each holds: {node id: its partition, or why it did not say}."""
    query = [Message(RecordDict({protocol.CONFIG: ConfigRecord({})}), dst_node_id=n, message_type=protocol.QUERY) for n in nodes]
    return {n: (r.error.reason if r.has_error() else int(r.content[protocol.METRICS][protocol.PARTITION])) if r else "no reply"
            for n, r in zip(nodes, exchange(grid, query, timeout))}


class GridExchange:
    """Request i goes to its client's node (``{partition: node}``), or to node i of the pool; each reply comes back as
    a fedq Reply. A node that Flower reports unavailable, or that sends nothing within ``reply_timeout`` seconds,
    makes its client unreachable; it is reachable again once its node reconnects (or a new node holding its partition does)."""

    def __init__(self, grid: Grid, nodes: list[int] | dict[int, int], reply_timeout: float) -> None:
        self.grid, self.nodes, self.timeout = grid, nodes, reply_timeout or REPLY_TIMEOUT_SECONDS
        self.silent: dict[int, str] = {}  # node -> when it last (re)connected as it went silent: Flower lists it until its heartbeats lapse

    def __call__(self, requests: Sequence[TrainRequest]) -> list[Reply]:
        pool = isinstance(self.nodes, list)
        nodes = [self.nodes[i % len(self.nodes)] if pool else self.nodes[r.partition] for i, r in enumerate(requests)]
        messages = [Message(RecordDict({protocol.ARRAYS: ArrayRecord(r.downlink.arrays), protocol.CONFIG: ConfigRecord(r.config())}),
                            dst_node_id=node, message_type=protocol.TRAIN) for r, node in zip(requests, nodes)]
        replies = [self.reply(r.partition, m, node) for r, m, node in zip(requests, exchange(self.grid, messages, self.timeout), nodes)]
        if lost := {node for r, node in zip(replies, nodes) if not pool and (r.error or "").startswith(protocol.UNREACHABLE)}:
            self.silent |= dict.fromkeys(lost, "") | {n.node_id: n.last_activated_at for n in self.grid.get_nodes() if n.node_id in lost}
        return replies

    def reply(self, partition: int, message: Message | None, node: int) -> Reply:
        if message is None or message.has_error():  # no reply in time, or Flower's verdict on a node that missed its heartbeats
            unreachable = message is None or message.error.code == ErrorCode.NODE_UNAVAILABLE
            why = f"sent no reply within {self.timeout:g}s" if message is None else message.error.reason
            return Reply(partition, error=f"{protocol.UNREACHABLE}: node {node}: " * unreachable + why)
        return Reply(partition, TrainReply(message.content[protocol.ARRAYS].to_numpy_ndarrays(), dict(message.content[protocol.METRICS])))

    def back_online(self, partitions: set[int]) -> set[int]:
        if isinstance(self.nodes, list):
            return partitions  # a pool node serves any client
        online = {n.node_id: n.last_activated_at for n in self.grid.get_nodes()}
        new = sorted(set(online) - set(self.nodes.values()))  # a restarted SuperNode has a new node id: ask for its partition
        self.nodes |= {answer: node for node, answer in (ask_partitions(self.grid, new, 30.0) if new else {}).items()
                       if isinstance(answer, int) and answer in self.nodes}
        return {p for p in partitions if self.nodes[p] in online and online[self.nodes[p]] != self.silent.get(self.nodes[p])}


@app.main()
def main(grid: Grid, context: Context) -> None:
    """A user error is one line (and failure.json), never a silent success. Without ``num-clients`` (or a whole
    ``config``) in the run config, the federation's own size is the number of clients."""
    run_config, out_dir = context.run_config, results_dir(context.run_config, context.run_id)
    try:
        fixed = run_config.get("config", "") != "" or run_config.get("num-clients", "") != ""
        cfg = config_from_run_config(run_config, None if fixed else len(node_ids(grid, 0, 120.0, settle_seconds=3.0)))
        validate_config(cfg)
        print(f"settings: {changed_settings(cfg)}", flush=True)
        pool = int(run_config.get(CLIENT_POOL_KEY) or 0)
        nodes = node_ids(grid, pool or cfg.fl.clients, cfg.fl.node_wait_seconds)
        by_client = nodes[:pool] if pool else nodes_by_partition(ask_partitions(grid, nodes, max(cfg.fl.node_wait_seconds, 60.0)), cfg.fl.clients)
        run_federation(cfg, out_dir, GridExchange(grid, by_client, cfg.fl.reply_timeout), FlowerAggregator(cfg),
                       bool(run_config.get("resume", False)), folder_held=bool(run_config.get(LOCK_HOLDER_KEY, "")))
    except FedqError as err:
        print(f"error: {err if isinstance(err, RunFolderBusyError) else write_failure(out_dir, str(err))}", flush=True)
        raise
