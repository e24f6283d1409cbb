"""The federated round without Flower: what a client does, what the server does.

``clients/`` and ``server/`` only move arrays between Flower messages and these
functions, so everything here is testable in one process.

The model travels as one flat float32 vector over the model's floating-point
state (latent QAT weights and quantizer steps included), in state-dict order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from fedq.comm import UpdateCodec, encode_with_feedback, make_codec, payload_bytes
from fedq.compose import config_to_yaml
from fedq.config import CodecConfig, FedqConfig
from fedq.data.batching import encode_pairs, token_batches
from fedq.data.partition import describe_partition, length_bucket_labels, partition_indices
from fedq.model.transformer import Transformer
from fedq.pipeline import TranslationTask, build_model, load_task, resolve_device
from fedq.training import batch_stream, inverse_sqrt_schedule, make_optimizer, train_steps


class FederationConfigError(ValueError):
    pass


def clients_per_round(cfg: FedqConfig) -> int:
    fl = cfg.fl
    return fl.clients_per_round if fl.clients_per_round > 0 else max(1, round(fl.fraction * fl.clients))


def validate_federation(cfg: FedqConfig) -> None:
    fl = cfg.fl
    if fl.clients < 1:
        raise FederationConfigError(f"clients={fl.clients}: need at least one client")
    if not 0 < fl.fraction <= 1:
        raise FederationConfigError(f"fl.fraction={fl.fraction} must be in (0, 1]")
    k = clients_per_round(cfg)
    if k > fl.clients:
        raise FederationConfigError(f"fl.clients_per_round={k} is more than clients={fl.clients}")
    if fl.rounds < 1:
        raise FederationConfigError(f"fl.rounds={fl.rounds}: need at least one round")
    if fl.warmup_steps < 0:
        raise FederationConfigError(f"fl.warmup_steps={fl.warmup_steps} must be >= 0")
    if fl.strategy not in ("fedavg", "fedadam"):
        raise FederationConfigError(f"unknown fl.strategy '{fl.strategy}' (use fedavg or fedadam)")
    if fl.local_optimizer not in ("adam", "sgd"):
        raise FederationConfigError(f"unknown fl.local_optimizer '{fl.local_optimizer}' (use adam or sgd)")
    uplink_codec(cfg)
    downlink_codec(cfg)


def _codec(codec_cfg: CodecConfig, default_bits: int) -> UpdateCodec:
    bits = codec_cfg.bits if codec_cfg.bits is not None else default_bits
    return make_codec(codec_cfg.name, bits=bits, block_size=codec_cfg.block_size, density=codec_cfg.density)


def default_uplink_bits(cfg: FedqConfig) -> int:
    """comm.uplink.bits defaults to quant.bits; 8 when QAT is off, 2 for binary QAT."""
    bits = cfg.quant.bits
    if bits >= 32:
        return 8
    return max(2, bits)


def uplink_codec(cfg: FedqConfig) -> UpdateCodec:
    return _codec(cfg.comm.uplink, default_uplink_bits(cfg))


def downlink_codec(cfg: FedqConfig) -> UpdateCodec:
    if cfg.comm.downlink.name not in ("fp32", "fp16"):
        raise FederationConfigError(
            f"comm.downlink.name={cfg.comm.downlink.name}: the downlink carries the global weights; use fp32 or fp16"
        )
    return _codec(cfg.comm.downlink, 16)


def float_state_names(model: torch.nn.Module) -> list[str]:
    return [name for name, tensor in model.state_dict().items() if tensor.is_floating_point()]


def model_to_vector(model: torch.nn.Module) -> np.ndarray:
    state = model.state_dict()
    parts = [state[name].detach().float().cpu().reshape(-1) for name in float_state_names(model)]
    return torch.cat(parts).numpy().astype(np.float32, copy=False)


def vector_to_model(model: torch.nn.Module, vector: np.ndarray) -> None:
    state = model.state_dict()
    names = float_state_names(model)
    total = sum(state[name].numel() for name in names)
    if vector.shape != (total,):
        raise ValueError(f"weight vector has {vector.size} values, the model has {total}")
    flat = torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float32))
    offset = 0
    with torch.no_grad():
        for name in names:
            tensor = state[name]
            tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()


def shard_labels(task: TranslationTask, encoded_src_lengths: list[int], cfg: FedqConfig) -> list | None:
    scheme, label = cfg.partition.scheme, cfg.partition.label
    if scheme == "iid":
        return None
    if scheme == "natural" or label == "talk":
        if task.corpus.train_talks is None:
            raise FederationConfigError(
                f"partition.scheme={scheme} label={label} needs talk ids; corpus {task.corpus.name} has none (use data=iwslt2017)"
            )
        return list(task.corpus.train_talks)
    if label == "length":
        return length_bucket_labels(encoded_src_lengths, cfg.partition.length_buckets)
    raise FederationConfigError(f"unknown partition.label '{label}' (use length or talk)")


def client_lr_schedule(
    optimizer: torch.optim.Optimizer, cfg: FedqConfig, server_round: int, local_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Centralized training's warm-up and 1/sqrt decay, over the global step count.

    Round r's local step i is global step (r-1)*local_steps + i, so R rounds of S
    local steps see the lr of R*S centralized steps. (A one-round warm-up with decay
    from there left the lr 2x lower and cost 7 BLEU on demo/tiny.)
    """
    return inverse_sqrt_schedule(optimizer, cfg.fl.warmup_steps, start_step=(server_round - 1) * local_steps)


