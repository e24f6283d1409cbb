"""Flower strategies that speak compressed payloads.

The mixin encodes the global weights with the downlink codec before they are
sent, and decodes each client's uplink payload into ``global + update`` before
the parent strategy (Flower's FedAvg or FedAdam) aggregates. A payload that
does not decode against the model, or that comes from a client with another
tokenizer, is rejected and logged, never applied. Byte counts come from the
arrays actually sent and received.

The global model travels between the strategy and the ServerApp as one
ArrayRecord holding a single flat float32 array (``fedq.fl.weights``' vector),
so Flower aggregates exactly the vector the codecs work on.

Sampling follows the run's seed: the ServerApp first learns which node holds
which partition (``nodes``), and each round's clients are drawn from the
partition ids with a generator seeded by (seed, round). Replies are put in
partition order before Flower aggregates them, so a rerun, or a resumed run,
adds the same numbers in the same order and ends with the same weights.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Bulyan, FedAdam, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from fedq.comm import CodecError, UpdateCodec, payload_bytes
from fedq.comm.downlink import BASE_DIGEST_KEY, BASE_ROUND_KEY, DOWNLINK_KIND_KEY, Broadcaster, SeededModel
from fedq.fl.client import FINGERPRINT_KEY, SIM_SECONDS_KEY
from fedq.fl.faults import DeviceProfile, drop_reason, is_available
from fedq.fl.server import RoundTraffic

WEIGHTS_KEY = "weights"
SUMMED_METRICS = ("num-examples", "num-tokens", "payload-bytes", "steps")
SLOWEST_METRICS = ("train-seconds", "encode-seconds")


def weights_record(vector: np.ndarray) -> ArrayRecord:
    return ArrayRecord({WEIGHTS_KEY: Array(np.asarray(vector, np.float32))})


def record_vector(record: ArrayRecord) -> np.ndarray:
    return record[WEIGHTS_KEY].numpy()


def aggregate_client_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """The round's client metrics: train loss weighted by ``weighted_by_key`` (target tokens),
    counts summed, times of the slowest client (the round waits for it)."""
    metrics = [next(iter(record.metric_records.values())) for record in records]
    weights = [float(m[weighted_by_key]) for m in metrics]
    out = {"train-loss": sum(float(m["train-loss"]) * w for m, w in zip(metrics, weights)) / max(sum(weights), 1e-12)}
    out.update({key: sum(float(m[key]) for m in metrics) for key in SUMMED_METRICS if all(key in m for m in metrics)})
    out.update({key: max(float(m[key]) for m in metrics) for key in SLOWEST_METRICS if all(key in m for m in metrics)})
    return MetricRecord(out)


class CompressedUpdates:
    """Mixin over a Flower strategy: downlink encoding, uplink decoding and checking, byte accounting.

    ``server_lr`` steps the aggregate: global += server_lr * (aggregate - global).
    ``tokenizer_fingerprint`` is the server's (``fedq.fl.client.fingerprint_number``);
    a client that reports another one trained on another vocabulary and is refused.

    Every reply is checked before Flower aggregates: a client that failed or went
    offline is dropped with its reason; an update that comes past ``deadline``
    (simulated seconds), does not decode (wrong shape, truncated payload, NaN or
    Inf) or is too large (``max_norm``, or ``max_norm_ratio`` times the round's
    median norm) is rejected with its reason and never reaches the global model.
    ``fleet`` (the clients' device profiles) restricts sampling to the clients
    online in the round.
    """

    def __init__(
        self,
        *,
        uplink: UpdateCodec,
        downlink: UpdateCodec,
        seeded: SeededModel | None = None,  # a delta downlink needs it (fedq.comm.downlink)
        tokenizer_fingerprint: int | None = None,
        server_lr: float = 1.0,
        nodes: dict[int, int] | None = None,
        clients_per_round: int = 1,
        seed: int = 0,
        fleet: list[DeviceProfile] | None = None,
        deadline: float = 0.0,
        max_norm: float = 0.0,
        max_norm_ratio: float = 0.0,
        min_replies: int = 1,
        **kwargs: object,
    ) -> None:
        super().__init__(train_metrics_aggr_fn=aggregate_client_metrics, **kwargs)  # type: ignore[call-arg]
        self.uplink = uplink
        self.downlink = downlink
        self.broadcaster = Broadcaster(downlink, seeded)
        self.tokenizer_fingerprint = tokenizer_fingerprint
        self.server_lr = server_lr
        self.nodes = nodes or {}  # partition id -> node id
        self.clients_per_round = clients_per_round
        self.seed = seed
        self.fleet = fleet
        self.deadline = deadline
        self.max_norm = max_norm
        self.max_norm_ratio = max_norm_ratio
        self.min_replies = min_replies
        self.global_vector: np.ndarray | None = None
        self.last_round = RoundTraffic()

    def sample(self, server_round: int) -> list[int]:
        """The node ids of this round's clients: partition ids (of the clients online, when there is
        a fleet) drawn with a (seed, round) generator."""
        online = [p for p in sorted(self.nodes)
                  if self.fleet is None or is_available(self.fleet[p], self.seed, server_round, p)]
        rng = np.random.default_rng([self.seed, server_round])
        size = min(self.clients_per_round, len(online))
        partitions = sorted(rng.choice(online, size=size, replace=False).tolist()) if size else []
        return [self.nodes[p] for p in partitions]

    def _partition(self, node_id: int) -> int:
        """The partition a node holds (its node id where the strategy runs without a node map)."""
        by_node = {node: partition for partition, node in self.nodes.items()}
        return by_node.get(node_id, node_id)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The server optimizer's state, to save with the run (none for FedAvg)."""
        return {}

    def restore_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        if arrays:
            raise ValueError(f"{type(self).__name__} keeps no optimizer state, got {sorted(arrays)}")

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.global_vector = record_vector(arrays)
        if self.nodes:  # Flower's FedAvg samples from the nodes this proxy shows: exactly this round's
            chosen = self.sample(server_round)
            if not chosen:
                self.last_round = RoundTraffic()
                return []
            grid = SampledGrid(grid, chosen)  # type: ignore[assignment]
        sampled = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
        traffic = self.last_round = RoundTraffic(sampled=len(sampled))
        messages = []
        for message in sampled:  # each client gets what it needs to rebuild the model (fedq.comm.downlink)
            node = message.metadata.dst_node_id
            downlink = self.broadcaster.message_for(self._partition(node), self.global_vector, server_round)
            own_config = ConfigRecord({**message.content[self.configrecord_key], DOWNLINK_KIND_KEY: downlink.kind,  # type: ignore[attr-defined]
                                       BASE_ROUND_KEY: downlink.base_round, BASE_DIGEST_KEY: downlink.base_digest})
            content = RecordDict({self.arrayrecord_key: ArrayRecord(downlink.arrays), self.configrecord_key: own_config})  # type: ignore[attr-defined]
            messages.append(Message(content=content, dst_node_id=node, message_type=message.metadata.message_type))
            traffic.downlink_bytes += downlink.nbytes
            traffic.fp32_downlink_bytes += self.global_vector.nbytes
        return messages

    def _reject(self, reply: Message, reason: str) -> None:
        traffic = self.last_round
        traffic.rejected += 1
        text = f"node {reply.metadata.src_node_id}: {reason}"
        traffic.rejections.append(text)
        log(WARNING, "rejected the update of %s", text)

    def _decode(self, reply: Message) -> tuple[str | None, float]:
        """Replace the reply's payload by ``global + update``; return (why it was refused or None, update norm)."""
        metrics = reply.content["metrics"]
        fingerprint = metrics.get(FINGERPRINT_KEY)
        if self.tokenizer_fingerprint is not None and fingerprint != self.tokenizer_fingerprint:
            theirs = f"{int(fingerprint):015x}" if fingerprint is not None else "none"
            return (
                f"its tokenizer (fingerprint {theirs}) is not the server's ({self.tokenizer_fingerprint:015x}); "
                "every node must build the same vocabulary (same data.* settings and corpus files)"
            ), 0.0
        arrays = reply.content[self.arrayrecord_key].to_numpy_ndarrays()  # type: ignore[attr-defined]
        self.last_round.uplink_bytes += payload_bytes(arrays)
        self.last_round.fp32_uplink_bytes += self.global_vector.nbytes  # type: ignore[union-attr]
        if self.deadline and float(metrics.get(SIM_SECONDS_KEY, 0.0)) > self.deadline:
            return f"late: its round took {float(metrics[SIM_SECONDS_KEY]):.1f} simulated s, past fl.round_deadline={self.deadline:g}", 0.0
        try:
            update = self.uplink.decode(arrays, self.global_vector.size)  # type: ignore[union-attr]
        except CodecError as err:
            return str(err), 0.0
        norm = float(np.linalg.norm(update))
        if self.max_norm and norm > self.max_norm:
            return f"update norm {norm:.3g} is above fl.max_update_norm={self.max_norm:g}", norm
        reply.content[self.arrayrecord_key] = weights_record(self.global_vector + update)  # type: ignore[attr-defined,operator]
        return None, norm

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        traffic = self.last_round
        decoded: list[tuple[Message, float]] = []
        waited = [0.0]  # virtual clock: until when the server waited for each client
        start = time.perf_counter()
        for reply in sorted(replies, key=lambda reply: self._partition(reply.metadata.src_node_id)):
            if reply.has_error():
                self.broadcaster.forget(self._partition(reply.metadata.src_node_id))  # it may not hold the model sent
                reason = drop_reason(reply.error.reason)
                traffic.dropped[reason] = traffic.dropped.get(reason, 0) + 1
                if reason == "dropout":  # no reply comes: the server waits until the deadline, if there is one
                    waited.append(self.deadline)
                continue
            clock = float(reply.content["metrics"].get(SIM_SECONDS_KEY, 0.0))
            reason, norm = self._decode(reply)
            waited.append(min(clock, self.deadline) if self.deadline else clock)
            if reason is not None:
                self._reject(reply, reason)
                continue
            decoded.append((reply, norm))
        kept = [reply for reply, _ in decoded]
        if self.max_norm_ratio and decoded:
            median = float(np.median([norm for _, norm in decoded]))
            kept = []
            for reply, norm in decoded:
                if norm > self.max_norm_ratio * median:
                    self._reject(reply, f"update norm {norm:.3g} is above fl.max_update_norm_ratio={self.max_norm_ratio:g} x the round's median {median:.3g}")
                else:
                    kept.append(reply)
        traffic.server_decode_seconds = time.perf_counter() - start
        traffic.clients = len(kept)
        if self.fleet is not None:
            traffic.sim_seconds = max(waited)
        if len(kept) < self.min_replies:
            return None, None
        arrays, metrics = super().aggregate_train(server_round, kept)  # type: ignore[misc]
        if metrics is not None:
            traffic.train_loss = float(metrics["train-loss"])
            traffic.client_train_seconds = float(metrics.get("train-seconds", 0.0))
            traffic.client_encode_seconds = float(metrics.get("encode-seconds", 0.0))
        if arrays is not None and self.server_lr != 1.0:
            average = record_vector(arrays)
            arrays = weights_record(self.global_vector + self.server_lr * (average - self.global_vector))  # type: ignore[operator]
        return arrays, metrics


