"""One client's round: rebuild the model from the downlink, train locally on its shard, encode the update."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from fedq.comm import payload_bytes
from fedq.comm.codecs import Stratum
from fedq.comm.downlink import NotHeldError, cache_capacity, receive
from fedq.comm.error_feedback import encode_with_feedback
from fedq.config import CLIENT_POOL_KEY, FedqConfig, config_from_run_config, results_dir
from fedq.data.batching import EncodedPair
from fedq.engine import (
    StepSettings,
    TrainStats,
    batch_stream,
    inverse_sqrt_schedule,
    make_optimizer,
    planned_steps,
    train_steps,
)
from fedq.errors import ConfigError, FedqError
from fedq.files import FileWriteError
from fedq.fl import protocol, secagg
from fedq.fl.client_state import CLIENT_STATE_DIR, ClientStore
from fedq.fl.federation import Federation
from fedq.fl.fleet import training_flops
from fedq.fl.privacy import clip_to_norm
from fedq.fl.protocol import NoUpdate, Reply, TrainReply, TrainRequest
from fedq.fl.settings import client_threads
from fedq.fl.weights import model_to_vector, vector_to_model
from fedq.quant.swap import hold_base_as_codes

UPDATE = "update"  # the secret a client keeps under secure aggregation until it is masked


class ClientRun:
    """A client process's part of one run, built once from Flower's run config (plain mappings): its
    Federation and where its clients keep their files. Nodes of fedq.simulate's pool play whichever client a
    request names; a SuperNode started with a partition (its node config) is that client."""

    def __init__(self, run_config: Mapping[str, object], node_config: Mapping[str, object], run_id: int) -> None:
        self.pooled = bool(run_config.get(CLIENT_POOL_KEY))
        partitions = None if self.pooled else self.partition_of(node_config)[1]
        cfg = config_from_run_config(run_config, partitions)
        if partitions is not None and cfg.fl.clients != partitions:
            raise ConfigError(f"this federation has {partitions} nodes but the config says clients={cfg.fl.clients}")
        self.federation = client_federation(cfg)
        folder = node_config.get("state-dir") or results_dir(run_config, run_id) / CLIENT_STATE_DIR
        capacity = cache_capacity(cfg.comm.downlink.cache_mb, self.federation.numel) if self.pooled else None  # one folder
        self.store = ClientStore(Path(str(folder)), capacity)

    @staticmethod
    def partition_of(node_config: Mapping[str, object]) -> tuple[int, int]:
        """(partition, number of partitions) of a SuperNode bound to one client."""
        try:
            return int(node_config[protocol.PARTITION]), int(node_config[protocol.NUM_PARTITIONS])  # type: ignore[call-overload]
        except (KeyError, ValueError):
            raise ConfigError('this SuperNode has no integer partition-id / num-partitions; start it with '
                              '--node-config "partition-id=K num-partitions=N"') from None

    def train(self, requests: Sequence[TrainRequest], node_config: Mapping[str, object]) -> list[TrainReply | str]:
        """The replies to one message's requests (see :func:`play`)."""
        if not self.pooled:
            own = self.partition_of(node_config)[0]
            for request in requests:
                if request.partition != own:
                    raise ConfigError(f"this SuperNode holds partition {own}, not {request.partition}")
        return play(self.federation, requests, self.store)


def client_federation(cfg: FedqConfig) -> Federation:
    """What a client process builds once per run. A client on the CPU gets ``fl.num_cpus`` torch threads,
    not the whole machine: Ray runs several clients side by side. A client that trains adapters holds the frozen
    low-bit base as its codes."""
    federation = Federation(cfg)
    if cfg.adapter.rank:
        hold_base_as_codes(federation.model)
    if federation.device.type == "cpu":
        torch.set_num_threads(client_threads(cfg.fl))
    return federation