@dataclass
class ClientUpdate:
    arrays: list[np.ndarray]
    residual: np.ndarray | None
    metrics: dict[str, float] = field(default_factory=dict)


class Federation:
    """Everything a process needs to play clients or server: data, shards, a model, codecs.

    Built once per process (Ray actor or server) and reused across rounds.
    """

    def __init__(self, cfg: FedqConfig) -> None:
        validate_federation(cfg)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.task = load_task(cfg)
        self.uplink = uplink_codec(cfg)
        self.downlink = downlink_codec(cfg)
        torch.manual_seed(cfg.seed)
        self.model: Transformer = build_model(cfg, self.task.tokenizer).to(self.device)
        self.numel = sum(self.model.state_dict()[name].numel() for name in float_state_names(self.model))

    @cached_property
    def train_pairs(self) -> list[tuple[list[int], list[int]]]:
        """Training pairs as token ids. A pair's index is its position in corpus.train."""
        return encode_pairs(self.task.corpus.train, self.task.tokenizer, None)

    @cached_property
    def shards(self) -> list[list[int]]:
        labels = shard_labels(self.task, [len(src) for src, _ in self.train_pairs], self.cfg)
        return partition_indices(
            len(self.train_pairs), self.cfg.fl.clients, self.cfg.partition.scheme,
            alpha=self.cfg.partition.alpha, labels=labels, seed=self.cfg.seed,
        )

    def describe_shards(self) -> str:
        return describe_partition(self.shards)

    def initial_vector(self) -> np.ndarray:
        return model_to_vector(self.model)

    def client_round(
        self,
        partition_id: int,
        server_round: int,
        downlink_arrays: list[np.ndarray],
        residual: np.ndarray | None,
    ) -> ClientUpdate:
        """Decode the global weights, train locally, encode ``local - global``."""
        cfg = self.cfg
        tokenizer = self.task.tokenizer
        if not 0 <= partition_id < len(self.shards):
            raise ValueError(f"partition id {partition_id} is outside the {len(self.shards)} shards")
        global_vector = self.downlink.decode(downlink_arrays, self.numel)
        vector_to_model(self.model, global_vector)

        max_len = cfg.data.max_len
        shard = [self.train_pairs[i] for i in self.shards[partition_id]]
        shard = [pair for pair in shard if len(pair[0]) <= max_len and len(pair[1]) <= max_len] or shard[:1]
        seed = cfg.seed + 1000 * server_round + partition_id
        torch.manual_seed(seed)
        stream = batch_stream(shard, cfg.data.max_tokens, tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, seed)
        steps = cfg.fl.local_steps
        if cfg.fl.local_epochs > 0:
            per_epoch = len(token_batches(shard, cfg.data.max_tokens, tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, shuffle=False))
            steps = cfg.fl.local_epochs * per_epoch
        optimizer = make_optimizer(self.model, cfg.fl.local_lr, cfg.train.betas, kind=cfg.fl.local_optimizer)
        scheduler = client_lr_schedule(optimizer, cfg, server_round, steps)
        start = time.perf_counter()
        stats = train_steps(
            self.model, stream, optimizer, steps, self.device, tokenizer.pad_id,
            cfg.train.label_smoothing, cfg.train.clip_norm, scheduler,
        )
        train_seconds = time.perf_counter() - start

        start = time.perf_counter()
        update = model_to_vector(self.model) - global_vector
        rng = np.random.default_rng(seed)
        if self.uplink.biased and cfg.comm.uplink.error_feedback:
            arrays, residual = encode_with_feedback(self.uplink, update, residual, rng)
        else:
            arrays, residual = self.uplink.encode(update, rng), None
        encode_seconds = time.perf_counter() - start
        return ClientUpdate(
            arrays=arrays,
            residual=residual,
            metrics={
                "num-examples": float(stats.sentences),
                "num-tokens": float(stats.tokens),
                "train-loss": stats.loss,
                "payload-bytes": float(payload_bytes(arrays)),
                "train-seconds": train_seconds,
                "encode-seconds": encode_seconds,
                "steps": float(stats.steps),
            },
        )


_FEDERATIONS: dict[str, Federation] = {}


def federation_for(cfg: FedqConfig) -> Federation:
    """The client side's Federation: one per process and config (Ray actors reuse it across rounds)."""
    key = config_to_yaml(cfg)
    if key not in _FEDERATIONS:
        _FEDERATIONS.clear()
        if resolve_device(cfg.device).type == "cpu":  # a simulated client has fl.num_cpus cores, not the machine
            torch.set_num_threads(max(1, int(cfg.fl.num_cpus)))
        _FEDERATIONS[key] = Federation(cfg)
    return _FEDERATIONS[key]