class SampledGrid:
    """A view of a Grid that shows only the nodes chosen for this round (everything else passes through)."""

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self._grid = grid
        self._node_ids = node_ids

    def get_node_ids(self) -> Iterator[int]:
        return iter(self._node_ids)

    def __getattr__(self, name: str) -> object:
        return getattr(self._grid, name)


class CompressedFedAvg(CompressedUpdates, FedAvg):
    """FedAvg over decoded updates, weighted by the clients' target token counts."""


class CompressedFedMedian(CompressedUpdates, FedMedian):
    """Coordinate-wise median of the decoded updates (Yin et al., 2018): robust to a minority of attackers."""


class CompressedFedTrimmedAvg(CompressedUpdates, FedTrimmedAvg):
    """Coordinate-wise mean after cutting the fraction beta at each end."""


class CompressedKrum(CompressedUpdates, Krum):
    """The update closest to its n - f - 2 nearest neighbours (Blanchard et al., 2017)."""


class CompressedMultiKrum(CompressedUpdates, MultiKrum):
    """The average of the updates Krum ranks best."""


class CompressedBulyan(CompressedUpdates, Bulyan):
    """Krum-selected updates, then a trimmed mean per coordinate (El Mhamdi et al., 2018); needs n >= 4f + 3."""


class CompressedFedAdam(CompressedUpdates, FedAdam):
    """FedAdam (Reddi et al.) server optimizer over decoded updates (its eta is the server lr)."""

    def state_arrays(self) -> dict[str, np.ndarray]:
        moments = {"m_t": self.m_t, "v_t": self.v_t}
        return {f"{name}.{key}": value for name, table in moments.items() if table for key, value in table.items()}

    def restore_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        for name in ("m_t", "v_t"):
            table = {key.split(".", 1)[1]: value for key, value in arrays.items() if key.startswith(f"{name}.")}
            setattr(self, name, table or None)
