"""The protocol between the server and a client: message kinds, record names, keys, and the two messages.

Every key that travels lives here, so that the server (``fedq.fl.rounds``),
the client (``fedq.fl.client``) and the Flower apps that carry their messages
(``server/``, ``clients/``) agree by construction. A message is named lists of
plain arrays plus flat dicts of numbers and strings, which the Flower apps wrap
in Flower's ``ArrayRecord``, ``ConfigRecord`` and ``MetricRecord``.

One message may carry several clients' requests (:func:`pack_requests`): a node
of the simulation's pool plays them one after another, so that a round costs
one Flower message per worker rather than per client. A downlink that several
of them are sent (the whole model, or one delta against the seeded model)
travels once in the message; every client's bytes are still counted as its own
message's (``fedq.fl.rounds``). A real device is one client: its messages carry
one request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedq.comm.downlink import Downlink
from fedq.errors import FedqError

TRAIN, QUERY = "train", "query"  # message types
ARRAYS, CONFIG, METRICS, EXTRA = "arrays", "config", "metrics", "extra"  # record names inside a message

# a train request's config
SERVER_ROUND = "server-round"
PARTITION = "partition-id"  # the client (shard) the request is for; also a SuperNode's node-config key
DOWNLINK_KIND = "fedq-downlink"  # full | delta
BASE_ROUND = "fedq-base-round"  # the round whose model a delta builds on (0: the seeded model)
BASE_DIGEST = "fedq-base-digest"  # a delta against the seeded model: that model's digest
KEEP = "fedq-keep"  # 1: the server remembers what this client now holds, so the client keeps it too
SLOT, SLOTS = "fedq-slot", "fedq-slots"  # the client's place among the round's clients (correlated rounding)
CLIP_NORM = "fedq-clip-norm"  # fl.dp: the norm the client clips its update to before encoding it (0: none)
SECAGG = "fedq-secagg"  # 1: keep the update for secure aggregation and send public keys (fedq.fl.secagg)
STAGE = "fedq-stage"  # train, or a later stage of secure aggregation (whose arrays are in EXTRA_RECORD)
STAGE_SETTING = "fedq-stage."  # the prefix of a stage's own settings
EXTRA_RECORD = "fedq-extra-record"  # the name of the record that holds a stage request's own arrays
NUM_PARTITIONS = "num-partitions"  # a SuperNode's node-config key
DOWNLINK_RECORD = "fedq-downlink-record"  # the name of the record that holds a request's downlink arrays
ERRORS = "errors"  # a reply's record of the clients that delivered no update: {index: reason}

# a train reply's metrics
NUM_EXAMPLES = "num-examples"
NUM_TOKENS = "num-tokens"  # target tokens trained on: the weight of the client's update
TRAIN_LOSS = "train-loss"
PAYLOAD_BYTES = "payload-bytes"
TRAIN_SECONDS = "train-seconds"
ENCODE_SECONDS = "encode-seconds"
ROUND_SECONDS = "round-seconds"  # the client's whole round in its process: rebuild, train, encode, keep
STEPS = "steps"
FINGERPRINT = "tokenizer-fingerprint"
SIM_SECONDS = "sim-seconds"  # the client's round on its simulated device (fl.devices)
TRAIN_STAGE = "train"
UNCLIPPED = "fedq-unclipped"  # fl.dp: 1 if the update was within the clip norm (adaptive clipping counts them)

# the reason of an error reply: a simulated fault, or a client that does not hold what a delta builds on
DROPOUT = "dropout"
SECAGG_DROPPED = "secagg"  # fl.secagg: admitted, then failed a later stage (its update is not in the sum)
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


NO_DOWNLINK = Downlink([], "none", 0)  # a stage request of secure aggregation sends no model


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
    secagg: bool = False
    # a later stage of secure aggregation: its name, arrays and settings (fedq.fl.secagg); the downlink is then empty
    stage: str = TRAIN_STAGE
    extra: list[np.ndarray] = field(default_factory=list)
    settings: dict[str, float] = field(default_factory=dict)

    def config(self) -> dict[str, int | float | str]:
        return {
            SERVER_ROUND: self.server_round, PARTITION: self.partition, DOWNLINK_KIND: self.downlink.kind,
            BASE_ROUND: self.downlink.base_round, BASE_DIGEST: self.downlink.base_digest, KEEP: int(self.keep),
            SLOT: self.slot, SLOTS: self.slots, CLIP_NORM: self.clip_norm, SECAGG: int(self.secagg), STAGE: self.stage,
            **{STAGE_SETTING + name: value for name, value in self.settings.items()},
        }

    @classmethod
    def parse(cls, arrays: Sequence[np.ndarray], config: Mapping[str, object],
              extra: Sequence[np.ndarray] = ()) -> TrainRequest:
        try:
            downlink = Downlink(list(arrays), str(config[DOWNLINK_KIND]), int(config[BASE_ROUND]),  # type: ignore[call-overload]
                                str(config[BASE_DIGEST]))
            settings = {key[len(STAGE_SETTING):]: float(value) for key, value in config.items()  # type: ignore[arg-type]
                        if key.startswith(STAGE_SETTING)}
            return cls(int(config[PARTITION]), int(config[SERVER_ROUND]), downlink, bool(config[KEEP]),  # type: ignore[call-overload]
                       int(config[SLOT]), int(config[SLOTS]), float(config[CLIP_NORM]),  # type: ignore[call-overload, arg-type]
                       bool(config[SECAGG]), str(config[STAGE]), list(extra), settings)
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

    @classmethod
    def of(cls, partition: int, answer: TrainReply | str) -> Reply:
        """A client's reply from what its round gave: an update, or the reason it has none (see :func:`pack_replies`)."""
        return cls(partition, error=answer) if isinstance(answer, str) else cls(partition, answer)

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