def client_lr_schedule(
    optimizer: torch.optim.Optimizer, cfg: FedqConfig, server_round: int, local_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Centralized training's warm-up and 1/sqrt decay, over the global step count.

    Round r's local step i is global step (r-1)*local_steps + i, so R rounds of S
    local steps see the lr of R*S centralized steps. (A one-round warm-up with decay
    from there left the lr 2x lower and cost 7 BLEU on demo/tiny.)
    """
    return inverse_sqrt_schedule(optimizer, cfg.fl.warmup_steps, start_step=(server_round - 1) * local_steps)


def round_seed(cfg: FedqConfig, server_round: int, partition: int) -> int:
    """The seed of a client's round: its batches, its torch draws and its codec's randomness."""
    return cfg.seed + 1000 * server_round + partition


def train_on_shard(federation: Federation, partition: int, server_round: int, seed: int,
                   steps: int | None = None) -> TrainStats:
    """Train ``federation.model`` in place on the client's shard as round ``server_round`` does: ``steps`` local
    steps (default ``fl.local_steps`` or ``fl.local_epochs``) at that round's point of the lr schedule."""
    return train_on_pairs(federation, federation.data.shard(partition), server_round, seed, steps)


def train_on_pairs(federation: Federation, pairs: list[EncodedPair], server_round: int, seed: int,
                   steps: int | None = None) -> TrainStats:
    """Train ``federation.model`` in place on ``pairs`` as a client of round ``server_round`` does (the server's root
    set trains this way too: ``fedq.fl.root``)."""
    cfg = federation.cfg
    torch.manual_seed(seed)
    stream = batch_stream(pairs, cfg.data.max_tokens, federation.tokenizer, seed)
    planned = planned_steps(cfg.fl.local_steps, cfg.fl.local_epochs, pairs, cfg.data.max_tokens, federation.tokenizer)
    optimizer = make_optimizer(federation.model, cfg.fl.local_lr, cfg.train.betas, cfg.train.weight_decay,
                               kind=cfg.fl.local_optimizer)
    settings = StepSettings(federation.device, federation.tokenizer.pad_id, cfg.train.label_smoothing, cfg.train.clip_norm)
    return train_steps(federation.model, stream, optimizer, planned if steps is None else steps, settings,
                       scheduler=client_lr_schedule(optimizer, cfg, server_round, planned))


def client_round(federation: Federation, request: TrainRequest, store: ClientStore) -> TrainReply:
    """Rebuild the model the request describes, train, encode ``local - start`` and keep what the client keeps.

    Raises :class:`~fedq.fl.protocol.NoUpdate` for a simulated dropout or crash
    (``fl.dropout_rate``, ``fl.crash_rate``) and for a delta against a model this
    client does not hold (it asks for a resync).
    """
    began = time.perf_counter()
    cfg = federation.cfg
    partition, server_round, downlink = request.partition, request.server_round, request.downlink
    if not 0 <= partition < len(federation.data):
        raise FedqError(f"partition id {partition} is outside the {len(federation.data)} shards")
    fault = federation.faults.client_fault(server_round, partition)
    if fault is not None:
        store.drop_held(partition)  # it may not hold what it was sent
        raise NoUpdate(fault)
    state = store.load(partition, downlink.base_round)
    try:
        start_vector = receive(federation.downlink, downlink, federation.numel, state.held, state.held_round,
                               federation.seeded)
    except NotHeldError as err:
        raise NoUpdate(f"{protocol.RESYNC}: {err}") from None
    vector_to_model(federation.model, start_vector)

    seed = round_seed(cfg, server_round, partition)
    start = time.perf_counter()
    stats = train_on_shard(federation, partition, server_round, seed)
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    update = model_to_vector(federation.model) - start_vector
    unclipped = True
    if request.clip_norm:  # DP-FedAvg: the bound acts on what the codec encodes (fedq.fl.privacy)
        update, unclipped = clip_to_norm(update, request.clip_norm)
    update = federation.faults.tamper(partition, update, rng)
    stratum = Stratum(cfg.seed, server_round, request.slot, request.slots) if cfg.comm.uplink.correlated else None
    secrets: dict[str, np.ndarray] | None = None
    if request.secagg:  # kept until the round's grid is known; its public keys are sent (fedq.fl.secagg)
        keys, arrays = secagg.advertise()
        if not request.clip_norm:
            arrays.append(secagg.block_scales(update, federation.uplink.block_size))  # type: ignore[attr-defined]
        secrets, residual = {**keys.arrays(), UPDATE: update}, None
    elif federation.error_feedback:
        arrays, residual = encode_with_feedback(federation.uplink, update, state.residual, rng, stratum)
    else:
        arrays, residual = federation.uplink.encode(update, rng, stratum), None
    encode_seconds = time.perf_counter() - start
    try:
        store.save(partition, server_round, downlink.base_round, start_vector if request.keep else None, residual)
        if secrets is not None:
            store.save_secrets(partition, server_round, secrets)
    except FileWriteError as err:
        raise NoUpdate(f"{protocol.STORAGE}: {err}") from None

    metrics: dict[str, float] = {
        protocol.NUM_EXAMPLES: float(stats.sentences),
        protocol.NUM_TOKENS: float(stats.tokens),
        protocol.TRAIN_LOSS: stats.loss,
        protocol.PAYLOAD_BYTES: float(payload_bytes(arrays)),
        protocol.UNCLIPPED: float(unclipped),
        protocol.TRAIN_SECONDS: train_seconds,
        protocol.ENCODE_SECONDS: encode_seconds,
        protocol.STEPS: float(stats.steps),
        protocol.FINGERPRINT: protocol.fingerprint_number(federation.tokenizer.fingerprint),
    }
    device = federation.faults.device(partition)
    if device is not None:
        flops = training_flops(federation.parameters, stats.tokens + stats.src_tokens, federation.frozen)
        metrics[protocol.SIM_SECONDS] = device.round_seconds(downlink.nbytes, flops, payload_bytes(arrays))
    metrics[protocol.ROUND_SECONDS] = time.perf_counter() - began
    return TrainReply(arrays, metrics)


def play(federation: Federation, requests: Sequence[TrainRequest], store: ClientStore) -> list[TrainReply | str]:
    """Several clients' rounds one after another on the one model of this process, as a node of the simulation's
    pool plays the clients of one message: each client's reply, or why it has none; then the clients' folder is
    brought back to what the server remembers."""
    replies: list[TrainReply | str] = []
    for request in requests:
        if request.stage != protocol.TRAIN_STAGE:
            replies.append(secure_stage(federation, request, store))
            continue
        try:
            replies.append(client_round(federation, request, store))
        except NoUpdate as failure:
            replies.append(failure.reason)
    store.evict()
    return replies


def secure_stage(federation: Federation, request: TrainRequest, store: ClientStore) -> TrainReply | str:
    """A later stage of secure aggregation (``fedq.fl.secagg``) for the client the request names, from the secrets it
    kept at its train stage: its encrypted shares, its masked codes, or the shares it reveals."""
    partition, server_round, extra = request.partition, request.server_round, request.extra
    saved = store.load_secrets(partition, server_round)
    if saved is None:
        return f"{protocol.CRASHED}: client {partition} kept no secure-aggregation secrets of round {server_round}"
    secrets = secagg.ClientSecrets.of(saved)
    try:
        if request.stage == secagg.SHARES:
            arrays = secagg.share(secrets, partition, server_round, extra[0], extra[1])
            store.save_secrets(partition, server_round, {**secrets.arrays(), UPDATE: saved[UPDATE]})
        elif request.stage == secagg.MASKED:
            grid = secagg.Grid.parse(extra[1], request.settings)
            rng = np.random.default_rng([round_seed(federation.cfg, server_round, partition), 0x5EC])
            codes = grid.encode(saved[UPDATE], rng, np.random.default_rng())  # its noise: secret, from the OS
            arrays = secagg.masked_codes(secrets, partition, server_round, codes, grid, extra[0])
            store.save_secrets(partition, server_round, secrets.arrays())  # the update is not needed any more
        elif request.stage == secagg.UNMASK:
            arrays = secagg.reveal(secrets, partition, server_round, extra[0], extra[1], extra[2])
            store.drop_secrets(partition)
        else:
            return f"{protocol.CRASHED}: a request of stage {request.stage!r}: server and client run different fedq versions?"
    except (secagg.SecAggError, IndexError, KeyError, ValueError) as err:
        return f"{protocol.CRASHED}: secure aggregation, {request.stage}: {err}"
    except FileWriteError as err:
        return f"{protocol.STORAGE}: {err}"
    return TrainReply(arrays, {protocol.PAYLOAD_BYTES: float(payload_bytes(arrays))})


class LocalExchange:
    """Requests answered by :func:`play` in this process (no Flower, no Ray)."""

    def __init__(self, federation: Federation, store: ClientStore) -> None:
        self.federation = federation
        self.store = store

    def __call__(self, requests: Sequence[TrainRequest]) -> list[Reply]:
        replies = play(self.federation, requests, self.store)
        return [Reply.of(request.partition, reply) for request, reply in zip(requests, replies)]

    def back_online(self, partitions: set[int]) -> set[int]:
        return partitions  # a client in this process is never unreachable
