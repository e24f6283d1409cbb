"""What a process needs to play clients or server: the shards, a model, the codecs (and, for the server, the task).

Built once per process (a Ray actor, a SuperNode's ClientApp process, the
ServerApp) and reused across rounds. A client needs only the tokenizer and the
shards, which come from their disk cache (``fedq.fl.shards``); the corpus
itself (valid and test, for scoring) is loaded only when asked for.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from fedq.comm import payload_bytes
from fedq.comm.downlink import SeededModel
from fedq.comm.settings import downlink_codec, uplink_codec, uses_error_feedback
from fedq.config import FedqConfig
from fedq.errors import ConfigError
from fedq.fl.faults import Faults
from fedq.fl.shards import ClientShards, client_shards
from fedq.fl.weights import float_state, model_to_vector
from fedq.model.transformer import Transformer
from fedq.task import TranslationTask, build_model, load_task, resolve_device


class Federation:
    """Built from a validated config (the entry points validate it once)."""

    def __init__(self, cfg: FedqConfig, task: TranslationTask | None = None) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        if task is not None:
            self.task = task
        self.data: ClientShards = client_shards(cfg, task)
        self.tokenizer = self.data.tokenizer
        self.uplink = uplink_codec(cfg.comm, cfg.quant.bits)
        self.error_feedback = uses_error_feedback(cfg.comm, self.uplink)
        self.downlink = downlink_codec(cfg.comm)
        self.faults = Faults(cfg.fl, cfg.seed)
        torch.manual_seed(cfg.seed)
        # With adapters the frozen base is init_from's, in every process: it never travels.
        base = cfg.init_from if cfg.adapter.rank else None
        self.model: Transformer = build_model(cfg, self.tokenizer, base).to(self.device)
        self.numel = sum(tensor.numel() for tensor in float_state(self.model).values())
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.frozen = sum(p.numel() for p in self.model.parameters() if not p.requires_grad)
        # What every process builds from the seed, taken before any round trains self.model: the model each
        # client holds before its first downlink delta (fedq.comm.downlink), so it is never sent.
        self.seeded = SeededModel.of(model_to_vector(self.model))

    @cached_property
    def task(self) -> TranslationTask:
        """The corpus (valid and test for scoring) with its tokenizer: the server's, loaded on first use."""
        return load_task(self.cfg)

    def initial_vector(self) -> np.ndarray:
        """The global model before round 1: the seeded model, or ``init_from``'s weights (federated fine-tuning)."""
        if self.cfg.init_from:
            return model_to_vector(build_model(self.cfg, self.tokenizer, self.cfg.init_from))
        return self.seeded.vector.copy()

    def message_bytes(self) -> tuple[int, int]:
        """Bytes of one downlink and one uplink message (of a zero update)."""
        zeros = np.zeros(self.numel, np.float32)
        rng = np.random.default_rng(0)
        return payload_bytes(self.downlink.encode(zeros, rng)), payload_bytes(self.uplink.encode(zeros, rng))

    def check_deadline(self) -> None:
        """A deadline that no device of the fleet can meet even without training is a setting error."""
        deadline, devices = self.cfg.fl.round_deadline, self.faults.devices()
        if not deadline or not devices:
            return
        down, up = self.message_bytes()
        fastest = min(device.round_seconds(down, 0.0, up) for device in devices)  # no training at all
        if deadline < fastest:
            raise ConfigError(
                f"fl.round_deadline={deadline:g} s: no device of fl.devices={self.cfg.fl.devices} can even download the "
                f"model and upload its update in time (the fastest needs {fastest:.1f} s before any training)"
            )

