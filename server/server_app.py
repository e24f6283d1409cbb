"""Flower ServerApp: find the nodes, then let fedq run the rounds (``fedq.fl.run``) over Flower's grid.

Thin on purpose: this file only turns fedq's requests into Flower ``Message``s
and the replies back; sampling, checks, the run state and scoring are fedq's,
and Flower's strategy aggregates (``server/aggregation.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp

from fedq.config import (
    CLIENT_POOL_KEY,
    LOCK_HOLDER_KEY,
    changed_settings,
    config_from_run_config,
    results_dir,
    validate_config,
)
from fedq.errors import FedqError
from fedq.fl import protocol
from fedq.fl.protocol import Reply, TrainRequest
from fedq.fl.rounds import FederationMismatchError, nodes_by_partition, too_few_nodes
from fedq.fl.run import run_federation
from fedq.logs import configure as configure_logging
from fedq.report.run_log import write_failure
from fedq.run_folder import RunFolderBusyError
from server.aggregation import FlowerAggregator

log = logging.getLogger("fedq.server_app")  # under fedq's logger (fedq.logs)

REPLY_TIMEOUT_SECONDS = 24 * 3600.0  # Flower's default of one hour is too short for a long local round
POLL_SECONDS = 0.05  # Flower's own send_and_receive looks every 3 s; a round waits up to this long for nothing
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
    answers: dict[int, int | str] = {}
    for node, reply in zip(nodes, exchange(grid, query, timeout)):
        if reply is None:
            answers[node] = "no reply"
        elif reply.has_error():
            answers[node] = reply.error.reason or f"error {reply.error.code}"
        else:
            partition = reply.content.metric_records[protocol.METRICS][protocol.PARTITION]
            answers[node] = int(partition) if isinstance(partition, (int, float)) else f"answered {partition!r}"
    return answers


class GridExchange:
    """Request i goes to its client's node (``{partition: node}``), or to node i mod n of the pool; the requests for one
    node go in one message (a pool node plays them one after another), and each client's reply comes back as a fedq
    Reply. A node that Flower reports unavailable, or that sends nothing within ``reply_timeout`` seconds, makes its
    clients unreachable; they are reachable again once their node reconnects (or a new node holding the partition does)."""

    def __init__(self, grid: Grid, nodes: list[int] | dict[int, int], reply_timeout: float) -> None:
        self.grid, self.nodes, self.timeout = grid, nodes, reply_timeout or REPLY_TIMEOUT_SECONDS
        # node -> when it last (re)connected as it went silent: Flower lists it until its heartbeats lapse
        self.silent: dict[int, str] = {}

    def node_of(self, index: int, request: TrainRequest) -> int:
        if isinstance(self.nodes, list):
            return self.nodes[index % len(self.nodes)]  # a pool node plays any client
        return self.nodes[request.partition]

    def __call__(self, requests: Sequence[TrainRequest]) -> list[Reply]:
        by_node: dict[int, list[int]] = {}
        for index, request in enumerate(requests):
            by_node.setdefault(self.node_of(index, request), []).append(index)
        messages = []
        for node, indices in by_node.items():
            arrays, configs = protocol.pack_requests([requests[i] for i in indices])
            records: dict[str, Any] = {name: ArrayRecord(values) for name, values in arrays.items()}
            records |= {name: ConfigRecord(dict(config)) for name, config in configs.items()}
            messages.append(Message(RecordDict(records), dst_node_id=node, message_type=protocol.TRAIN))
        replies: list[Reply] = [Reply(request.partition) for request in requests]
        for (node, indices), answer in zip(by_node.items(), exchange(self.grid, messages, self.timeout)):
            for index, reply in zip(indices, self.replies([requests[i].partition for i in indices], answer, node)):
                replies[index] = reply
        if isinstance(self.nodes, dict):
            lost = {node for node, indices in by_node.items()
                    if any((replies[i].error or "").startswith(protocol.UNREACHABLE) for i in indices)}
            if lost:
                self.silent |= dict.fromkeys(lost, "")
                self.silent |= {n.node_id: n.last_activated_at for n in self.grid.get_nodes() if n.node_id in lost}
        return replies

    def replies(self, partitions: list[int], message: Message | None, node: int) -> list[Reply]:
        """The replies of the clients ``partitions`` that one message to ``node`` carried."""
        if message is None:
            return [Reply(p, error=f"{protocol.UNREACHABLE}: node {node}: sent no reply within {self.timeout:g}s")
                    for p in partitions]
        if message.has_error():  # Flower's verdict on a node that missed its heartbeats, or the ClientApp's error
            unavailable = message.error.code == ErrorCode.NODE_UNAVAILABLE
            error = f"{protocol.UNREACHABLE}: node {node}: {message.error.reason}" if unavailable else message.error.reason
            return [Reply(p, error=error) for p in partitions]
        content = message.content
        answers = protocol.unpack_replies(
            len(partitions), {name: record.to_numpy_ndarrays() for name, record in content.array_records.items()},
            content.metric_records, content.config_records.get(protocol.ERRORS, {}))
        return [Reply.of(p, answer) for p, answer in zip(partitions, answers)]

    def back_online(self, partitions: set[int]) -> set[int]:
        if isinstance(self.nodes, list):
            return partitions  # a pool node serves any client
        online = {n.node_id: n.last_activated_at for n in self.grid.get_nodes()}
        new = sorted(set(online) - set(self.nodes.values()))  # a restarted SuperNode has a new node id: ask for its partition
        if new:
            for node, answer in ask_partitions(self.grid, new, 30.0).items():
                if isinstance(answer, int) and answer in self.nodes:
                    self.nodes[answer] = node
        back = set()
        for partition in partitions:
            node = self.nodes[partition]
            if node in online and online[node] != self.silent.get(node):
                back.add(partition)
        return back


@app.main()
def main(grid: Grid, context: Context) -> None:
    """A user error is one line (and failure.json), never a silent success. Without ``num-clients`` (or a whole
    ``config``) in the run config, the federation's own size is the number of clients."""
    configure_logging()
    run_config, out_dir = context.run_config, results_dir(context.run_config, context.run_id)
    driven = bool(run_config.get(LOCK_HOLDER_KEY, ""))  # started by fedq.simulate, which holds the folder
    try:
        fixed = run_config.get("config", "") != "" or run_config.get("num-clients", "") != ""
        federation_size = None if fixed else len(node_ids(grid, 0, 120.0, settle_seconds=3.0))
        cfg = config_from_run_config(run_config, federation_size)
        validate_config(cfg)
        log.info(f"settings: {changed_settings(cfg)}")
        pool = int(run_config.get(CLIENT_POOL_KEY) or 0)
        nodes = node_ids(grid, pool or cfg.fl.clients, cfg.fl.node_wait_seconds)
        if pool:
            by_client: list[int] | dict[int, int] = nodes[:pool]
        else:
            answers = ask_partitions(grid, nodes, max(cfg.fl.node_wait_seconds, 60.0))
            by_client = nodes_by_partition(answers, cfg.fl.clients)
        exchange = GridExchange(grid, by_client, cfg.fl.reply_timeout)
        run_federation(cfg, out_dir, exchange, FlowerAggregator(cfg), bool(run_config.get("resume", False)),
                       folder_held=driven)
    except RunFolderBusyError as err:  # another process writes the folder: failure.json there would be its
        log.error(str(err))
        raise
    except FedqError as err:
        unwritten = write_failure(out_dir, str(err))
        if unwritten is not None:
            log.error(f"{err} (and failure.json could not be written: {unwritten})")
        elif not driven:  # fedq.simulate reads failure.json and says it once; under flwr run this is the only line
            log.error(str(err))
        raise
