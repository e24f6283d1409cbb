"""The protocol between the server and a client: message kinds, record names, keys, and the two messages.

Every key that travels lives here, so that the server (``fedq.fl.rounds``),
the client (``fedq.fl.client``) and the Flower apps that carry their messages
(``server/``, ``clients/``) agree by construction. A message is plain arrays
plus a flat dict of numbers and strings, which the Flower apps wrap in an
``ArrayRecord`` and a ``ConfigRecord`` / ``MetricRecord``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedq.comm.downlink import Downlink
from fedq.errors import FedqError

TRAIN, QUERY = "train", "query"  # message types
ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"  # record names inside a message

# a train request's config
SERVER_ROUND = "server-round"
PARTITION = "partition-id"  # the client (shard) the request is for; also a SuperNode's node-config key
DOWNLINK_KIND = "fedq-downlink"  # full | delta
BASE_ROUND = "fedq-base-round"  # the round whose model a delta builds on (0: the seeded model)
BASE_DIGEST = "fedq-base-digest"  # a delta against the seeded model: that model's digest
KEEP = "fedq-keep"  # 1: the server remembers what this client now holds, so the client keeps it too
SLOT, SLOTS = "fedq-slot", "fedq-slots"  # the client's place among the round's clients (correlated rounding)
CLIP_NORM = "fedq-clip-norm"  # fl.dp: the norm the client clips its update to before encoding it (0: none)
NUM_PARTITIONS = "num-partitions"  # a SuperNode's node-config key

# a train reply's metrics
NUM_EXAMPLES = "num-examples"
NUM_TOKENS = "num-tokens"  # target tokens trained on: the weight of the client's update
TRAIN_LOSS = "train-loss"
PAYLOAD_BYTES = "payload-bytes"
TRAIN_SECONDS = "train-seconds"
ENCODE_SECONDS = "encode-seconds"
STEPS = "steps"
FINGERPRINT = "tokenizer-fingerprint"
SIM_SECONDS = "sim-seconds"  # the client's round on its simulated device (fl.devices)
UNCLIPPED = "fedq-unclipped"  # fl.dp: 1 if the update was within the clip norm (adaptive clipping counts them)

# the reason of an error reply: a simulated fault, or a client that does not hold what a delta builds on
DROPOUT = "dropout"
CRASHED = "crashed"
RESYNC = "resync"
WORKER_DIED = "worker died"  # the simulation's worker (a Ray actor) that ran the client died
NOT_NEEDED = "not needed"  # over-selection: the round closed before it arrived (it stopped; nothing more was sent)
STALE = "stale"  # asynchronous rounds: it arrived more than fl.max_staleness rounds after its model
UNREACHABLE = "unreachable"  # a real node that stopped answering: not sampled again until it is seen again
STORAGE = "storage"  # a client that could not write what it keeps (its disk is full or read-only)


class ProtocolError(FedqError):
    """A message that does not follow this protocol."""


class NoUpdate(Exception):
    """A client's round that ends without an update; ``reason`` starts with dropout, crashed, resync or storage."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def fingerprint_number(fingerprint: str) -> int:
    """A tokenizer fingerprint as an int that a Flower MetricRecord can carry (60 bits of the hash)."""
    return int(fingerprint[:15], 16)


@dataclass
class TrainRequest:
    """What the server sends a client: the model as a downlink message, and which round and client it is for."""

    partition: int
    server_round: int
    downlink: Downlink
    keep: bool = False
    slot: int = 0
    slots: int = 1
    clip_norm: float = 0.0

    def config(self) -> dict[str, int | float | str]:
        return {
            SERVER_ROUND: self.server_round, PARTITION: self.partition, DOWNLINK_KIND: self.downlink.kind,
            BASE_ROUND: self.downlink.base_round, BASE_DIGEST: self.downlink.base_digest, KEEP: int(self.keep),
            SLOT: self.slot, SLOTS: self.slots, CLIP_NORM: self.clip_norm,
        }

    @classmethod
    def parse(cls, arrays: Sequence[np.ndarray], config: Mapping[str, object]) -> TrainRequest:
        try:
            downlink = Downlink(list(arrays), str(config[DOWNLINK_KIND]), int(config[BASE_ROUND]),  # type: ignore[call-overload]
                                str(config[BASE_DIGEST]))
            return cls(int(config[PARTITION]), int(config[SERVER_ROUND]), downlink, bool(config[KEEP]),  # type: ignore[call-overload]
                       int(config[SLOT]), int(config[SLOTS]), float(config[CLIP_NORM]))  # type: ignore[call-overload, arg-type]
        except (KeyError, TypeError, ValueError) as err:
            why = f"a train request without a valid {err}: server and client run different fedq versions?"
            raise ProtocolError(why) from None


@dataclass
class TrainReply:
    """What a client sends back: its encoded update and what it reports about its round."""

    arrays: list[np.ndarray]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Reply:
    """One client's answer as the server sees it: a train reply, or the reason why there is none."""

    partition: int
    reply: TrainReply | None = None
    error: str | None = None

    @property
    def reason(self) -> str:
        """The row's name for a failed reply: dropout, resync, unreachable, storage, worker died, else crashed."""
        error = self.error or ""
        word = error.split(":", 1)[0].strip()
        if word in (DROPOUT, RESYNC, UNREACHABLE, STORAGE):
            return word
        return WORKER_DIED if "ActorDiedError" in error or "RayActorError" in error else CRASHED

    def describe(self) -> str:
        """One line: the client and why it delivered nothing."""
        text = " ".join((self.error or "").split())
        return f"client {self.partition}: {self.reason}" + (f" ({text[:200]})" if not text.startswith(self.reason) else
                                                             f": {text[len(self.reason) + 1:].strip()[:200]}")
