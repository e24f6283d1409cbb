"""What a process needs to play clients or server: the task, a model, the codecs, the shards.

Built once per process (a Ray actor, a SuperNode's ClientApp process, the
ServerApp) and reused across rounds.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from fedq.comm.settings import downlink_codec, uplink_codec
from fedq.config import FedqConfig, validate_config
from fedq.data.batching import EncodedPair, encode_pairs
from fedq.data.partition import describe_partition, partition_indices, partition_labels
from fedq.engine import within_length
from fedq.fl.weights import float_state_names, model_to_vector
from fedq.model.transformer import Transformer
from fedq.task import build_model, load_task, resolve_device


class Federation:
    def __init__(self, cfg: FedqConfig) -> None:
        validate_config(cfg)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.task = load_task(cfg)
        self.uplink = uplink_codec(cfg)
        self.downlink = downlink_codec(cfg)
        torch.manual_seed(cfg.seed)
        self.model: Transformer = build_model(cfg, self.task.tokenizer).to(self.device)
        self.numel = sum(self.model.state_dict()[name].numel() for name in float_state_names(self.model))

    @cached_property
    def train_pairs(self) -> list[EncodedPair]:
        """Training pairs as token ids. A pair's index is its position in corpus.train."""
        return encode_pairs(self.task.corpus.train, self.task.tokenizer)

    @cached_property
    def shards(self) -> list[list[int]]:
        """Per client, the indices into ``train_pairs`` it trains on.

        Only pairs within ``data.max_len`` are split (the same filter as
        centralized training), so every shard holds something to train on.
        """
        kept = within_length(self.train_pairs, self.cfg.data.max_len)
        talks = self.task.corpus.train_talks
        p = self.cfg.partition
        labels = partition_labels(
            p.scheme, p.label, [talks[i] for i in kept] if talks is not None else None,
            [len(self.train_pairs[i][0]) for i in kept], p.length_buckets,
        )
        shards = partition_indices(len(kept), self.cfg.fl.clients, p.scheme, alpha=p.alpha, labels=labels, seed=self.cfg.seed)
        return [[kept[i] for i in shard] for shard in shards]

    def describe_shards(self) -> str:
        return describe_partition(self.shards)

    def initial_vector(self) -> np.ndarray:
        """The global model before round 1: this model, or ``init_from``'s weights (federated fine-tuning)."""
        if self.cfg.init_from:
            return model_to_vector(build_model(self.cfg, self.task.tokenizer, self.cfg.init_from))
        return model_to_vector(self.model)
