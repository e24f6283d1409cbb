"""The downlink: what the server sends each client so that it holds the model it trains from.

Two kinds of scheme (``comm.downlink.name``):

- ``fp32`` / ``fp16``: the whole global model every round. Stateless.
- ``uniform`` / ``sign`` / ``topk``: compressed *deltas* against the model the
  client holds. Every client starts out holding the seeded model (round 0): the
  model the run's seed builds, which it builds as the server does, so it is never
  sent, and a digest in the first message checks that both sides built the same
  one. A client is sent ``encode(global - held)``, one delta however many rounds
  it missed, and both sides add the decoded delta to the held model.

The server remembers what a client holds (bit for bit what the client rebuilt)
for at most ``capacity`` clients (``comm.downlink.cache_mb``), the least
recently synced forgotten first; for a client it remembers, what a delta could
not carry stays in ``global - held`` and goes with the next one (error feedback
on the server), so the held model tracks the global one. A client the server
holds nothing for (new, forgotten, or one that lost its storage) is sent a delta
against the seeded model, which it can always rebuild: the same bytes, with the
error of one delta of the whole model's change since the seed. That delta is the
same message for every such client of a round (one encoding, one draw), as is
the whole model of a stateless scheme: a message that carries several clients
carries it once, and each client's bytes count it. When a delta would
cost more than the whole model, the whole model is sent (fp16, fp32 if a weight
is out of fp16's range).

Bytes are counted per client from the arrays sent. The server sends the round it
believes the client was last synced in, and a client that holds another one asks
for a resync, so a mismatch is never a silently wrong model.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from fedq.comm.codecs import Fp16Codec, Fp32Codec, UpdateCodec, payload_bytes
from fedq.comm.errors import CodecError

FULL, DELTA = "full", "delta"


class NotHeldError(CodecError):
    """A delta against a model this client does not hold (it lost it, or the server expected another round)."""


@dataclass(frozen=True)
class SeededModel:
    """The model every client holds before its first round (round 0): built from the seed on both sides, never sent."""

    vector: np.ndarray
    digest: str

    @classmethod
    def of(cls, vector: np.ndarray) -> SeededModel:
        return cls(vector, hashlib.sha256(vector.tobytes()).hexdigest()[:16])


@dataclass
class Downlink:
    """One client's downlink message: the arrays, their kind, and the round the delta builds on."""

    arrays: list[np.ndarray]
    kind: str  # FULL or DELTA
    base_round: int  # DELTA: the round the client was last synced in (0: the seeded model); FULL: 0
    base_digest: str = ""  # a DELTA against the seeded model: its digest

    @property
    def nbytes(self) -> int:
        return payload_bytes(self.arrays)