def _named(kind: str, index: int) -> str:
    return f"{kind}.{index}"


Config = dict[str, int | float | str]


def pack_requests(requests: Sequence[TrainRequest]) -> tuple[dict[str, list[np.ndarray]], dict[str, Config]]:
    """One message's records for ``requests``: each distinct downlink (the same list object) once as
    ``arrays.J``, each request's config as ``config.I`` naming the record that holds its downlink, and a stage
    request's own arrays as ``extra.I``."""
    arrays: dict[str, list[np.ndarray]] = {}
    records: dict[int, str] = {}
    configs: dict[str, Config] = {}
    for index, request in enumerate(requests):
        name = records.setdefault(id(request.downlink.arrays), _named(ARRAYS, len(records)))
        arrays[name] = request.downlink.arrays
        configs[_named(CONFIG, index)] = {**request.config(), DOWNLINK_RECORD: name}
        if request.extra:
            arrays[_named(EXTRA, index)] = request.extra
            configs[_named(CONFIG, index)][EXTRA_RECORD] = _named(EXTRA, index)
    return arrays, configs


def unpack_requests(arrays: Mapping[str, Sequence[np.ndarray]],
                    configs: Mapping[str, Mapping[str, object]]) -> list[TrainRequest]:
    """The requests of one message, in the order they were packed (clients sent the same downlink share its arrays)."""
    requests = []
    for index in range(len(configs)):
        config = configs.get(_named(CONFIG, index))
        if config is None or str(config.get(DOWNLINK_RECORD)) not in arrays:
            raise ProtocolError(f"a train request without its config or downlink record {index}: server and client run "
                                "different fedq versions?")
        extra = arrays.get(str(config.get(EXTRA_RECORD)), ())
        requests.append(TrainRequest.parse(arrays[str(config[DOWNLINK_RECORD])], config, extra))
    return requests


def pack_replies(
    replies: Sequence[TrainReply | str],
) -> tuple[dict[str, list[np.ndarray]], dict[str, dict[str, float]], dict[str, str]]:
    """One message's records for the replies of the clients it carried, in their order: each update as
    ``arrays.I`` with ``metrics.I``, each client without one as its reason in the errors record."""
    arrays: dict[str, list[np.ndarray]] = {}
    metrics: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    for index, reply in enumerate(replies):
        if isinstance(reply, str):
            errors[str(index)] = reply
        else:
            arrays[_named(ARRAYS, index)], metrics[_named(METRICS, index)] = reply.arrays, reply.metrics
    return arrays, metrics, errors


def unpack_replies(count: int, arrays: Mapping[str, list[np.ndarray]], metrics: Mapping[str, Mapping[str, object]],
                   errors: Mapping[str, object]) -> list[TrainReply | str]:
    """The ``count`` replies of one message (a reason for each client without an update)."""
    replies: list[TrainReply | str] = []
    for index in range(count):
        if str(index) in errors:
            replies.append(str(errors[str(index)]))
        elif _named(ARRAYS, index) in arrays and _named(METRICS, index) in metrics:
            # as sent: the tokenizer's fingerprint is an int of 60 bits, which a float would round
            replies.append(TrainReply(arrays[_named(ARRAYS, index)], dict(metrics[_named(METRICS, index)])))  # type: ignore[arg-type]
        else:
            replies.append(f"{CRASHED}: the reply carries no update for its client {index} (different fedq versions?)")
    return replies
