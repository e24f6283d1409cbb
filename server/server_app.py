"""Flower ServerApp: find the nodes, sample clients, aggregate decoded updates, score the global model.

Thin on purpose: the strategy is Flower's (wrapped for compressed payloads in
``server/strategy.py``); scoring, reporting, run state and results files are
fedq's (``fedq/fl/``). The round loop is written out here rather than left to
``Strategy.start`` so that a run can resume after its last saved round, stop
at once when a round fails, and score the final model exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedq.config import FedqConfig, changed_settings, clients_per_round, config_from_run_config, results_dir, validate_config
from fedq.errors import FedqError
from fedq.fl.client import PARTITION_KEY, fingerprint_number
from fedq.fl.federation import Federation
from fedq.fl.server import RoundReporter
from fedq.fl.state import load_state
from fedq.report.run_log import write_failure
from server.strategy import (
    CompressedBulyan,
    CompressedFedAdam,
    CompressedFedAvg,
    CompressedFedMedian,
    CompressedFedTrimmedAvg,
    CompressedKrum,
    CompressedMultiKrum,
    CompressedUpdates,
    record_vector,
    weights_record,
)

REPLY_TIMEOUT_SECONDS = 24 * 3600.0  # Flower's default of one hour is too short for a long local round
REPLY_POLL_SECONDS = 0.2


class RoundFailedError(FedqError):
    """No client of a round delivered a usable update."""


class FederationMismatchError(FedqError):
    """The nodes that connected are not the federation the config describes."""


def discover_nodes(grid: Grid, clients: int, wait_seconds: float) -> dict[int, int]:
    """Wait for ``clients`` nodes, then ask each for its partition id: {partition id: node id}."""
    deadline = time.monotonic() + wait_seconds
    while len(node_ids := sorted(grid.get_node_ids())) < clients:
        if time.monotonic() > deadline:
            raise FederationMismatchError(
                f"waited {wait_seconds:g}s for {clients} nodes (clients={clients}) but {len(node_ids)} connected: "
                f"set clients={len(node_ids)} (run config num-clients), or start more SuperNodes / raise "
                "num-supernodes, or wait longer with fl.node_wait_seconds"
            )
        time.sleep(0.5)
    queries = [
        Message(content=RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type="query")
        for node in node_ids
    ]
    nodes: dict[int, int] = {}
    for reply in exchange(grid, queries, max(wait_seconds, 60.0)):
        if reply.has_error():
            raise FederationMismatchError(f"node {reply.metadata.src_node_id} did not say its partition: {reply.error.reason}")
        nodes[int(reply.content["metrics"][PARTITION_KEY])] = reply.metadata.src_node_id
    if sorted(nodes) != list(range(clients)):
        raise FederationMismatchError(
            f"the nodes hold partitions {sorted(nodes)[:10]}{'...' if len(nodes) > 10 else ''}, expected 0..{clients - 1} "
            "(each node needs a distinct --node-config partition-id below num-partitions)"
        )
    return nodes


STRATEGIES = {
    "fedavg": CompressedFedAvg,
    "fedadam": CompressedFedAdam,
    "fedmedian": CompressedFedMedian,
    "fedtrimmedavg": CompressedFedTrimmedAvg,
    "krum": CompressedKrum,
    "multikrum": CompressedMultiKrum,
    "bulyan": CompressedBulyan,
}


def make_strategy(cfg: FedqConfig, federation: Federation, nodes: dict[int, int] | None = None) -> CompressedUpdates:
    """Flower's strategy named by ``fl.strategy``, wrapped for compressed and checked updates."""
    fl = cfg.fl
    k = clients_per_round(cfg)
    common: dict[str, object] = dict(
        uplink=federation.uplink,
        downlink=federation.downlink,
        seeded=federation.seeded,
        tokenizer_fingerprint=fingerprint_number(federation.tokenizer.fingerprint),
        nodes=nodes,
        clients_per_round=k,
        seed=cfg.seed,
        fleet=federation.fleet,
        deadline=fl.round_deadline,
        max_norm=fl.max_update_norm,
        max_norm_ratio=fl.max_update_norm_ratio,
        min_replies=fl.min_replies,
        server_lr=fl.server_lr,
        fraction_train=1.0,  # the strategy samples (seeded, among the clients online) and shows
        min_train_nodes=1,  # Flower's FedAvg exactly those nodes; the ServerApp waited for all of them
        min_available_nodes=1,
        fraction_evaluate=0.0,  # the server scores the global model itself
        weighted_by_key="num-tokens",
    )
    if fl.strategy == "fedadam":  # Adam's eta is its server lr
        common.update(server_lr=1.0, eta=fl.server_lr, eta_l=fl.local_lr, beta_1=0.9, beta_2=0.99)
    elif fl.strategy == "fedtrimmedavg":
        common.update(beta=fl.trim_beta)
    elif fl.strategy in ("krum", "bulyan"):
        common.update(num_malicious_nodes=fl.byzantine)
    elif fl.strategy == "multikrum":
        common.update(num_malicious_nodes=fl.byzantine, num_nodes_to_select=max(1, k - fl.byzantine))
    return STRATEGIES[fl.strategy](**common)