def cache_capacity(cache_mb: float, numel: int) -> int:
    """How many clients' held models (fp32) fit in ``comm.downlink.cache_mb``."""
    return int(cache_mb * 1e6 // (4 * numel))


class Broadcaster:
    """The server's side: what to send each client, and (for up to ``capacity`` clients) the model it holds."""

    def __init__(self, codec: UpdateCodec, seeded: SeededModel | None = None, capacity: int = 0) -> None:
        self.codec = codec
        self.stateful = not codec.whole_values  # the whole model every round: nothing to remember per client
        if self.stateful and seeded is None:
            raise ValueError(f"a {codec.name} downlink sends deltas: it needs the seeded model every client holds")
        self.seeded = seeded
        self.capacity = capacity if self.stateful else 0
        self.full_codecs = (Fp16Codec(), Fp32Codec())
        self.held: OrderedDict[int, tuple[int, np.ndarray]] = OrderedDict()  # partition -> (round synced, model)
        # the round's message for every client that holds the seeded model (or, stateless, for every client), and what
        # it then holds: (round, the global vector it was made from, message, model)
        self.shared: tuple[int, np.ndarray, Downlink, np.ndarray | None] | None = None

    @property
    def keeps(self) -> bool:
        """Whether clients are asked to keep what they hold (the server remembers some of them)."""
        return self.capacity > 0

    def message_for(self, partition: int, global_vector: np.ndarray, server_round: int) -> Downlink:
        if not self.stateful:
            return self._shared_message(global_vector, server_round)[0]
        base_round, held = self.held.pop(partition, (0, None))
        if held is None:  # it holds the seeded model, as every client the server remembers nothing for
            message, model = self._shared_message(global_vector, server_round)
            self._remember(partition, server_round, model)
            return message
        message, model = self._delta_or_whole(global_vector, held, base_round, np.random.default_rng([server_round, partition]))
        self._remember(partition, server_round, model)
        return message

    def _shared_message(self, global_vector: np.ndarray, server_round: int) -> tuple[Downlink, np.ndarray]:
        """The round's one message to the clients that hold the seeded model (stateless: to every client)."""
        if self.shared is None or self.shared[0] != server_round or self.shared[1] is not global_vector:
            if not self.stateful:
                message = Downlink(self.codec.encode(global_vector, np.random.default_rng(server_round)), FULL, 0)
                self.shared = (server_round, global_vector, message, None)
            else:
                rng = np.random.default_rng([server_round, 0, 0])  # a stream no client's own delta draws from
                self.shared = (server_round, global_vector,
                               *self._delta_or_whole(global_vector, self.seeded.vector, 0, rng))  # type: ignore[union-attr]
        return self.shared[2], self.shared[3]  # type: ignore[return-value]

    def _delta_or_whole(self, global_vector: np.ndarray, held: np.ndarray, base_round: int,
                        rng: np.random.Generator) -> tuple[Downlink, np.ndarray]:
        """The message that brings a client from ``held`` (synced in ``base_round``) to the global model, and the
        model it then holds: a delta, or the whole model where a delta would cost more."""
        try:
            arrays = self.codec.encode(global_vector - held, rng)
        except CodecError:  # a delta beyond the codec's range (fp16 scales): the whole model goes instead
            arrays = None
        if arrays is not None and payload_bytes(arrays) < global_vector.nbytes // 2:  # cheaper than fp16 whole
            digest = self.seeded.digest if base_round == 0 else ""  # type: ignore[union-attr]
            return Downlink(arrays, DELTA, base_round, digest), held + self.codec.decode(arrays, global_vector.size)
        arrays = self._whole_model(global_vector)
        return Downlink(arrays, FULL, 0), decode_whole_model(arrays, global_vector.size)

    def _remember(self, partition: int, server_round: int, model: np.ndarray) -> None:
        if self.capacity <= 0:
            return
        self.held[partition] = (server_round, model)
        while len(self.held) > self.capacity:  # the least recently synced first (within a round: partition order)
            self.held.popitem(last=False)

    def _whole_model(self, global_vector: np.ndarray) -> list[np.ndarray]:
        """The whole model at fp16 where it fits (what the client holds is what fp16 keeps), else fp32."""
        half, full = self.full_codecs
        try:
            return half.encode(global_vector, np.random.default_rng(0))  # (a whole model is not rounded at random)
        except CodecError:
            return full.encode(global_vector, np.random.default_rng(0))

    def forget(self, partition: int) -> None:
        """The client may not hold what it was sent (it failed mid-round, or lost it): its next delta is against
        the seeded model."""
        self.held.pop(partition, None)


def decode_whole_model(arrays: list[np.ndarray], numel: int) -> np.ndarray:
    """A delta scheme's whole-model message: fp16, or fp32 when the model did not fit fp16."""
    codec = Fp16Codec() if arrays and arrays[0].dtype == np.float16 else Fp32Codec()
    return codec.decode(arrays, numel)


def receive(
    codec: UpdateCodec,
    message: Downlink,
    numel: int,
    held: np.ndarray | None,
    held_round: int | None,
    seeded: SeededModel,
) -> np.ndarray:
    """The client's side: the model it now holds (raises CodecError on a mismatch with what it holds)."""
    if message.kind == FULL:
        if codec.whole_values:
            return codec.decode(message.arrays, numel)
        return decode_whole_model(message.arrays, numel)
    if message.base_round == 0:
        if message.base_digest != seeded.digest:
            raise CodecError("downlink: the server's seeded model differs from this client's (another seed or model?)")
        held = seeded.vector
    elif held is None or held_round != message.base_round:
        holds = "no model" if held is None else f"the model of round {held_round}"
        raise NotHeldError(f"the server sent a delta against round {message.base_round} but this client holds {holds}")
    return held + codec.decode(message.arrays, numel)
