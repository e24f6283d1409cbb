"""Flower strategies that speak compressed payloads.

The mixin encodes the global weights with the downlink codec before they are
sent, and decodes each client's uplink payload into ``global + update`` before
the parent strategy (Flower's FedAvg or FedAdam) aggregates. A payload that
does not decode against the model is rejected and logged, never applied.
Byte counts come from the arrays actually sent and received.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg

from fedq.comm import CodecError, UpdateCodec, payload_bytes
from fedq.server_side import RoundTraffic


def arrays_to_vector(arrays: ArrayRecord) -> np.ndarray:
    return np.concatenate([array.numpy().reshape(-1) for array in arrays.values()]).astype(np.float32, copy=False)


def vector_to_arrays(vector: np.ndarray, template: ArrayRecord) -> ArrayRecord:
    out, offset = {}, 0
    for name, array in template.items():
        size = int(np.prod(array.shape))
        out[name] = Array(vector[offset : offset + size].reshape(array.shape).copy())
        offset += size
    return ArrayRecord(out)


class CompressedUpdates:
    """Mixin over a Flower strategy: downlink encoding, uplink decoding, byte accounting."""

    def __init__(self, *, uplink: UpdateCodec, downlink: UpdateCodec, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[call-arg]
        self.uplink = uplink
        self.downlink = downlink
        self.global_arrays: ArrayRecord | None = None
        self.global_vector: np.ndarray | None = None
        self.last_round = RoundTraffic()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.global_arrays = arrays
        self.global_vector = arrays_to_vector(arrays)
        messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
        payload = self.downlink.encode(self.global_vector, np.random.default_rng(server_round))
        record = ArrayRecord(payload)
        for message in messages:
            message.content[self.arrayrecord_key] = record  # type: ignore[attr-defined]
        self.last_round = RoundTraffic(
            downlink_bytes=payload_bytes(payload) * len(messages),
            fp32_downlink_bytes=self.global_vector.nbytes * len(messages),
        )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        traffic = self.last_round
        decoded: list[Message] = []
        start = time.perf_counter()
        for reply in replies:
            if reply.has_error():
                decoded.append(reply)  # the parent strategy logs the failure
                continue
            arrays = reply.content[self.arrayrecord_key].to_numpy_ndarrays()  # type: ignore[attr-defined]
            traffic.uplink_bytes += payload_bytes(arrays)
            traffic.fp32_uplink_bytes += self.global_vector.nbytes  # type: ignore[union-attr]
            try:
                update = self.uplink.decode(arrays, self.global_vector.size)  # type: ignore[union-attr]
                if not np.all(np.isfinite(update)):
                    raise CodecError("the decoded update holds NaN or Inf")
            except CodecError as err:
                traffic.rejected += 1
                reason = f"node {reply.metadata.src_node_id}: {err}"
                traffic.rejections.append(reason)
                log(WARNING, "rejected the update of %s", reason)
                continue
            reply.content[self.arrayrecord_key] = vector_to_arrays(  # type: ignore[attr-defined]
                self.global_vector + update, self.global_arrays  # type: ignore[operator,arg-type]
            )
            decoded.append(reply)
        traffic.server_decode_seconds = time.perf_counter() - start
        accepted = [reply for reply in decoded if not reply.has_error()]
        traffic.clients = len(accepted)
        if accepted:
            metrics = [reply.content["metrics"] for reply in accepted]
            tokens = sum(float(m["num-tokens"]) for m in metrics)
            traffic.train_loss = sum(float(m["train-loss"]) * float(m["num-tokens"]) for m in metrics) / max(tokens, 1.0)
            traffic.client_train_seconds = max(float(m["train-seconds"]) for m in metrics)
            traffic.client_encode_seconds = max(float(m["encode-seconds"]) for m in metrics)
        return super().aggregate_train(server_round, decoded)  # type: ignore[misc]


class CompressedFedAvg(CompressedUpdates, FedAvg):
    """FedAvg over decoded updates, weighted by the clients' target token counts."""


class CompressedFedAdam(CompressedUpdates, FedAdam):
    """FedAdam (Reddi et al.) server optimizer over decoded updates."""