def exchange(grid: Grid, messages: Iterable[Message], timeout: float) -> list[Message]:
    """``Grid.send_and_receive`` with a short poll: Flower's HTTP grid (deployment runtime) looks for
    replies every 3 s, up to a third of a round of a few seconds; this looks every 0.2 s."""
    pending = set(grid.push_messages(messages))
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        arrived = list(grid.pull_messages(pending))
        replies += arrived
        pending -= {reply.metadata.reply_to_message_id for reply in arrived}
        if pending:
            time.sleep(REPLY_POLL_SECONDS)
    return replies


def run_round(grid: Grid, strategy: CompressedUpdates, server_round: int, vector: np.ndarray) -> np.ndarray:
    """One round: send, train, receive, aggregate. Returns the new global vector."""
    messages = strategy.configure_train(server_round, weights_record(vector), ConfigRecord(), grid)
    replies = exchange(grid, messages, REPLY_TIMEOUT_SECONDS)
    arrays, _ = strategy.aggregate_train(server_round, replies)
    if arrays is None:
        traffic = strategy.last_round
        errors = [reply.error.reason for reply in replies if reply.has_error()]
        reasons = traffic.rejections + errors
        detail = reasons[0].strip().splitlines()[-1] if reasons else "no client was online or replied"
        counts = ", ".join(f"{n} {why}" for why, n in {**traffic.dropped, "rejected": traffic.rejected}.items() if n)
        raise RoundFailedError(
            f"round {server_round}: {traffic.clients} usable updates of {traffic.sampled} sampled, fewer than "
            f"fl.min_replies={strategy.min_replies} ({counts or 'none replied'}); first reason: {detail}"
        )
    return record_vector(arrays)


def run_server(grid: Grid, cfg: FedqConfig, out_dir: Path, resume: bool = False) -> dict:
    print(f"results in {out_dir}", flush=True)
    federation = Federation(cfg)
    federation.check_deadline()
    nodes = discover_nodes(grid, cfg.fl.clients, cfg.fl.node_wait_seconds)
    strategy = make_strategy(cfg, federation, nodes)
    state = load_state(out_dir) if resume else None
    reporter = RoundReporter(cfg, federation, out_dir, state)
    if state is not None:
        vector = state.vector
        strategy.restore_state_arrays(state.optimizer)
        print(f"resuming after round {state.rounds} of {cfg.fl.rounds} from {out_dir}", flush=True)
        if federation.uplink.biased and cfg.comm.uplink.error_feedback:
            print("note: the clients' error-feedback residuals were not saved; they start again from zero", flush=True)
        if strategy.broadcaster.stateful:
            print("note: what each client held of the model was not saved; each is sent a delta against the seeded model when next sampled", flush=True)
    else:
        vector = federation.initial_vector()
        reporter.start(vector)
    for server_round in range((state.rounds if state else 0) + 1, cfg.fl.rounds + 1):
        vector = run_round(grid, strategy, server_round, vector)
        reporter.end_round(server_round, vector, strategy.last_round)
        if server_round % cfg.fl.checkpoint_every == 0 or server_round == cfg.fl.rounds:
            reporter.save_state(server_round, vector, strategy.state_arrays())
    return reporter.finish(vector)


def federation_size(grid: Grid, wait_seconds: float, settle_seconds: float = 3.0) -> int:
    """How many nodes this federation has: the count once it has not changed for ``settle_seconds``."""
    deadline = time.monotonic() + wait_seconds
    count, since = 0, time.monotonic()
    while True:
        now = time.monotonic()
        current = len(list(grid.get_node_ids()))
        if current != count:
            count, since = current, now
        if count > 0 and now - since >= settle_seconds:
            return count
        if now > deadline:
            if count:
                return count
            raise FederationMismatchError(f"no node connected within {wait_seconds:g}s; start the SuperNodes first")
        time.sleep(0.5)


def server_main(grid: Grid, context: Context) -> None:
    """The ServerApp's body: a user error is one line (and failure.json), never a silent success.

    Without ``num-clients`` (or a whole ``config``) in the run config, the
    federation's own size is the number of clients.
    """
    run_config = context.run_config
    out_dir = results_dir(run_config, context.run_id)
    try:
        fixed = run_config.get("config", "") != "" or run_config.get("num-clients", "") != ""
        cfg = config_from_run_config(run_config, None if fixed else federation_size(grid, 120.0))
        validate_config(cfg)
        print(f"settings: {changed_settings(cfg)}", flush=True)
        run_server(grid, cfg, out_dir, resume=bool(run_config.get("resume", False)))
    except FedqError as err:
        write_failure(out_dir, str(err))
        print(f"error: {err}", flush=True)
        raise


app = ServerApp()
app.main()(server_main)
