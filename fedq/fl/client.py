"""One client's round: decode the global weights, train locally on its shard, encode the update."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from fedq.comm import encode_with_feedback, payload_bytes
from fedq.comm.downlink import Downlink, receive
from fedq.config import FedqConfig, config_to_yaml
from fedq.engine import StepSettings, batch_stream, inverse_sqrt_schedule, make_optimizer, planned_steps, train_steps
from fedq.errors import FedqError
from fedq.fl.faults import attack, training_flops
from fedq.fl.federation import Federation
from fedq.fl.weights import model_to_vector, vector_to_model
from fedq.task import resolve_device

FINGERPRINT_KEY = "tokenizer-fingerprint"
SIM_SECONDS_KEY = "sim-seconds"  # the client's round on its simulated device (fl.devices)
PARTITION_KEY = "partition-id"  # a node's shard (its node config), and its answer to the server's query


def fingerprint_number(fingerprint: str) -> int:
    """A tokenizer fingerprint as an int that a Flower MetricRecord can carry (60 bits of the hash)."""
    return int(fingerprint[:15], 16)


@dataclass
class ClientUpdate:
    arrays: list[np.ndarray]
    residual: np.ndarray | None
    held: np.ndarray  # the model the client trained from: what it keeps for the next delta (fedq.comm.downlink)
    metrics: dict[str, float] = field(default_factory=dict)


def client_lr_schedule(
    optimizer: torch.optim.Optimizer, cfg: FedqConfig, server_round: int, local_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Centralized training's warm-up and 1/sqrt decay, over the global step count.

    Round r's local step i is global step (r-1)*local_steps + i, so R rounds of S
    local steps see the lr of R*S centralized steps. (A one-round warm-up with decay
    from there left the lr 2x lower and cost 7 BLEU on demo/tiny.)
    """
    return inverse_sqrt_schedule(optimizer, cfg.fl.warmup_steps, start_step=(server_round - 1) * local_steps)


def client_round(
    federation: Federation,
    partition_id: int,
    server_round: int,
    downlink: Downlink,
    residual: np.ndarray | None,
    held: tuple[np.ndarray, int] | None = None,
) -> ClientUpdate:
    """Rebuild the model from the downlink (and the model ``held`` since round N), train locally,
    encode ``local - start``."""
    cfg = federation.cfg
    tokenizer = federation.tokenizer
    shards = federation.data.shards
    if not 0 <= partition_id < len(shards):
        raise FedqError(f"partition id {partition_id} is outside the {len(shards)} shards")
    start_vector = receive(federation.downlink, downlink, federation.numel, *(held or (None, None)), federation.seeded)
    vector_to_model(federation.model, start_vector)

    shard = shards[partition_id]
    seed = cfg.seed + 1000 * server_round + partition_id
    torch.manual_seed(seed)
    stream = batch_stream(shard, cfg.data.max_tokens, tokenizer, seed)
    steps = planned_steps(cfg.fl.local_steps, cfg.fl.local_epochs, shard, cfg.data.max_tokens, tokenizer)
    optimizer = make_optimizer(federation.model, cfg.fl.local_lr, cfg.train.betas, kind=cfg.fl.local_optimizer)
    settings = StepSettings(federation.device, tokenizer.pad_id, cfg.train.label_smoothing, cfg.train.clip_norm)
    start = time.perf_counter()
    stats = train_steps(
        federation.model, stream, optimizer, steps, settings,
        scheduler=client_lr_schedule(optimizer, cfg, server_round, steps),
    )
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    update = model_to_vector(federation.model) - start_vector
    rng = np.random.default_rng(seed)
    if partition_id in federation.attackers:
        update = attack(cfg.fl.attack, update, rng)
    if federation.uplink.biased and cfg.comm.uplink.error_feedback:
        arrays, residual = encode_with_feedback(federation.uplink, update, residual, rng)
    else:
        arrays, residual = federation.uplink.encode(update, rng), None
    encode_seconds = time.perf_counter() - start
    metrics: dict[str, float] = {}
    if federation.fleet is not None:
        device = federation.fleet[partition_id]
        flops = training_flops(federation.parameters, stats.tokens + stats.src_tokens)
        metrics[SIM_SECONDS_KEY] = device.round_seconds(downlink.nbytes, flops, payload_bytes(arrays))
    return ClientUpdate(
        arrays=arrays,
        residual=residual,
        held=start_vector,
        metrics=metrics | {
            "num-examples": float(stats.sentences),
            "num-tokens": float(stats.tokens),
            "train-loss": stats.loss,
            "payload-bytes": float(payload_bytes(arrays)),
            "train-seconds": train_seconds,
            "encode-seconds": encode_seconds,
            "steps": float(stats.steps),
            FINGERPRINT_KEY: fingerprint_number(tokenizer.fingerprint),
        },
    )


_FEDERATIONS: dict[str, Federation] = {}


def federation_for(cfg: FedqConfig) -> Federation:
    """The client side's Federation: one per process and config (Ray actors reuse it across rounds).

    A simulated client on the CPU gets ``fl.num_cpus`` torch threads, not the
    whole machine: Ray runs several clients side by side.
    """
    key = config_to_yaml(cfg)
    if key not in _FEDERATIONS:
        _FEDERATIONS.clear()
        if resolve_device(cfg.device).type == "cpu":
            torch.set_num_threads(max(1, int(cfg.fl.num_cpus)))
        _FEDERATIONS[key] = Federation(cfg)
    return _FEDERATIONS[key]
