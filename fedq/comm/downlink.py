"""The downlink: what the server sends each client so that it holds the model it trains from.

Two kinds of scheme (``comm.downlink.name``):

- ``fp32`` / ``fp16``: the whole global model every round. Stateless.
- ``uniform`` / ``sign`` / ``topk``: compressed *deltas*. The server remembers,
  per client, the model that client holds (what it reconstructed from what it
  was sent, bit for bit). Every client starts out holding the seeded model
  (round 0): the model the run's seed builds, which it builds as the server does,
  so it is never sent, and a digest in the first message checks that both sides
  built the same one. A client is sent ``encode(global - held)``, one delta
  however many rounds it missed (its first delta is against the seeded model;
  with ``init_from`` that first delta carries the pre-trained weights),
  and both sides add the decoded delta to the held model. What a delta could not
  carry stays in ``global - held`` and is sent the next time: the held model
  tracks the global one (error feedback), and a client that was away long
  catches up in one message. When a delta would cost more than the whole model,
  the whole model is sent instead (fp16, fp32 if a weight is out of fp16's range).

Bytes are counted per client from the arrays sent. A client keeps the held model
and the round it was synced in (Flower's ``context.state``; on a real device:
one copy of the model's weights, fp32, plus an integer). The server sends the
round it believes the client was last synced in, and a client that holds
another one refuses, so a mismatch is an error, never a silently wrong model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from fedq.comm.codecs import UpdateCodec, make_codec, payload_bytes
from fedq.comm.errors import CodecError

FULL_MODEL_CODECS = ("fp32", "fp16")
FULL, DELTA = "full", "delta"
DOWNLINK_KIND_KEY = "fedq-downlink"  # message config keys: what the arrays are, and what a delta builds on
BASE_ROUND_KEY = "fedq-base-round"
BASE_DIGEST_KEY = "fedq-base-digest"


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


class Broadcaster:
    """The server's side: per client, the model it holds, and what to send it next."""

    def __init__(self, codec: UpdateCodec, seeded: SeededModel | None = None) -> None:
        self.codec = codec
        self.stateful = codec.name not in FULL_MODEL_CODECS
        if self.stateful and seeded is None:
            raise ValueError(f"a {codec.name} downlink sends deltas: it needs the seeded model every client holds")
        self.seeded = seeded
        self.full_codecs = (make_codec("fp16"), make_codec("fp32"))
        self.held: dict[int, np.ndarray] = {}
        self.synced: dict[int, int] = {}

    def message_for(self, partition: int, global_vector: np.ndarray, server_round: int) -> Downlink:
        if not self.stateful:
            return Downlink(self.codec.encode(global_vector, np.random.default_rng(server_round)), FULL, 0)
        held = self.held.get(partition, self.seeded.vector)
        base_round = self.synced.get(partition, 0)
        rng = np.random.default_rng([server_round, partition])
        try:
            arrays = self.codec.encode(global_vector - held, rng)
        except CodecError:  # a delta beyond the codec's range (fp16 scales): the whole model goes instead
            arrays = None
        if arrays is not None and payload_bytes(arrays) < global_vector.nbytes // 2:  # cheaper than fp16 whole
            message = Downlink(arrays, DELTA, base_round, self.seeded.digest if base_round == 0 else "")
            self.held[partition] = held + self.codec.decode(arrays, global_vector.size)
            self.synced[partition] = server_round
            return message
        arrays = self._whole_model(global_vector)
        self.held[partition] = decode_whole_model(arrays, global_vector.size)
        self.synced[partition] = server_round
        return Downlink(arrays, FULL, 0)

    def _whole_model(self, global_vector: np.ndarray) -> list[np.ndarray]:
        """The whole model at fp16 where it fits (what the client holds is what fp16 keeps), else fp32."""
        half, full = self.full_codecs
        try:
            return half.encode(global_vector, None)
        except CodecError:
            return full.encode(global_vector, None)

    def forget(self, partition: int) -> None:
        """The client lost what it held (it failed mid-round): its next delta is against the seeded model."""
        self.held.pop(partition, None)
        self.synced.pop(partition, None)


def decode_whole_model(arrays: list[np.ndarray], numel: int) -> np.ndarray:
    """A delta scheme's whole-model message: fp16, or fp32 when the model did not fit fp16."""
    codec = make_codec("fp16" if arrays and arrays[0].dtype == np.float16 else "fp32")
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
        if codec.name in FULL_MODEL_CODECS:
            return codec.decode(message.arrays, numel)
        return decode_whole_model(message.arrays, numel)
    if message.base_round == 0:
        if message.base_digest != seeded.digest:
            raise CodecError("downlink: the server's seeded model differs from this client's (another seed or model?)")
        held = seeded.vector
    elif held is None or held_round != message.base_round:
        holds = "no model" if held is None else f"the model of round {held_round}"
        raise CodecError(
            f"downlink: the server sent a delta against round {message.base_round} but this client holds {holds}"
        )
    return held + codec.decode(message.arrays, numel)
